"""The ``kiln`` command: a thin layer that parses arguments, calls the modules and reports.

Exit codes: 0 ok; 1 invalid input (recipes, arguments' values); 2 usage; 3 missing tool or
service; 4 a build, verification or publish failed. ``--json`` prints one JSON document on stdout
and nothing else there; human messages and progress go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .cli_args import path_type
from .errors import ExitCode, InvalidInput, KilnError, Problem
from .masking import MaskingStream
from .workspace import Workspace

EPILOG = """\
exit codes: 0 ok, 1 invalid input, 2 usage error, 3 missing tool or service, 4 build/verify/publish failed,
            70 internal error (a Kiln bug)
docs: README.md (quickstart, recipe reference), docs/architecture.md"""


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EPILOG


class Progress:
    """Progress on stderr for people; silent when stderr is not a terminal or with --quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def step(self, done: int, total: int, what: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K[{done}/{total}] {what}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()


class StepPrinter:
    """A long build's steps on stderr. Frequent steps (a tool's phase lines, e.g. ``dib: ...``)
    rewrite one live line on a terminal; elsewhere (CI logs) every step is a plain line."""

    LIVE_PREFIXES = ("dib: ", "packer: ")

    def __init__(self, prefix: str, stream: Any = None):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.live = False

    def __call__(self, step: str) -> None:
        text = f"{self.prefix}: {step}"
        if self.tty and step.startswith(self.LIVE_PREFIXES):
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write(f"\r\x1b[K{text[:width]}")
            self.live = True
        else:
            self.stream.write(("\r\x1b[K" if self.live else "") + text + "\n")
            self.live = False
        self.stream.flush()


def _workspace(args: argparse.Namespace) -> Workspace:
    if not args.root:
        return Workspace.discover()
    try:
        return Workspace(Path(args.root).resolve(strict=True))
    except (OSError, RuntimeError) as exc:  # missing, a symlink loop, a name too long
        raise InvalidInput(Problem(f"--root {args.root}: {getattr(exc, 'strerror', None) or exc}")) from None


def _recipe_paths(args: argparse.Namespace, workspace: Workspace) -> list[Path]:
    """RECIPE arguments may be files, directories or recipe names; none means every recipe."""
    if not args.recipes:
        return [workspace.recipes_dir]
    paths: list[Path] = []
    by_name: dict[str, Path] | None = None
    for given in args.recipes:
        path = Path(given)
        try:
            exists = path.exists()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise InvalidInput(Problem(f"{given[:80]}: {getattr(exc, 'strerror', None) or exc}")) from None
        if exists:
            paths.append(path)
            continue
        if by_name is None:
            by_name = _recipe_names(workspace)
        if given in by_name:
            paths.append(by_name[given])
        elif ":" in given and given.split(":")[0] in by_name:  # a target id (kiln pipeline's jobs)
            paths.append(by_name[given.split(":")[0]])
        else:
            raise InvalidInput(
                Problem(f"{given}: no such file, directory or recipe name in {workspace.recipes_dir}")
            )
    return paths


def _recipe_names(workspace: Workspace) -> dict[str, Path]:
    from .recipes import discover
    from .yamlsource import load_file

    names: dict[str, Path] = {}
    for path in discover([workspace.recipes_dir]):
        try:
            data = load_file(path).data
        except InvalidInput:
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            names.setdefault(data["name"], path)
    return names


def _load_targets(args: argparse.Namespace, with_dependencies: bool = False) -> tuple[Workspace, list[Any]]:
    from .pipeline.graph import load_targets, select

    workspace = _workspace(args)
    targets, problems = load_targets(
        _recipe_paths(args, workspace), workspace, with_dependencies=with_dependencies
    )
    if problems:
        raise InvalidInput(problems)
    try:
        targets = select(targets, arch=getattr(args, "arch", None))
    except ValueError as exc:
        raise InvalidInput(Problem(f"--arch: {exc}")) from None
    ids = [g for g in (getattr(args, "recipes", None) or []) if ":" in g and not Path(g).exists()]
    if ids:
        from .pipeline.build import default_build_root
        from .pipeline.gitlab import select_ids

        def built_here(target: Any) -> bool:  # a GitLab job's needs: brought its manifest
            path = default_build_root(workspace) / target.slug / "manifest.json"
            try:
                return json.loads(path.read_text()).get("digest") == target.digest
            except (OSError, ValueError, AttributeError):
                return False

        targets = select_ids(targets, ids, with_dependencies, built_here)
    return workspace, targets


def _ledger_path(args: argparse.Namespace, workspace: Workspace) -> Path:
    if args.ledger:
        return Path(args.ledger)
    env = os.environ.get("KILN_LEDGER")
    return Path(env) if env else workspace.root / ".kiln" / "ledger.sqlite"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:  # one write: the masking layer sees whole lines, and fast
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif text:
        print(text)


# --- commands ----------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from .pipeline.graph import load

    workspace = _workspace(args)
    result = load(_recipe_paths(args, workspace), workspace)
    ok = not result.problems
    summary = f"{result.files} recipe files, {result.recipes} valid, {len(result.targets)} targets"
    _emit(
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
    from .kinds import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        from .outdir import write_file

        write_file(Path(args.output), text.encode())
    else:
        sys.stdout.write(text)
    return ExitCode.OK


def cmd_plan(args: argparse.Namespace) -> int:
    from .ledger import Ledger
    from .pipeline.plan import make_plan, plan_table

    workspace, targets = _load_targets(args)
    with Ledger(_ledger_path(args, workspace)) as ledger:
        entries = make_plan(targets, ledger.states())
    _emit(args, {"targets": [e.as_json() for e in entries]}, plan_table(entries))
    return ExitCode.OK


def cmd_render(args: argparse.Namespace) -> int:
    from .pipeline.rendering import render_into

    workspace, targets = _load_targets(args)
    out_dir = Path(args.output)
    progress = Progress(not args.quiet and not args.json)
    report = render_into(targets, workspace.templates_dir, out_dir, progress.step)
    lines = [f"{r['id']}  ->  {r['dir']}" for r in report]
    _emit(args, {"rendered": report}, "\n".join([*lines, f"rendered {len(report)} targets into {out_dir}"]))
    return ExitCode.OK


def cmd_publish(args: argparse.Namespace) -> int:
    from .ledger import Ledger
    from .manifest import read_manifest
    from .pipeline.publish import check_publishable, publish_manifests
    from .publishers.from_site import SitePublishers

    workspace, site = _site(args)
    manifests = [read_manifest(Path(m)) for m in args.manifests]
    quiet = args.quiet or args.json
    step = (lambda _: None) if quiet else StepPrinter("publish")
    for manifest in manifests:
        step(f"{manifest.target}: verification {manifest.verification_summary}")
    check_publishable(manifests, allow_unverified=args.allow_unverified)
    publishers = SitePublishers(site, workspace.root, step)
    with Ledger(_ledger_path(args, workspace)) as ledger:
        publications = publish_manifests(manifests, publishers, ledger, step)
    lines = [
        f"{p.target} {p.artifact} -> {p.publisher} {p.location}{' (already there)' if p.noop else ''}"
        for p in publications
    ]
    verification = {m.target: m.verification_summary for m in manifests}
    _emit(
        args,
        {"published": [p.as_json() for p in publications], "verification": verification},
        "\n".join(lines) or "nothing to publish",
    )
    return ExitCode.OK


def cmd_build(args: argparse.Namespace) -> int:
    from .ledger import Ledger
    from .pipeline.build import BuildOptions, Pipeline, describe_plan

    workspace, targets = _load_targets(args, with_dependencies=True)  # a base image is built first
    _, site = _site(args)
    options = BuildOptions(
        publish=site.publish_after_build if args.publish is None else args.publish,
        verify=not args.no_verify,
        dry_run=args.dry_run,
        candidate=args.candidate,
        gpu=args.gpu,
        force=getattr(args, "force", False),
    )
    if options.candidate is not None:
        site.candidates.suffixes(options.candidate)  # an unfit id is refused before anything runs
    quiet = args.quiet or args.json
    step = (lambda _: None) if quiet else StepPrinter("build")
    if options.dry_run:  # pure: no ledger (not even opened), nothing written, nothing probed
        outcomes = Pipeline(workspace, site, None, on_step=step).run(targets, options)
        text = "\n".join(
            line for o in outcomes for line in (describe_plan(o) if o.plan else [f"# {o.target}: {o.error}"])
        )
    else:
        with Ledger(_ledger_path(args, workspace)) as ledger:
            outcomes = Pipeline(workspace, site, ledger, on_step=step).run(targets, options)
        text = "\n".join(
            f"{o.target:40} {o.status:8} {o.seconds:8.1f}s  "
            + (o.error or o.note or f"{o.manifest or ''}  verification {o.verification}")
            for o in outcomes
        )
    failed = [o for o in outcomes if o.status == "failed"]
    _emit(args, {"targets": [o.as_json() for o in outcomes], "ok": not failed}, text)
    return ExitCode.FAILED if failed else ExitCode.OK


def cmd_pipeline(args: argparse.Namespace) -> int:
    import time

    from .core.kind import slug_of
    from .ledger import Ledger
    from .pipeline import gitlab

    workspace, targets = _load_targets(args)
    _, site = _site(args)
    with Ledger(_ledger_path(args, workspace)) as ledger:
        published = ledger.published_digests()
    answers = None
    if args.ask_destinations:  # build jobs on other runners publish without writing this ledger
        from .pipeline import destinations
        from .publishers.from_site import SitePublishers

        warn = _stderr_step("kiln pipeline")
        answers = destinations.ask(targets, published, SitePublishers(site, workspace.root), warn)
        published = answers.published(published, time.time())
    changed = gitlab.changed_since(workspace.root, args.changed_since) if args.changed_since else None
    older = time.time() - args.older_than_days * 86400 if args.older_than_days is not None else None
    stale = gitlab.select_stale(
        targets, published, changed_files=changed, changed_ref=args.changed_since or "", older_than=older
    )
    if args.candidate is not None:
        site.candidates.suffixes(args.candidate)  # refused here, never written into a job's script
    files = gitlab.generate(
        stale, site.gitlab, publish=args.publish, max_bytes=args.max_bytes, candidate=args.candidate
    )
    out = Path(args.output)
    prefix = out.with_suffix("")
    written = []
    if len(files) == 1:
        written.append((out, files[0]))
    else:
        written += [(prefix.with_name(f"{prefix.name}-{f.name}.yml"), f) for f in files]
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, f in written:
        path.write_text(f.text)
    if len(files) > 1:
        downstream = gitlab.downstream_jobs(site.gitlab, args.publish, args.candidate)
        top = gitlab.dispatcher(files, prefix.name, args.generate_job, downstream)
        out.write_text(gitlab.render_yaml(top))
    report = {
        "output": str(out),
        "split": len(files) > 1,
        "files": [{"path": str(p), "bytes": len(f.text), "targets": f.targets} for p, f in written],
        "jobs": [{"target": s.target.id, "job": slug_of(s.target.id), "why": list(s.reasons)} for s in stale],
    }
    lines = [gitlab.explain(stale, files)] if args.explain else []
    if answers is not None:
        report["destinations"] = answers.as_json()
        if args.explain:
            lines += answers.explain({s.target.id for s in stale})
    if len(files) > 1:
        lines.append(
            f"over GitLab's {args.max_bytes}-byte limit for one generated config: split into {len(files)} "
            f"child pipelines ({', '.join(str(p) for p, _ in written)}), triggered by {out}"
        )
    lines.append(f"{len(stale) or 'no'} jobs -> {out}" + ("" if stale else " (one no-op job)"))
    _emit(args, report, "\n".join(lines))
    return ExitCode.OK


def _stderr_step(prefix: str) -> Callable[[str], None]:
    return lambda step: print(f"{prefix}: {step}", file=sys.stderr)


def _site(args: argparse.Namespace) -> tuple[Workspace, Any]:
    from .masking import register, secrets_in
    from .rpm.credentials import login_secrets
    from .siteconfig import load_site

    workspace = _workspace(args)
    site = load_site(Path(args.site) if args.site else None, workspace.root)
    # Values under keys named like secrets, and the passwords of its URLs (as written and decoded).
    for secret in [*secrets_in(site.model_dump(mode="json")), *login_secrets(site.login_urls())]:
        register(secret)
    return workspace, site


def _local_site(args: argparse.Namespace) -> Any:
    from .site.local import LocalSite

    workspace, site = _site(args)
    return LocalSite(site.state_dir(workspace.root), site.local)


def cmd_site_up(args: argparse.Namespace) -> int:
    local = _local_site(args)
    quiet = args.quiet or args.json
    started = time.monotonic()
    urls = local.up(
        on_step=(lambda _: None) if quiet else (lambda step: print(f"site: {step}", file=sys.stderr))
    )
    elapsed = time.monotonic() - started
    lines = [f"{name:9} {url}" for name, url in urls.as_json().items()]
    _emit(
        args,
        {"urls": urls.as_json(), "state_dir": str(local.state), "seconds": round(elapsed, 1)},
        "\n".join([*lines, f"local site up in {elapsed:.1f}s (state: {local.state})"]),
    )
    return ExitCode.OK


def cmd_site_down(args: argparse.Namespace) -> int:
    stopped = _local_site(args).down()
    _emit(args, {"stopped": stopped}, f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return ExitCode.OK


def cmd_site_status(args: argparse.Namespace) -> int:
    report = _local_site(args).status()
    healthy = all(entry["healthy"] for entry in report.values())
    lines = [
        f"{name:16} {'healthy' if e['healthy'] else 'DOWN':8} pid {e['pid'] or '-'}"
        for name, e in report.items()
    ]
    _emit(args, {"healthy": healthy, "services": report}, "\n".join(lines))
    return ExitCode.OK if healthy else ExitCode.ENVIRONMENT


# --- parser ------------------------------------------------------------------------------------------


def _add_common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """Options accepted before or after the command name (``kiln -q render`` = ``kiln render -q``)."""
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=default,
        type=path_type("--root"),
        help="workspace root (default: $KILN_ROOT, else the nearest dir with recipes/ and templates/)",
    )
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        default=default,
        type=path_type("--ledger"),
        help="sqlite ledger (default: $KILN_LEDGER, else ROOT/.kiln/ledger.sqlite)",
    )
    parser.add_argument(
        "--site",
        metavar="FILE",
        default=default,
        type=path_type("--site"),
        help="site settings (default: $KILN_SITE, else ROOT/site.yaml, else the local site)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description=textwrap.dedent(
            """\
            Kiln builds guest images, IPA ramdisks, ppc64le RPM rebuilds and CUDA containers from
            YAML recipes, per architecture, and records what it built in a ledger."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("kiln validate", "kiln plan --json", "kiln render debian-12 --arch ppc64le -o out/"),
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    _add_common_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS)  # so a sub-command's absent flag keeps the global value
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_: str,
        examples: list[str],
        recipes: bool = True,
        json_flag: bool = True,
        *,
        under: Any = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        """A command (or, ``under`` a group, one of its actions) with help, examples and --json."""
        p = (under or sub).add_parser(
            name,
            parents=[common],
            help=help_,
            description=description or help_,
            epilog=_examples(*examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        if recipes:
            p.add_argument(
                "recipes",
                nargs="*",
                metavar="RECIPE",
                type=path_type("RECIPE"),  # names and target ids pass too
                help="recipe files, directories or recipe names (default: every recipe)",
            )
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return p

    def group(name: str, help_: str, examples: list[str], *, description: str | None = None) -> Any:
        """A command whose actions are sub-commands (``kiln site up``); returns their subparsers."""
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_,
            description=description or help_,
            epilog=_examples(*examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)

    add(
        "validate",
        cmd_validate,
        "Check recipes: schema, file references, capability rules.",
        [
            "kiln validate",
            "kiln validate recipes/guest/debian-12.yaml",
            "kiln validate --json recipes/ | jq .problems",
        ],
    )
    p = add(
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
    p = add(
        "plan",
        cmd_plan,
        "List every target with its input digest and ledger state.",
        ["kiln plan", "kiln plan --arch ppc64le --json", "kiln plan debian-12"],
    )
    p.add_argument(
        "--arch", metavar="ARCH", help="only this architecture (any spelling: ppc64el, amd64, ...)"
    )
    p = add(
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
    p = add(
        "build",
        cmd_build,
        "Render, build, boot-test and (with --publish) publish targets; unchanged targets are skipped.",
        [
            "kiln build debian-12 --arch x86_64",
            "kiln build debian-12 --publish --json",
            "kiln build debian-12 --dry-run",
        ],
    )
    p.add_argument("--arch", metavar="ARCH", help="only this architecture (any spelling)")
    p.add_argument(
        "--publish",
        dest="publish",
        action="store_true",
        default=None,
        help="publish after a successful build (default: site.yaml publish_after_build)",
    )
    p.add_argument("--no-publish", dest="publish", action="store_false", help="do not publish")
    p.add_argument(
        "--candidate",
        metavar="ID",
        help="publish under candidate names (site.yaml candidates:, e.g. '-mr42'), never production's",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="switch verification off (recorded as 'off' in the manifest and ledger; still publishable)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="build every selected target again even when its digest was built (a new build id; "
        "caches such as the DIB base tree are still used)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="container images with nvcc: also compile and run a CUDA vector add on this host's GPU "
        "(needs the NVIDIA container runtime; reported as skipped, by name, where there is none)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the exact commands, dependencies first; writes, records and probes nothing",
    )
    p = add(
        "pipeline",
        cmd_pipeline,
        "Write a GitLab child pipeline: one `kiln build TARGET --publish` job per stale target.",
        [
            "kiln pipeline -o child.yml",
            "kiln pipeline --changed-since origin/main --explain -o child.yml",
            "kiln pipeline --candidate 42 -o child.yml    # merge request 42: publish as candidates",
            "kiln pipeline --no-publish -o child.yml      # build and verify only",
            "kiln pipeline --older-than-days 30 -o child.yml --json",
            "kiln pipeline --ask-destinations --explain -o child.yml   # ask Glance and the registry too",
        ],
    )
    p.add_argument("--arch", metavar="ARCH", help="only this architecture (any spelling)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="child.yml",
        type=path_type("--output"),
        help="default: child.yml",
    )
    p.add_argument(
        "--changed-since",
        metavar="REF",
        help="also rebuild targets whose input files changed since this git ref (git diff --name-only)",
    )
    p.add_argument(
        "--older-than-days",
        metavar="N",
        type=float,
        help="also rebuild targets published more than N days ago (scheduled pipelines)",
    )
    p.add_argument(
        "--no-publish",
        dest="publish",
        action="store_false",
        help="jobs build and verify, and publish nothing",
    )
    p.add_argument(
        "--candidate",
        metavar="ID",
        help="jobs publish under candidate names: kiln build TARGET --publish --candidate ID "
        "(merge requests: $CI_MERGE_REQUEST_IID)",
    )
    p.add_argument("--explain", action="store_true", help="print every job: tags, needs, why it runs")
    p.add_argument(
        "--ask-destinations",
        action="store_true",
        help="also ask Glance and the registry whether each target the ledger lists as unpublished is "
        "published there at its digest (production names, with --candidate too), as build jobs on other "
        "runners publish without writing this ledger; needs the build jobs' credentials. A destination "
        "that does not answer is named on stderr and its targets get jobs",
    )
    p.add_argument(
        "--generate-job",
        metavar="NAME",
        default="kiln-generate",
        help="the parent's job that runs this command (a split pipeline takes its files from it)",
    )
    p.add_argument("--max-bytes", metavar="N", type=int, default=5_000_000 - 4096, help=argparse.SUPPRESS)
    p = add(
        "publish",
        cmd_publish,
        "Publish what a build produced (its manifest JSON) and record it in the ledger.",
        [
            "kiln publish build/debian-12_bookworm_x86_64/manifest.json",
            "kiln publish out/*/manifest.json --json",
        ],
        recipes=False,
    )
    p.add_argument(
        "manifests",
        nargs="+",
        metavar="MANIFEST",
        type=path_type("MANIFEST"),
        help="build manifest JSON files",
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="publish even when a manifest's verification failed or never ran (the gate's override)",
    )
    from .cli_records import register as register_records  # verify, sbom, history, show, report

    register_records(add, group)
    from .cli_rpm import register as register_rpm  # rpm missing, rpm rebuild

    register_rpm(add, group)
    site = group(
        "site",
        "Start, stop or check the embedded local site (Glance, registry, repo, S3).",
        ["kiln site up", "kiln site status --json", "kiln site down"],
        description="The embedded local site: real services on 127.0.0.1, state under local.state_dir.",
    )
    for action, func, text in (
        ("up", cmd_site_up, "Prepare and start every component, wait for health, print URLs."),
        ("down", cmd_site_down, "Stop the processes this site started (and nothing else)."),
        ("status", cmd_site_status, "Probe each service; exit 3 when one is down."),
    ):
        examples = [f"kiln site {action}", f"kiln site {action} --json"]
        add(action, func, text, examples, recipes=False, under=site)
    return parser


def tune_gc() -> None:
    """Fewer cyclic-GC passes: a kiln run allocates many small, short-lived objects (YAML nodes,
    located data, models) and little cyclic garbage; the default thresholds spent ~40% of
    `kiln plan` on collection (bench/plan_scale.py)."""
    gc.freeze()  # what is imported is alive for the whole run
    gc.set_threshold(100_000, 50, 100)


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (CI cancelling a job) becomes an exception, so that the runner stops the build's
    # process group and cleanups (mounts, loop devices) run on the way out.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except InvalidInput as exc:  # a value a type= check refused (builder/cli_args.py): exit 1, as later
        given = list(sys.argv[1:] if argv is None else argv)
        if "--json" in given:
            problems = [p.as_json() for p in exc.problems]
            sys.stdout.write(json.dumps({"ok": False, "problems": problems}, indent=2) + "\n")
        print(f"kiln: error: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    tune_gc()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    # Everything this command prints passes the one masking layer (builder/masking.py).
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskingStream(sys.stdout), MaskingStream(sys.stderr)  # type: ignore[assignment]
    try:
        return _run_command(args)
    finally:
        from .signing import release_keyrings  # here, not at the top: start-up time

        release_keyrings()  # nothing this command started (a gpg-agent) outlives it
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader that left (`kiln plan --json | head`)
                stream.flush()
        sys.stdout, sys.stderr = streams


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except KilnError as exc:
        if getattr(args, "json", False) and isinstance(exc, InvalidInput):
            problems = [p.as_json() for p in exc.problems]
            sys.stdout.write(json.dumps({"ok": False, "problems": problems}, indent=2) + "\n")
        print(f"kiln {args.command}: error: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kiln plan --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception as exc:  # a Kiln bug: never reported as "invalid input"
        where = _save_traceback(args)
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        if getattr(args, "json", False):
            json.dump({"ok": False, "internal_error": message, "traceback": where}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        print(
            f"kiln {args.command}: internal error (a Kiln bug, please report it): {message}; "
            f"traceback: {where}",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL


def _save_traceback(args: argparse.Namespace) -> str:
    """The traceback of the exception being handled, in a file under ~/.cache/kiln/crashes/."""
    import traceback

    text = f"kiln {__version__}: {' '.join(sys.argv)}\n{traceback.format_exc()}"
    try:
        directory = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln" / "crashes"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"kiln-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}.txt"
        path.write_text(text)
        return str(path)
    except OSError:
        sys.stderr.write(text)
        return "printed above"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
