"""Precedence of recipes/defaults.yaml, ``extends`` bases and the recipe; discovery; duplicate names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from builder.errors import InvalidInput, Location
from builder.recipes import RecipeLoader, discover, is_recipe_file
from builder.workspace import Workspace

Write = Callable[[str, str], Path]

DEFAULTS = """\
guest-image:
  arches: [x86_64, ppc64le]
  verify:
    boot:
      timeout_s: 600
      memory_mb: 2048
  publish:
    glance:
      visibility: private
      keep: 3
      properties: {os_distro: debian, hw_rng_model: virtio}
container:
  arches: [x86_64, ppc64le]
"""
BASE = """\
kind: guest-image
build:
  builder: dib
  distro: debian
  release: bookworm
  packages: [curl, vim]
  env: {DIB_A: base-a, DIB_B: base-b}
verify:
  boot:
    timeout_s: 1200
publish:
  glance:
    keep: 5
    properties: {os_version: "12"}
"""
CONTAINER = "name: {name}\nkind: container\narches: [x86_64]\nbuild:\n  release: bookworm\n"


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


@pytest.fixture
def layered(write: Write) -> Callable[[str], Path]:
    """defaults.yaml + recipes/bases/_debian.yaml; returns a writer for a recipe extending the base."""
    write("recipes/defaults.yaml", DEFAULTS)
    write("recipes/bases/_debian.yaml", BASE)
    return lambda text: write("recipes/guest/x.yaml", "extends: ../bases/_debian.yaml\nname: x\n" + text)


def load(workspace: Workspace, path: Path):
    return RecipeLoader(workspace).load(path)


# --- precedence ----------------------------------------------------------------------------------


def test_recipe_beats_base_beats_defaults(workspace: Workspace, layered):
    recipe = load(workspace, layered("publish:\n  glance:\n    visibility: public\n")).recipe
    assert recipe.publish.glance.visibility == "public"  # recipe over defaults
    assert recipe.publish.glance.keep == 5  # base over defaults
    assert recipe.verify.boot.timeout_s == 1200  # base over defaults
    assert recipe.verify.boot.memory_mb == 2048  # defaults only
    assert recipe.arches == ["x86_64", "ppc64le"]  # defaults only


def test_recipe_value_wins_when_all_three_layers_set_it(workspace: Workspace, layered):
    recipe = load(workspace, layered("verify:\n  boot:\n    timeout_s: 300\n")).recipe
    assert recipe.verify.boot.timeout_s == 300


def test_every_merged_key_remembers_the_file_it_came_from(workspace: Workspace, layered):
    doc = load(workspace, layered("publish:\n  glance:\n    visibility: public\n")).doc
    assert doc.locate(("publish", "glance", "visibility")) == Location("recipes/guest/x.yaml", 5, 5)
    assert doc.locate(("publish", "glance", "keep")) == Location("recipes/bases/_debian.yaml", 13, 5)
    assert doc.locate(("verify", "boot", "memory_mb")) == Location("recipes/defaults.yaml", 6, 7)
    assert doc.locate(("arches",)) == Location("recipes/defaults.yaml", 2, 3)


def test_mappings_merge_key_by_key_across_all_layers(workspace: Workspace, layered):
    text = (
        "publish:\n  glance:\n    properties: {os_distro: ubuntu}\nbuild:\n  env: {DIB_B: mine, DIB_C: c}\n"
    )
    recipe = load(workspace, layered(text)).recipe
    assert recipe.publish.glance.properties == {
        "os_distro": "ubuntu",  # recipe over defaults
        "hw_rng_model": "virtio",  # defaults
        "os_version": "12",  # base
    }
    assert recipe.build.env == {"DIB_A": "base-a", "DIB_B": "mine", "DIB_C": "c"}


def test_lists_replace_instead_of_concatenating(workspace: Workspace, layered):
    recipe = load(workspace, layered("arches: [ppc64le]\nbuild:\n  packages: [htop]\n")).recipe
    assert recipe.arches == ["ppc64le"]
    assert recipe.build.packages == ["htop"]


def test_an_empty_list_replaces_a_non_empty_one(workspace: Workspace, layered):
    assert load(workspace, layered("build:\n  packages: []\n")).recipe.build.packages == []


def test_null_replaces_an_inherited_mapping(workspace: Workspace, layered):
    assert load(workspace, layered("publish:\n  glance: null\n")).recipe.publish.glance is None


def test_multi_level_extends_applies_nearest_base_last(workspace: Workspace, write: Write):
    write("recipes/_root.yaml", BASE)
    write(
        "recipes/_mid.yaml", "extends: _root.yaml\narches: [x86_64]\nverify:\n  boot:\n    timeout_s: 1800\n"
    )
    path = write("recipes/x.yaml", "extends: _mid.yaml\nname: x\nbuild:\n  packages: [htop]\n")
    recipe = load(workspace, path).recipe
    assert recipe.verify.boot.timeout_s == 1800  # mid over root
    assert recipe.build.packages == ["htop"]  # recipe over root
    assert recipe.build.env == {"DIB_A": "base-a", "DIB_B": "base-b"}  # root
    assert recipe.arches == ["x86_64"]


def test_extends_is_resolved_relative_to_the_recipe_file(workspace: Workspace, write: Write):
    write("recipes/guest/_base.yaml", BASE + "arches: [x86_64]\n")
    write("recipes/_base.yaml", "kind: container\n")  # a decoy at the recipes root
    recipe = load(workspace, write("recipes/guest/x.yaml", "extends: _base.yaml\nname: x\n")).recipe
    assert recipe.kind == "guest-image"


def test_defaults_apply_only_to_their_own_kind(workspace: Workspace, write: Write):
    write("recipes/defaults.yaml", DEFAULTS)
    path = write("recipes/c.yaml", "name: c\nkind: container\nbuild:\n  release: bookworm\n")
    # guest-image's verify.boot and publish.glance would be unknown keys for a container
    recipe = load(workspace, path).recipe
    assert recipe.arches == ["x86_64", "ppc64le"]  # the container section
    assert recipe.verify.model_dump() == {"commands": [], "nvcc": False}


def test_recipes_load_without_a_defaults_file(workspace: Workspace, write: Write):
    path = write("recipes/x.yaml", "extends: bases/_debian.yaml\nname: x\narches: [x86_64]\n")
    write("recipes/bases/_debian.yaml", BASE)
    recipe = load(workspace, path).recipe
    assert recipe.publish.glance.visibility == "private"  # the model's default
    assert recipe.verify.boot.memory_mb == 1024


def test_a_shared_base_is_not_changed_by_the_recipes_that_extend_it(workspace: Workspace, write: Write):
    write("recipes/_base.yaml", BASE + "arches: [x86_64]\n")
    first = write("recipes/a.yaml", "extends: _base.yaml\nname: a\nbuild:\n  env: {DIB_A: changed}\n")
    second = write("recipes/b.yaml", "extends: _base.yaml\nname: b\n")
    loader = RecipeLoader(workspace)
    assert loader.load(first).recipe.build.env["DIB_A"] == "changed"
    assert loader.load(second).recipe.build.env == {"DIB_A": "base-a", "DIB_B": "base-b"}
    assert loader.load(first).recipe.build.env["DIB_B"] == "base-b"


def test_defaults_that_are_not_a_mapping_are_refused(workspace: Workspace, write: Write):
    write("recipes/defaults.yaml", "- guest-image\n")
    with pytest.raises(InvalidInput) as info:
        load(workspace, write("recipes/x.yaml", CONTAINER.format(name="x")))
    assert str(info.value) == "recipes/defaults.yaml:1:1: defaults must map a kind to its default keys"


# --- discovery -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("debian.yaml", True),
        ("debian.yml", True),
        ("defaults.yaml", False),
        ("_partial.yaml", False),
        ("_partial.yml", False),
        ("notes.md", False),
        ("debian.yaml.bak", False),
    ],
)
def test_is_recipe_file(name, expected):
    assert is_recipe_file(Path("recipes") / name) is expected


def test_discover_skips_partials_and_defaults_and_sorts(workspace: Workspace, write: Write):
    for rel in [
        "recipes/defaults.yaml",
        "recipes/_partial.yaml",
        "recipes/guest/_shared.yaml",
        "recipes/guest/b.yaml",
        "recipes/guest/a.yml",
        "recipes/rpm/z.yaml",
        "recipes/README.md",
        "recipes/a.yaml",
    ]:
        write(rel, "kind: container\n")
    found = [p.relative_to(workspace.root).as_posix() for p in discover([workspace.recipes_dir])]
    assert found == ["recipes/a.yaml", "recipes/guest/a.yml", "recipes/guest/b.yaml", "recipes/rpm/z.yaml"]


def test_discover_keeps_files_named_directly_and_in_the_given_order(workspace: Workspace, write: Write):
    b = write("recipes/b.yaml", "kind: container\n")
    a = write("recipes/a.yaml", "kind: container\n")
    assert discover([b, a]) == [b, a]


def test_discover_refuses_a_missing_path(workspace: Workspace):
    with pytest.raises(InvalidInput, match=r"no such recipe file or directory: .*nope\.yaml"):
        discover([workspace.recipes_dir / "nope.yaml"])


# --- load_many ---------------------------------------------------------------------------------


def test_duplicate_recipe_names_are_reported_naming_both_files(workspace: Workspace, write: Write):
    write("recipes/containers/one.yaml", CONTAINER.format(name="same"))
    write("recipes/other/two.yaml", "# a comment\n" + CONTAINER.format(name="same"))
    loaded, problems = RecipeLoader(workspace).load_many(discover([workspace.recipes_dir]))
    assert [r.rel_path for r in loaded] == ["recipes/containers/one.yaml"]
    assert [str(p) for p in problems] == [
        "recipes/other/two.yaml:2:1: name: recipe name 'same' is also used by recipes/containers/one.yaml"
    ]


def test_load_many_collects_problems_from_every_file_and_keeps_the_good_ones(
    workspace: Workspace, write: Write
):
    write("recipes/a.yaml", CONTAINER.format(name="a") + "  cuda: 12\n")
    write("recipes/b.yaml", CONTAINER.format(name="b"))
    write("recipes/c.yaml", CONTAINER.format(name="c").replace("kind: container", "kind: contaner"))
    loaded, problems = RecipeLoader(workspace).load_many(discover([workspace.recipes_dir]))
    assert [r.name for r in loaded] == ["b"]
    assert [(p.location.file, p.key_path) for p in problems if p.location] == [
        ("recipes/a.yaml", ("build", "cuda")),
        ("recipes/c.yaml", ("kind",)),
    ]
