"""Hostile recipes: template injection, alias bombs, deep nesting, path escapes, odd bytes, merge keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from builder.errors import InvalidInput, Location, Problem
from builder.recipe import file_refs
from builder.recipes import RecipeLoader
from builder.workspace import PACKAGE_ROOT, Workspace
from builder.yamlsource import MAX_FILE_BYTES, load_file, load_text
from tests.support.recipes import MINIMAL_GUEST, Write

GUEST = MINIMAL_GUEST
TEMPLATE_REFUSED = "template syntax ('{{', '{%', '{#') is not allowed in recipe values"


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


def problems(workspace: Workspace, path: Path) -> list[Problem]:
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(path)
    return info.value.problems


# --- template injection ------------------------------------------------------------------------

PAYLOADS = ["{{ ''.__class__ }}", "{% import os %}", "{# x #}", "prefix {{ 7*7 }} suffix"]
# (recipe text with P where the payload goes, where the problem is reported)
FIELDS = [
    pytest.param(GUEST + 'description: "P"\n', "8:1: description", id="description"),
    pytest.param(GUEST + '  packages: [curl, "P"]\n', "8:20: build.packages[1]", id="packages-item"),
    pytest.param(GUEST + '  env:\n    DIB_X: "P"\n', "9:5: build.env.DIB_X", id="env-value"),
    pytest.param(
        GUEST + 'publish:\n  glance:\n    properties:\n      os_distro: "P"\n',
        "11:7: publish.glance.properties.os_distro",
        id="glance-property-value",
    ),
    pytest.param(GUEST + '  env:\n    "P": "1"\n', "9:5: build.env.P", id="dict-key"),
    pytest.param(GUEST + 'verify:\n  boot:\n    checks: ["P"]\n', "10:14: verify.boot.checks[0]", id="check"),
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(("text", "where"), FIELDS)
def test_template_syntax_is_refused_with_a_located_error(
    workspace: Workspace, write: Write, payload, text, where
):
    found = problems(workspace, write("recipes/x.yaml", text.replace("P", payload)))
    assert [str(p) for p in found] == [f"recipes/x.yaml:{where.replace('P', payload)}: {TEMPLATE_REFUSED}"]


def test_template_syntax_in_a_packer_shell_provisioner_is_refused(workspace: Workspace, write: Write):
    text = GUEST.replace("dib", "packer") + "  base: {recipe: g}\n  provisioners:\n"
    text += "    - shell: ['echo {{ .Name }}']\n"
    found = problems(workspace, write("recipes/x.yaml", text))
    assert [str(p) for p in found] == [
        f"recipes/x.yaml:10:15: build.provisioners[0].shell[0]: {TEMPLATE_REFUSED}"
    ]


def test_template_syntax_from_defaults_is_located_in_defaults(workspace: Workspace, write: Write):
    write("recipes/defaults.yaml", "guest-image:\n  description: '{{ x }}'\n")
    found = problems(workspace, write("recipes/x.yaml", GUEST))
    assert [str(p) for p in found] == [f"recipes/defaults.yaml:2:3: description: {TEMPLATE_REFUSED}"]


def test_every_template_occurrence_is_reported(workspace: Workspace, write: Write):
    text = GUEST + "  env:\n    DIB_A: '{% b %}'\n" + "description: '{{ a }}'\n"
    found = problems(workspace, write("recipes/x.yaml", text))
    assert {str(p) for p in found} == {
        f"recipes/x.yaml:9:5: build.env.DIB_A: {TEMPLATE_REFUSED}",
        f"recipes/x.yaml:10:1: description: {TEMPLATE_REFUSED}",
    }


def test_single_braces_and_percent_signs_are_plain_text(workspace: Workspace, write: Write):
    text = GUEST + "description: 'uses {braces}, 100% and # signs; } { not a template'\n"
    loaded = RecipeLoader(workspace).load(write("recipes/x.yaml", text))
    assert loaded.recipe.description == "uses {braces}, 100% and # signs; } { not a template"


# --- alias bombs and nesting -------------------------------------------------------------------


def billion_laughs(levels: int = 9, fan_out: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * fan_out) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_quickly(workspace: Workspace, write: Write):
    path = write("recipes/bomb.yaml", billion_laughs())
    started = time.monotonic()
    found = problems(workspace, path)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert len(found) == 1
    assert found[0].location is not None and found[0].location.file == "recipes/bomb.yaml"
    assert "(an alias bomb?); refused" in found[0].message


def test_alias_bomb_is_refused_by_load_text_in_bounded_time():
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"more than 20000 nodes \(an alias bomb\?\); refused"):
        load_text("name: x\n" + billion_laughs(levels=12, fan_out=12), "t.yaml")
    assert time.monotonic() - started < 2.0


def test_modest_alias_reuse_is_accepted():
    doc = load_text(billion_laughs(levels=3, fan_out=9), "t.yaml")
    assert doc.data["a2"] == [[["lol"] * 9] * 9] * 9  # 729 leaves, well under the node limit


def test_deeply_nested_flow_sequence_is_refused():
    with pytest.raises(InvalidInput) as info:
        load_text("a: " + "[" * 100 + "]" * 100 + "\n", "t.yaml")
    assert info.value.problems[0].message == "nesting deeper than 64 levels; refused"
    location = info.value.problems[0].location
    assert location is not None and (location.file, location.line) == ("t.yaml", 1)


def test_deeply_nested_block_mapping_is_refused():
    text = "".join("  " * i + f"k{i}:\n" for i in range(80)) + "  " * 80 + "v: 1\n"
    with pytest.raises(InvalidInput, match="nesting deeper than 64 levels"):
        load_text(text, "t.yaml")


def test_nesting_at_the_limit_is_accepted():
    doc = load_text("a: " + "[" * 63 + "]" * 63 + "\n", "t.yaml")
    assert doc.data["a"] is not None


def test_extreme_nesting_under_the_size_limit_is_refused_without_crashing(tmp_path: Path):
    """Refused as a located InvalidInput, in a process that survives (libyaml's composer used to
    crash it on this document). Which layer notices first depends on the PyYAML wheel: Kiln's own
    depth check, or the nesting limit of the libyaml bundled with PyYAML >= 6.0.4; so the test
    asserts Kiln's behaviour (an InvalidInput naming the file and line), not either's wording."""
    depth = 500_000  # about 1 MB, under MAX_FILE_BYTES
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * depth + "]" * depth + "\n")
    assert path.stat().st_size <= MAX_FILE_BYTES
    code = textwrap.dedent(f"""\
        import json
        from pathlib import Path
        from builder.errors import InvalidInput
        from builder.yamlsource import load_file
        try:
            load_file(Path({str(path)!r}))
        except InvalidInput as exc:
            print(json.dumps([problem.as_json() for problem in exc.problems]))
        else:
            print(json.dumps("accepted"))
        """)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"loader died with {result.returncode}: {result.stderr[-2000:]}"
    found = json.loads(result.stdout)
    assert found != "accepted", "a document nested 500000 levels deep was loaded"
    assert len(found) == 1, found
    problem = found[0]
    assert problem["message"], problem
    assert problem["file"] is not None, problem
    assert (PACKAGE_ROOT / problem["file"]).resolve() == path.resolve(), problem  # as shown from cwd
    # The whole document is one line; the column is wherever the refusing layer stopped.
    assert problem["line"] == 1, problem
    assert 1 <= problem["column"] <= len("a: ") + 2 * depth + 1, problem


def test_tags_on_collections_never_construct_python_objects():
    doc = load_text("a: !!python/object/apply:os.system [echo hi]\nb: !!python/object:os.X {k: v}\n")
    assert doc.data == {"a": ["echo hi"], "b": {"k": "v"}}


# --- file references ---------------------------------------------------------------------------

PACKER = GUEST.replace("dib", "packer") + "  base: {recipe: g}\n  provisioners:\n    - script: REF\n"


@pytest.fixture
def outside(workspace: Workspace, tmp_path: Path) -> Path:
    """A file and a directory outside the workspace, plus symlinks to them from inside it."""
    secret = tmp_path / "secret.sh"
    secret.write_text("steal\n")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "x.sh").write_text("steal\n")
    (workspace.root / "files").mkdir()
    os.symlink(secret, workspace.root / "files" / "link.sh")
    os.symlink(tmp_path / "outdir", workspace.root / "files" / "outdir")
    return secret


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("../../etc/passwd", "'../../etc/passwd' resolves outside the workspace ({root}); refused"),
        ("../" * 12 + "etc/passwd", "'{ref}' resolves outside the workspace ({root}); refused"),
        ("/etc/passwd", "absolute path '/etc/passwd' refused: paths are relative to the recipe file"),
        ("~/x.sh", "absolute path '~/x.sh' refused: paths are relative to the recipe file"),
        ("C:/x.sh", "absolute path 'C:/x.sh' refused: paths are relative to the recipe file"),
        ("../files/link.sh", "'../files/link.sh' resolves outside the workspace ({root}); refused"),
        ("../files/outdir/x.sh", "'../files/outdir/x.sh' resolves outside the workspace ({root}); refused"),
        ("../files/nope.sh", "'../files/nope.sh' does not exist (looked at files/nope.sh)"),
        ("../files", "'../files' is not a regular file"),
        ("''", "empty path or NUL byte"),
        ('"a\\0b"', "empty path or NUL byte"),
    ],
)
def test_file_reference_outside_workspace_or_missing_is_refused(
    workspace: Workspace, write: Write, outside: Path, reference, message
):
    found = problems(workspace, write("recipes/x.yaml", PACKER.replace("REF", reference)))
    expected = message.format(root=workspace.root.resolve(), ref=reference)
    assert [str(p) for p in found] == [f"recipes/x.yaml:10:7: build.provisioners[0].script: {expected}"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "name: r\nkind: rpm-rebuild\narches: [ppc64le]\nbuild:\n  release: '9'\n"
            "  source: {path: ../x.src.rpm}\n  patches: [/etc/passwd]\n",
            "7:13: build.patches[0]",
        ),
        (
            "name: r\nkind: rpm-rebuild\narches: [ppc64le]\nbuild:\n  release: '9'\n"
            "  source: {path: /etc/passwd}\n",
            "6:12: build.source.path",
        ),
        (
            GUEST.replace("dib", "packer")
            + "  iso:\n    path: ../x.iso\n    checksum: none\n    answer_file: /etc/passwd\n",
            "11:5: build.iso.answer_file",
        ),
    ],
    ids=["rpm-patch", "srpm-path", "iso-answer-file"],
)
def test_every_file_reference_field_refuses_absolute_paths(workspace: Workspace, write: Write, text, key):
    write("x.src.rpm", "srpm")
    write("x.iso", "iso")
    found = problems(workspace, write("recipes/x.yaml", text))
    assert [str(p) for p in found] == [
        f"recipes/x.yaml:{key}: absolute path '/etc/passwd' refused: paths are relative to the recipe file"
    ]


@pytest.mark.parametrize(
    ("recipe", "reference"),
    [
        ("recipes/x.yaml", "../files/a.sh"),
        ("recipes/guest/deep/x.yaml", "../../../files/a.sh"),
        ("recipes/x.yaml", "../files/./sub/../a.sh"),
        ("recipes/x.yaml", "inner-link.sh"),  # a symlink inside the workspace to a file inside it
    ],
)
def test_file_reference_inside_workspace_is_stored_workspace_relative(
    workspace: Workspace, write: Write, recipe, reference
):
    write("files/a.sh", "echo ok\n")
    (workspace.root / "files" / "sub").mkdir()
    os.symlink(workspace.root / "files" / "a.sh", workspace.root / "recipes" / "inner-link.sh")
    loaded = RecipeLoader(workspace).load(write(recipe, PACKER.replace("REF", reference)))
    assert loaded.recipe.build.provisioners[0].script == "files/a.sh"
    assert file_refs(loaded.recipe.build) == ["files/a.sh"]


# --- file size and encoding --------------------------------------------------------------------


def padded(text: str, size: int) -> bytes:
    body = text.encode()
    padding = size - len(body) - 3  # "# " and "\n"
    return body + b"# " + b"x" * padding + b"\n"


def test_recipe_exactly_at_the_size_limit_is_accepted(workspace: Workspace):
    path = workspace.recipes_dir / "x.yaml"
    path.write_bytes(padded(GUEST, MAX_FILE_BYTES))
    assert path.stat().st_size == MAX_FILE_BYTES == 1 << 20
    assert RecipeLoader(workspace).load(path).name == "g"


def test_recipe_over_one_mebibyte_is_refused(workspace: Workspace):
    path = workspace.recipes_dir / "x.yaml"
    path.write_bytes(padded(GUEST, MAX_FILE_BYTES + 1))
    found = problems(workspace, path)
    assert [str(p) for p in found] == ["recipes/x.yaml:1:1: file is larger than 1048576 bytes"]


@pytest.mark.parametrize("raw", [b"name: caf\xe9\n", b"\xff\xfen\x00a\x00m\x00e\x00", b"name: \xc3\x28\n"])
def test_non_utf8_recipe_is_refused(workspace: Workspace, raw):
    path = workspace.recipes_dir / "x.yaml"
    path.write_bytes(raw)
    found = problems(workspace, path)
    assert len(found) == 1
    assert found[0].location == Location("recipes/x.yaml", 1, 1)
    assert found[0].message.startswith("not UTF-8 text (")


def test_unreadable_path_is_refused_with_its_name(workspace: Workspace):
    with pytest.raises(InvalidInput, match=r"recipes/missing\.yaml:1:1: cannot read: "):
        load_file(workspace.recipes_dir / "missing.yaml")


# --- YAML merge keys ---------------------------------------------------------------------------


def test_merge_key_copies_the_anchor_and_explicit_keys_win():
    doc = load_text("base: &b\n  x: 1\n  y: 2\nm:\n  <<: *b\n  y: 3\n", "t.yaml")
    assert doc.data["m"] == {"x": 1, "y": 3}
    assert doc.locations[("m", "y")] == Location("t.yaml", 6, 3)  # the explicit key
    assert doc.locations[("m", "x")] == Location("t.yaml", 2, 3)  # where the merged value was written


def test_merge_of_several_mappings_prefers_the_first_listed():
    doc = load_text("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nm:\n  <<: [*a, *b]\n", "t.yaml")
    assert doc.data["m"] == {"x": 1, "y": 2}


def test_merge_of_a_scalar_is_refused():
    with pytest.raises(InvalidInput, match="'<<' must merge a mapping or a list of mappings"):
        load_text("m:\n  <<: 5\n", "t.yaml")


def test_merge_keys_share_defaults_between_kinds(workspace: Workspace, write: Write):
    write(
        "recipes/defaults.yaml",
        """\
        guest-image:
          publish:
            glance: &glance
              visibility: community
              keep: 5
              properties: {hw_qemu_guest_agent: "yes"}
        ipa-ramdisk:
          publish:
            glance:
              <<: *glance
              keep: 2
        """,
    )
    text = "name: i\nkind: ipa-ramdisk\narches: [x86_64]\nbuild:\n  release: bookworm\n"
    glance = RecipeLoader(workspace).load(write("recipes/i.yaml", text)).recipe.publish.glance
    assert (glance.visibility, glance.keep) == ("community", 2)
    assert glance.properties == {"hw_qemu_guest_agent": "yes"}


def test_error_below_an_explicit_key_next_to_a_merge_points_at_the_explicit_key(
    workspace: Workspace, write: Write
):
    write(
        "recipes/defaults.yaml",
        "guest-image: &shared\n  publish:\n    glance:\n      keep: 3\n"
        "ipa-ramdisk:\n  <<: *shared\n  publish:\n    glance:\n      keep: 0\n",
    )
    text = "name: i\nkind: ipa-ramdisk\narches: [x86_64]\nbuild:\n  release: bookworm\n"
    found = problems(workspace, write("recipes/i.yaml", text))
    assert [str(p) for p in found] == ["recipes/defaults.yaml:9:7: publish.glance.keep: must be >= 1 (got 0)"]
