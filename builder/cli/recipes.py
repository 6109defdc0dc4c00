"""``kiln validate``, ``kiln schema``, ``kiln plan`` and ``kiln render``: the commands that read recipes
and write nothing but what they are asked for. They parse, call builder/pipeline/ and print.

Commands import their heavy modules inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ExitCode
from .common import (
    Commands,
    Progress,
    emit,
    ledger_path,
    path_type,
    recipe_paths,
    selected_targets,
    workspace_of,
)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..pipeline.graph import load

    workspace = workspace_of(args)
    result = load(recipe_paths(args, workspace), workspace)
    ok = not result.problems
    summary = f"{result.files} recipe files, {result.recipes} valid, {len(result.targets)} targets"
    emit(
        args,
        {
            "ok": ok,
            "files": result.files,
            "recipes": result.recipes,
            "targets": len(result.targets),
            "problems": [p.as_json() for p in result.problems],
        },
        "\n".join([*(str(p) for p in result.problems), ("ok: " if ok else "invalid: ") + summary]),
    )
    return ExitCode.OK if ok else ExitCode.INVALID_INPUT


def cmd_schema(args: argparse.Namespace) -> int:
    from ..kinds import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        from ..outdir import write_file

        write_file(Path(args.output), text.encode())
    else:
        sys.stdout.write(text)
    return ExitCode.OK


def cmd_plan(args: argparse.Namespace) -> int:
    from ..ledger import Ledger
    from ..pipeline.plan import make_plan, plan_table

    workspace, targets = selected_targets(args)
    with Ledger(ledger_path(args, workspace)) as ledger:
        entries = make_plan(targets, ledger.states())
    emit(args, {"targets": [e.as_json() for e in entries]}, plan_table(entries))
    return ExitCode.OK


def cmd_render(args: argparse.Namespace) -> int:
    from ..pipeline.rendering import render_into

    workspace, targets = selected_targets(args)
    out_dir = Path(args.output)
    progress = Progress(not args.quiet and not args.json)
    report = render_into(targets, workspace.templates_dir, out_dir, progress.step)
    lines = [f"{r['id']}  ->  {r['dir']}" for r in report]
    emit(args, {"rendered": report}, "\n".join([*lines, f"rendered {len(report)} targets into {out_dir}"]))
    return ExitCode.OK


def register(commands: Commands) -> None:
    """``kiln validate``, ``schema``, ``plan`` and ``render``."""
    commands.add(
        "validate",
        cmd_validate,
        "Check recipes: schema, file references, capability rules.",
        [
            "kiln validate",
            "kiln validate recipes/guest/debian-12.yaml",
            "kiln validate --json recipes/ | jq .problems",
        ],
    )
    p = commands.add(
        "schema",
        cmd_schema,
        "Print the recipe JSON Schema (for editors and CI linters).",
        ["kiln schema > schemas/recipe.schema.json", "kiln schema -o schemas/recipe.schema.json"],
        recipes=False,
        json_flag=False,
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", type=path_type("--output"), help="write to FILE instead of stdout"
    )
    p = commands.add(
        "plan",
        cmd_plan,
        "List every target with its input digest and ledger state.",
        ["kiln plan", "kiln plan --arch ppc64le --json", "kiln plan debian-12"],
    )
    p.add_argument(
        "--arch", metavar="ARCH", help="only this architecture (any spelling: ppc64el, amd64, ...)"
    )
    p = commands.add(
        "render",
        cmd_render,
        "Render build files (Packer, DIB, Dockerfile, rpm macros) per target.",
        ["kiln render debian-12 -o out/", "kiln render recipes/ --arch ppc64le -o out/ --json"],
    )
    p.add_argument("--arch", metavar="ARCH", help="only this architecture (any spelling)")
    p.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        required=True,
        type=path_type("--output"),
        help="directory; one subdirectory per target",
    )
