"""`kiln validate DIR` survives a file that breaks the loader in a new way: that file gets an internal
problem (with the exception type and where it was raised), every other file is still checked."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from builder import recipes
from builder.recipes import RecipeLoader, discover
from builder.workspace import Workspace
from tests.support.recipes import MINIMAL_GUEST, Write


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


@pytest.fixture
def crashing_file(monkeypatch: pytest.MonkeyPatch) -> str:
    """Loading recipes/b-crash.yaml raises as a Kiln bug would."""
    real = recipes.load_file

    def load_file(path: Path, *, resolved: bool = False):
        if path.name == "b-crash.yaml":
            raise RecursionError("maximum recursion depth exceeded")
        return real(path, resolved=resolved)

    monkeypatch.setattr(recipes, "load_file", load_file)
    return "recipes/b-crash.yaml"


def three_recipes(write: Write) -> None:
    write("recipes/a.yaml", MINIMAL_GUEST.replace("name: g", "name: a"))
    write("recipes/b-crash.yaml", MINIMAL_GUEST.replace("name: g", "name: b"))
    write("recipes/c.yaml", MINIMAL_GUEST.replace("name: g", "name: c").replace("x86_64", "sparc"))


def test_one_crashing_file_does_not_stop_the_others(workspace: Workspace, write: Write, crashing_file: str):
    three_recipes(write)
    loaded, problems = RecipeLoader(workspace).load_many(discover([workspace.recipes_dir]))
    assert [r.name for r in loaded] == ["a"]
    internal = [p for p in problems if p.internal]
    assert len(internal) == 1
    assert str(internal[0]).startswith(
        "recipes/b-crash.yaml:1:1: internal error while loading this file "
        "(RecursionError at builder/recipes.py:"
    )
    assert "maximum recursion depth exceeded); this is a bug in Kiln" in internal[0].message
    assert [p.location.file for p in problems if not p.internal and p.location] == ["recipes/c.yaml"]


def test_validate_json_lists_every_file_and_marks_the_internal_error(
    workspace: Workspace, write: Write, crashing_file: str
):
    from builder.cli import main

    three_recipes(write)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--root", str(workspace.root), "validate", "--json"])
    assert code != 0
    document = json.loads(out.getvalue())
    by_file = {p["file"]: p for p in document["problems"]}
    assert set(by_file) == {"recipes/b-crash.yaml", "recipes/c.yaml"}
    assert by_file["recipes/b-crash.yaml"]["internal"] is True
    assert "internal" not in by_file["recipes/c.yaml"]


def test_a_broken_defaults_file_is_reported_once_not_per_recipe(workspace: Workspace, write: Write):
    write("recipes/defaults.yaml", "guest-image")  # a string, not a mapping of kinds
    for name in "abc":
        write(f"recipes/{name}.yaml", MINIMAL_GUEST.replace("name: g", f"name: {name}"))
    loaded, problems = RecipeLoader(workspace).load_many(discover([workspace.recipes_dir]))
    assert loaded == []
    assert [str(p) for p in problems] == [
        "recipes/defaults.yaml:1:1: defaults must map a kind to its default keys"
    ]
