"""Values that would break a rendered file later: control characters (a newline in a build.env
value splits the env file) are refused at validation, at the value's file:line:column."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from builder.errors import InvalidInput, Location
from builder.recipes import RecipeLoader
from builder.workspace import Workspace
from tests.support.recipes import MINIMAL_GUEST, Write


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


@pytest.mark.parametrize(
    ("escaped", "code", "name"),
    [
        ("a\\nb", "000A", " (newline)"),
        ("a\\rb", "000D", " (carriage return)"),
        ("a\\0b", "0000", " (NUL)"),
        ("a\\eb", "001B", ""),
        ("a\\x85b", "0085", ""),
        ("a\\u2028b", "2028", ""),
        ("a\\x7fb", "007F", ""),
    ],
)
def test_a_control_character_in_an_env_value_is_refused_where_it_is_written(
    workspace: Workspace, write: Write, escaped: str, code: str, name: str
):
    text = MINIMAL_GUEST + f'  env:\n    DIB_X: "{escaped}"\n'
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(write("recipes/x.yaml", text))
    (problem,) = info.value.problems
    assert problem.location == Location("recipes/x.yaml", 9, 5)
    assert problem.key_path == ("build", "env", "DIB_X")
    assert problem.message == (
        f"must be a single line of text: control character U+{code}{name} at offset 1 is not allowed"
    )


def test_a_block_scalar_in_a_single_line_field_is_refused(workspace: Workspace, write: Write):
    text = MINIMAL_GUEST + "  env:\n    DIB_X: |\n      line one\n      line two\n"
    with pytest.raises(InvalidInput, match=r"recipes/x.yaml:9:5: build.env.DIB_X: must be a single line"):
        RecipeLoader(workspace).load(write("recipes/x.yaml", text))


@pytest.mark.parametrize(
    "field",
    [
        "description: 'x\\ny'",
        "verify:\n  boot:\n    checks: ['true\\nreboot']",
        "build:\n  builder: dib\n  distro: debian\n  release: bookworm\n  env: {A: 'x\\ry'}",
    ],
    ids=["description", "boot-check", "env-flow"],
)
def test_every_single_line_field_refuses_newlines(workspace: Workspace, write: Write, field: str):
    base = MINIMAL_GUEST if not field.startswith("build:") else MINIMAL_GUEST.split("build:")[0]
    text = base + field.replace("'", '"') + "\n"
    with pytest.raises(InvalidInput, match="must be a single line of text"):
        RecipeLoader(workspace).load(write("recipes/x.yaml", text))


def test_tabs_and_odd_but_printable_text_are_accepted(workspace: Workspace, write: Write):
    value = "tab\\there $(id) `x` ${HOME} 'q' caf\\u00e9 \\U0001f525"
    text = MINIMAL_GUEST + f'  env:\n    DIB_X: "{value}"\n'
    loaded = RecipeLoader(workspace).load(write("recipes/x.yaml", text))
    assert loaded.recipe.build.env["DIB_X"] == "tab\there $(id) `x` ${HOME} 'q' café 🔥"


def test_kiln_validate_reports_the_env_newline_as_a_located_problem(workspace: Workspace, write: Write):
    from builder.cli import main

    write("recipes/x.yaml", MINIMAL_GUEST + '  env:\n    DIB_X: "a\\nb"\n')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--root", str(workspace.root), "validate", "--json"])
    assert code == 1
    (problem,) = json.loads(out.getvalue())["problems"]
    assert (problem["file"], problem["line"], problem["column"], problem["key"]) == (
        "recipes/x.yaml",
        9,
        5,
        "build.env.DIB_X",
    )
