"""Hostile YAML: merges of themselves, merge-key chains, explicit tags on the wrong text, !!binary,
non-string kinds, control characters: each a located refusal, in bounded time, never a traceback."""

from __future__ import annotations

import base64
import time

import pytest

from builder.errors import InvalidInput, Location, Problem
from builder.limits import MAX_NODES
from builder.recipes import RecipeLoader
from builder.workspace import Workspace
from builder.yamlsource import load_text
from tests.support.recipes import MINIMAL_GUEST, Write


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


def refused(text: str) -> Problem:
    with pytest.raises(InvalidInput) as info:
        load_text(text, "t.yaml")
    assert len(info.value.problems) == 1
    return info.value.problems[0]


# --- merges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "x: &a {<<: *a}\n",
        "x: &a {<<: [*a, *a]}\n",
        "x: &a\n  k: 1\n  inner:\n    <<: *a\n",  # through a nested mapping
        "b: &b {y: 1}\nx: &a {<<: [*b, *a]}\n",
    ],
    ids=["itself", "itself-twice", "its-ancestor", "second-in-a-list"],
)
def test_a_mapping_that_merges_itself_is_refused(text: str):
    problem = refused(text)
    assert problem.message == "a mapping merges itself ('<<' of an enclosing anchor)"
    assert problem.location is not None and problem.location.file == "t.yaml"


@pytest.mark.parametrize("text", ["x: &a [*a]\n", "x: &a {k: *a}\n", "x: &a [1, {k: [*a]}]\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text: str):
    assert refused(text).message == "an alias refers to a collection that contains it; refused"


def merge_chain(levels: int, width: int = 10) -> str:
    """The issue's document: lN: &lN {<<: [*l(N-1) x width]}."""
    lines = ["l0: &l0 {a: 1, b: 2}"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} {{<<: [{', '.join([f'*l{n - 1}'] * width)}]}}")
    return "\n".join(lines) + "\n"


def test_the_merge_key_chain_of_the_issue_is_quick():
    text = merge_chain(11)
    assert len(text) < 700  # ~10^10 merges when each listed mapping is merged again
    started = time.monotonic()
    doc = load_text(text, "t.yaml")  # the same mapping ten times adds nothing: one pass per level
    assert time.monotonic() - started < 1.0
    assert doc.data["l10"] == {"a": 1, "b": 2}


def test_merges_of_distinct_mappings_count_the_keys_they_look_at():
    # Two mappings per level, each merging both of the level before: 2^levels merges, each looking
    # at keys it does not copy. That work counts against the node limit.
    lines = ["a0: &a0 {k: 1}", "b0: &b0 {k: 2}"]
    for i in range(1, 40):
        lines.append(f"a{i}: &a{i} {{<<: [*a{i - 1}, *b{i - 1}]}}")
        lines.append(f"b{i}: &b{i} {{<<: [*b{i - 1}, *a{i - 1}], z{i}: 1}}")
    started = time.monotonic()
    problem = refused("\n".join(lines) + "\n")
    assert time.monotonic() - started < 2.0
    assert problem.message == f"document expands to more than {MAX_NODES} nodes (an alias bomb?); refused"


def test_modest_merges_still_work():
    doc = load_text("d: &d {x: 1, y: 2}\ne: &e {<<: *d, z: 3}\nf: {<<: [*e, *d], x: 0}\n", "t.yaml")
    assert doc.data["f"] == {"x": 0, "y": 2, "z": 3}


# --- tags --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["int", "float", "bool", "timestamp"])
@pytest.mark.parametrize("text", ["abc", "1.2.3", "", "yes please"])
def test_an_explicit_tag_on_text_that_does_not_fit_is_refused(tag: str, text: str):
    problem = refused(f"name: x\nvalue: !!{tag} '{text}'\n")
    assert problem == Problem(
        f"unsupported YAML value: {text!r} is not a valid !!{tag}", Location("t.yaml", 2, 8), ("value",)
    )


def test_an_int_too_long_for_python_is_refused():
    problem = refused("n: " + "9" * 5000 + "\n")
    assert problem.message.startswith("unsupported YAML value: '999")
    assert problem.message.endswith("... is not a valid !!int")


def test_explicit_tags_that_fit_are_accepted():
    doc = load_text("a: !!int '7'\nb: !!float '1.5'\nc: !!bool 'true'\nd: !!str 12\ne: !!null ''\n", "t.yaml")
    assert doc.data == {"a": 7, "b": 1.5, "c": True, "d": "12", "e": None}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("!!binary e3sgLk5hbWUgfX0=", "!!binary"),
        ("!!python/name:os.system x", "!!python/name:os.system"),
        ("!custom x", "!custom"),
        ("!<tag:example.com,2000:x> y", "tag:example.com,2000:x"),
    ],
)
def test_other_scalar_tags_are_refused(value: str, shown: str):
    assert refused(f"a: {value}\n").message == f"unsupported YAML value: the tag {shown} is not accepted"


def test_a_merge_key_as_a_value_is_refused():
    assert refused("a: <<\n").message == "unsupported YAML value: '<<' is a merge key, not a value"


def test_binary_template_code_never_reaches_a_packer_boot_command(workspace: Workspace, write: Write):
    payload = base64.b64encode(b"{{ .Name }}").decode()
    text = MINIMAL_GUEST.replace("dib", "packer") + (
        "  iso:\n    url: https://x/i.iso\n    checksum: none\n"
        f"    boot_command: ['<esc>', !!binary {payload}]\n"
    )
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(write("recipes/x.yaml", text))
    assert [str(p) for p in info.value.problems] == [
        "recipes/x.yaml:11:29: build.iso.boot_command[1]: "
        "unsupported YAML value: the tag !!binary is not accepted"
    ]


# --- kind ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["[guest-image]", "{a: 1}", "5", "true"])
def test_a_kind_that_is_not_a_string_is_a_located_problem(workspace: Workspace, write: Write, kind: str):
    text = MINIMAL_GUEST.replace("kind: guest-image", f"kind: {kind}")
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(write("recipes/x.yaml", text))
    (problem,) = info.value.problems
    assert problem.location == Location("recipes/x.yaml", 2, 1)
    assert problem.key_path == ("kind",)
    assert problem.message.startswith("must be one of ")


# --- control characters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "code"),
    [
        ("a: b\nc: d\x07\n", 2, 5, "0007"),
        ("name: x\ndescription: caf\u00e9 \x1b[2J\n", 2, 19, "001B"),
        ("a:\n  - \u00e9\u00e9\u00e9\n  - x\x7fy\n", 3, 6, "007F"),
        ("\x00", 1, 1, "0000"),
    ],
)
def test_a_control_character_is_reported_at_its_own_line_and_column(
    text: str, line: int, column: int, code: str
):
    problem = refused(text)
    assert problem.location == Location("t.yaml", line, column)
    assert problem.message.startswith(f"control character U+{code} is not allowed in YAML text")
    assert "\n" not in problem.message
