"""The kiln command: exit codes, --json documents, help with examples, and the committed schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builder.cli import build_parser, main
from builder.ledger import Ledger
from builder.pipeline.graph import load_targets
from builder.workspace import PACKAGE_ROOT, Workspace

GOOD = (
    "name: g\nkind: guest-image\narches: [x86_64, ppc64le]\n"
    "build: {builder: dib, distro: debian, release: bookworm}\n"
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok_and_json(capsys, workspace, write):
    write("recipes/g.yaml", GOOD)
    code, out, _ = run(capsys, "--root", str(workspace.root), "validate")
    assert code == 0 and out.strip() == "ok: 1 recipe files, 1 valid, 2 targets"
    code, out, _ = run(capsys, "validate", "--json", "--root", str(workspace.root))
    assert code == 0
    assert json.loads(out) == {"ok": True, "files": 1, "recipes": 1, "targets": 2, "problems": []}


def test_validate_invalid_recipe_exits_1_with_located_problems(capsys, workspace, write, monkeypatch):
    monkeypatch.chdir(workspace.root)
    write("recipes/g.yaml", GOOD.replace("bookworm", "Bookworm!"))
    code, out, _ = run(capsys, "validate", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    [problem] = doc["problems"]
    assert problem["file"] == "recipes/g.yaml" and problem["line"] == 4 and problem["key"] == "build.release"


def test_validate_refuses_cuda_12_6_on_ppc64le_with_the_reason_and_the_line(capsys, workspace, write):
    write(
        "recipes/cuda-new.yaml",
        "name: cuda-new\nkind: container\narches: [x86_64, ppc64le]\n"
        "build:\n  distro: ubuntu\n  release: jammy\n  cuda: '12.6'\n",
    )
    code, out, _ = run(capsys, "--root", str(workspace.root), "validate", "--json")
    assert code == 1
    [problem] = json.loads(out)["problems"]
    assert problem["file"].endswith("recipes/cuda-new.yaml")
    assert (problem["line"], problem["key"]) == (7, "build.cuda")
    assert "cannot build for ppc64le" in problem["message"] and "12.4" in problem["message"]


def test_plan_json_reflects_the_ledger(capsys, workspace, write, tmp_path):
    write("recipes/g.yaml", GOOD)
    ledger_path = tmp_path / "ledger.sqlite"
    targets, _ = load_targets([workspace.recipes_dir], workspace)
    built = next(t for t in targets if t.arch.value == "ppc64le")
    with Ledger(ledger_path) as ledger:
        ledger.finish_build(ledger.start_build(built), "succeeded")
    code, out, _ = run(capsys, "--root", str(workspace.root), "--ledger", str(ledger_path), "plan", "--json")
    assert code == 0
    states = {t["id"]: t["state"] for t in json.loads(out)["targets"]}
    assert states == {"g:bookworm:x86_64": "never built", "g:bookworm:ppc64le": "up to date"}


def test_plan_by_recipe_name_and_arch_spelling(capsys, workspace, write, tmp_path):
    write("recipes/sub/g.yaml", GOOD)
    code, out, _ = run(
        capsys,
        "--root",
        str(workspace.root),
        "--ledger",
        str(tmp_path / "l.sqlite"),
        "plan",
        "g",
        "--arch",
        "ppc64el",
        "--json",
    )
    assert code == 0
    assert [t["id"] for t in json.loads(out)["targets"]] == ["g:bookworm:ppc64le"]


def test_unknown_recipe_name_and_unknown_arch_exit_1(capsys, workspace, write, tmp_path):
    write("recipes/g.yaml", GOOD)
    root = ["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite")]
    code, _, err = run(capsys, *root, "plan", "no-such-recipe")
    assert code == 1 and "no-such-recipe: no such file, directory or recipe name" in err
    code, _, err = run(capsys, *root, "plan", "--arch", "sparc")
    assert code == 1 and "--arch: unknown architecture 'sparc'" in err


def test_render_writes_one_directory_per_target_with_a_manifest(capsys, workspace, write, tmp_path):
    write("recipes/g.yaml", GOOD)
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "--root", str(workspace.root), "render", "-o", str(out_dir), "--json")
    assert code == 0
    rendered = json.loads(out)["rendered"]
    assert {r["id"] for r in rendered} == {"g:bookworm:x86_64", "g:bookworm:ppc64le"}
    manifest = json.loads((out_dir / "g_bookworm_ppc64le" / "target.json").read_text())
    assert manifest["files"] == ["build.json", "dib.env"]
    assert "templates/dib/environment.j2" in manifest["inputs"]


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["render"])  # -o is required
    assert caught.value.code == 2


def test_help_of_every_command_has_examples_and_only_implemented_commands_exist():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    # Which module of builder/cli/ holds each command (a group's: each of its actions).
    modules = {
        "validate": "recipes",
        "schema": "recipes",
        "plan": "recipes",
        "render": "recipes",
        "build": "build",
        "publish": "build",
        "pipeline": "pipeline",
        "verify": "records",
        "sbom": "records",  # sbom diff
        "history": "records",
        "show": "records",
        "report": "records",
        "rpm": "rpm",  # rpm missing, rpm rebuild
        "site": "site",  # site up, site down, site status
    }
    assert set(subparsers.choices) == set(modules)  # type: ignore[arg-type]
    for name, sub in subparsers.choices.items():  # type: ignore[union-attr]
        actions = [a for a in sub._actions if a.dest == f"{name}_command"]
        funcs = (
            [s.get_default("func") for s in actions[0].choices.values()]
            if actions
            else [sub.get_default("func")]
        )
        assert {f.__module__ for f in funcs} == {f"builder.cli.{modules[name]}"}, name
    helps = [(name, sub) for name, sub in subparsers.choices.items()]  # type: ignore[union-attr]
    site = subparsers.choices["site"]  # type: ignore[index]
    site_actions = next(a for a in site._actions if a.dest == "site_command")
    helps += [(f"site {name}", sub) for name, sub in site_actions.choices.items()]  # type: ignore[union-attr]
    assert {name for name, _ in helps} >= {"site up", "site down", "site status"}
    for name, sub in helps:
        text = sub.format_help()
        assert "examples:" in text and f"kiln {name}" in text, name
        assert "exit codes:" in text


def test_committed_schema_matches_kiln_schema(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    committed = (PACKAGE_ROOT / "schemas" / "recipe.schema.json").read_text()
    assert out == committed, "schemas/recipe.schema.json is stale: run `make schema`"
    schema = json.loads(out)
    kinds = {
        d["properties"]["kind"]["const"]
        for d in schema["$defs"].values()
        if "kind" in d.get("properties", {}) and "const" in d["properties"]["kind"]
    }
    assert kinds == {"guest-image", "ipa-ramdisk", "rpm-rebuild", "container"}


def test_example_recipes_point_editors_at_the_schema():
    for path in (PACKAGE_ROOT / "recipes").rglob("*.yaml"):
        if path.name == "defaults.yaml":
            continue
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../../schemas/recipe.schema.json", path


def test_console_script_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "builder", "--root", str(PACKAGE_ROOT), "validate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_workspace_discovery_finds_the_nearest_root(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "templates").mkdir()
    deep = tmp_path / "recipes" / "guest"
    deep.mkdir()
    monkeypatch.delenv("KILN_ROOT", raising=False)
    assert Workspace.discover(deep).root == tmp_path.resolve()
    monkeypatch.setenv("KILN_ROOT", str(PACKAGE_ROOT))
    assert Workspace.discover(deep).root == PACKAGE_ROOT


def test_an_internal_error_has_its_own_exit_code_a_one_line_message_and_a_saved_traceback(
    capsys, workspace, write, monkeypatch, tmp_path
):
    import builder.pipeline.graph as graph

    def broken(*args, **kwargs):
        raise KeyError("a bug in Kiln")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(graph, "load_targets", broken)
    write("recipes/g.yaml", GOOD)
    code, out, err = run(capsys, "--root", str(workspace.root), "plan", "--json")
    assert code == 70 and code not in (0, 1, 2, 3, 4)
    [line] = err.strip().splitlines()
    assert line.startswith("kiln plan: internal error (a Kiln bug") and "KeyError" in line
    [saved] = (tmp_path / "cache/kiln/crashes").glob("kiln-*.txt")
    assert "a bug in Kiln" in saved.read_text() and "Traceback" in saved.read_text()
    assert json.loads(out)["traceback"] == str(saved)


def test_a_recipe_that_builds_on_another_validates_alone(capsys):
    """Its base is loaded from the workspace, as `kiln plan` and `kiln build` do."""
    packer = PACKAGE_ROOT / "recipes/guest/debian-12-packer.yaml"
    code, out, _ = run(capsys, "--root", str(PACKAGE_ROOT), "validate", "--json", str(packer))
    assert code == 0, out
    assert json.loads(out) == {"ok": True, "files": 1, "recipes": 1, "targets": 2, "problems": []}


@pytest.mark.parametrize("kind", ["long-name", "root-loop", "manifest-zero", "manifest-fifo"])
def test_hostile_command_line_arguments_are_refused_cleanly(capsys, workspace, write, tmp_path, kind):
    """Each is exit 1 with a message naming the argument: no traceback (70), no hang, no memory blow-up."""
    import os

    write("recipes/g.yaml", GOOD)
    if kind == "long-name":
        argv = ["--root", str(workspace.root), "validate", "a" * 300]
    elif kind == "root-loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        argv = ["--root", str(tmp_path / "loop"), "validate"]
    elif kind == "manifest-zero":
        argv = ["--root", str(workspace.root), "publish", "/dev/zero"]
    else:
        os.mkfifo(tmp_path / "fifo")
        argv = ["--root", str(workspace.root), "publish", str(tmp_path / "fifo")]
    code, _, err = run(capsys, *argv)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
