"""Hostile paths: over-long names, symlink loops, recipe files that are symlinks out of the workspace,
symlinked directory loops: each a located refusal (or simply not followed), never an OSError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import InvalidInput, Location, Problem
from builder.recipes import RecipeLoader, discover
from builder.workspace import PathRefused, Workspace
from tests.support.recipes import MINIMAL_GUEST, Write

PACKER = MINIMAL_GUEST.replace("dib", "packer") + "  base: {recipe: g}\n  provisioners:\n    - script: REF\n"


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


def problems(workspace: Workspace, path: Path) -> list[Problem]:
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(path)
    return info.value.problems


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("a" * 300, "cannot be used: File name too long"),
        ("x/" * 2100 + "y", "cannot be used: File name too long"),  # over PATH_MAX
        ("loop.sh", "is a symlink loop"),
        ("loop-a.sh", "is a symlink loop"),
        ("fifo.sh", "is not a regular file"),
    ],
    ids=["name-over-255-bytes", "path-over-path-max", "self-loop", "two-link-loop", "fifo"],
)
def test_odd_file_references_are_located_refusals(
    workspace: Workspace, write: Write, reference: str, message: str
):
    folder = workspace.recipes_dir
    os.symlink("loop.sh", folder / "loop.sh")
    os.symlink("loop-b.sh", folder / "loop-a.sh")
    os.symlink("loop-a.sh", folder / "loop-b.sh")
    os.mkfifo(folder / "fifo.sh")
    found = problems(workspace, write("recipes/x.yaml", PACKER.replace("REF", reference)))
    assert len(found) == 1
    assert found[0].location == Location("recipes/x.yaml", 10, 7)
    assert found[0].key_path == ("build", "provisioners", 0, "script")
    assert found[0].message.endswith(message)
    assert len(found[0].message) < 400  # a long reference is shortened, not echoed whole


def test_resolve_reference_turns_os_errors_into_refusals(workspace: Workspace):
    with pytest.raises(PathRefused, match="File name too long"):
        workspace.resolve_reference("n" * 256, workspace.root)


def test_a_recipe_file_symlinked_to_a_file_outside_the_workspace_is_refused(
    workspace: Workspace, write: Write, tmp_path: Path
):
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(MINIMAL_GUEST)
    os.symlink(outside, workspace.recipes_dir / "x.yaml")
    assert [str(p) for p in problems(workspace, workspace.recipes_dir / "x.yaml")] == [
        f"recipes/x.yaml:1:1: a symlink to {outside}, outside the workspace ({workspace.root}); refused"
    ]


def test_a_recipe_symlinked_to_another_recipe_inside_the_workspace_is_accepted(
    workspace: Workspace, write: Write
):
    write("recipes/guest/g.yaml", MINIMAL_GUEST)
    os.symlink("guest/g.yaml", workspace.recipes_dir / "alias.yaml")
    assert RecipeLoader(workspace).load(workspace.recipes_dir / "alias.yaml").name == "g"


def test_a_defaults_file_symlinked_out_of_the_workspace_is_refused(
    workspace: Workspace, write: Write, tmp_path: Path
):
    (tmp_path / "defaults.yaml").write_text("guest-image: {description: from outside}\n")
    os.symlink(tmp_path / "defaults.yaml", workspace.recipes_dir / "defaults.yaml")
    found = problems(workspace, write("recipes/x.yaml", MINIMAL_GUEST))
    assert [p.message for p in found] == [
        f"a symlink to {tmp_path / 'defaults.yaml'}, outside the workspace ({workspace.root}); refused"
    ]


@pytest.mark.parametrize("target", ["x.yaml", "y.yaml"])
def test_a_recipe_symlink_loop_is_a_located_refusal(workspace: Workspace, target: str):
    os.symlink(target, workspace.recipes_dir / "x.yaml")
    if target == "y.yaml":
        os.symlink("x.yaml", workspace.recipes_dir / "y.yaml")
    files = discover([workspace.recipes_dir])
    assert "x.yaml" in [f.name for f in files]  # listed, so that the loop is reported, not skipped
    loaded, found = RecipeLoader(workspace).load_many(files)
    assert loaded == []
    assert {str(p) for p in found} >= {"recipes/x.yaml:1:1: cannot read: symlink loop"}


def test_a_directory_symlink_loop_is_not_followed(workspace: Workspace, write: Write):
    write("recipes/guest/g.yaml", MINIMAL_GUEST)
    os.symlink(".", workspace.recipes_dir / "guest" / "again")
    os.symlink("..", workspace.recipes_dir / "guest" / "up")
    assert discover([workspace.recipes_dir]) == [workspace.recipes_dir / "guest" / "g.yaml"]


def test_a_long_file_name_among_the_recipes_is_loaded(workspace: Workspace, write: Write):
    name = "n" * 250 + ".yaml"
    path = write(f"recipes/{name}", MINIMAL_GUEST)
    loaded, found = RecipeLoader(workspace).load_many(discover([workspace.recipes_dir]))
    assert (found, [r.path for r in loaded]) == ([], [path])


def test_a_recipe_below_a_path_longer_than_path_max_is_a_located_refusal(workspace: Workspace):
    fd = os.open(workspace.recipes_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(24):  # 24 x 201 bytes: over PATH_MAX (4096), made one level at a time
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("deep.yaml", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, MINIMAL_GUEST.encode())
        os.close(leaf)
    finally:
        os.close(fd)
    files = discover([workspace.recipes_dir])
    assert len(files) == 1
    loaded, found = RecipeLoader(workspace).load_many(files)
    assert loaded == []
    assert len(found) == 1 and found[0].message == "cannot read: File name too long"
    assert found[0].location is not None and found[0].location.line == 1
