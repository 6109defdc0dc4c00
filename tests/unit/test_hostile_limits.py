"""Size limits: files checked before they are read (and only regular files), targets per recipe and
per run counted from the matrix before expansion, and the depth of build.base chains."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from builder import limits, recipes
from builder.errors import InvalidInput, Location
from builder.recipes import RecipeLoader
from builder.workspace import Workspace
from builder.yamlsource import load_file
from tests.support.recipes import MINIMAL_GUEST, Write


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)


def test_the_limits_are_named_in_one_place():
    assert (limits.MAX_FILE_BYTES, limits.MAX_NODES, limits.MAX_DEPTH) == (1 << 20, 20_000, 64)
    assert (limits.MAX_EXTENDS_DEPTH, limits.MAX_BASE_DEPTH) == (8, 16)
    assert (limits.MAX_TARGETS_PER_RECIPE, limits.MAX_TARGETS_PER_WORKSPACE) == (1_000, 100_000)
    assert limits.MAX_PROBLEMS_PER_FILE == 100


def test_problems_of_one_file_are_capped(workspace: Workspace, write: Write):
    path = write("recipes/x.yaml", MINIMAL_GUEST + "  packages: [" + ", ".join(["'bad name'"] * 500) + "]\n")
    loaded, problems = RecipeLoader(workspace).load_many([path])
    assert loaded == []
    assert len(problems) == limits.MAX_PROBLEMS_PER_FILE + 1
    assert problems[-1].message == "... and 400 more problems in this file"
    assert problems[-1].location == problems[-2].location


# --- files -----------------------------------------------------------------------------------------


def test_dev_zero_is_refused_without_reading_it():
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"/dev/zero:1:1: not a regular file \(a device, FIFO or socket\)"):
        load_file(Path("/dev/zero"))
    assert time.monotonic() - started < 1


def test_a_fifo_is_refused_at_once_even_with_no_writer(workspace: Workspace):
    fifo = workspace.recipes_dir / "x.yaml"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def load() -> None:
        try:
            RecipeLoader(workspace).load(fifo)
        except InvalidInput as exc:
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # unblock it, then fail
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("loading a FIFO blocked")
    assert [str(e) for e in outcome] == [
        "recipes/x.yaml:1:1: not a regular file (a device, FIFO or socket); refused"
    ]


def test_a_directory_named_like_a_recipe_is_refused(workspace: Workspace):
    (workspace.recipes_dir / "x.yaml").mkdir()
    with pytest.raises(
        InvalidInput, match=r"recipes/x.yaml:1:1: not a regular file \(a directory\); refused"
    ):
        load_file(workspace.recipes_dir / "x.yaml")


def test_a_huge_file_is_refused_before_it_is_read(workspace: Workspace):
    path = workspace.recipes_dir / "x.yaml"
    with path.open("wb") as stream:  # sparse: 8 GiB that reading would take a while to refuse
        stream.truncate(8 << 30)
    started = time.monotonic()
    with pytest.raises(
        InvalidInput, match=f"recipes/x.yaml:1:1: file is larger than {limits.MAX_FILE_BYTES} bytes"
    ):
        load_file(path)
    assert time.monotonic() - started < 1


# --- targets -----------------------------------------------------------------------------------------


def matrix_recipe(releases: int, variants: int, arches: str = "[x86_64]") -> str:
    text = MINIMAL_GUEST.replace("arches: [x86_64]", f"arches: {arches}") + "matrix:\n"
    if releases:
        text += "  releases: [" + ", ".join(f"r{i}" for i in range(releases)) + "]\n"
    if variants:
        text += "  variants:\n" + "".join(f"    v{i}: {{}}\n" for i in range(variants))
    return text


def test_a_thousand_releases_by_a_thousand_variants_is_refused_at_load_time(
    workspace: Workspace, write: Write
):
    path = write("recipes/x.yaml", matrix_recipe(1000, 1000))
    started = time.monotonic()
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(path)
    assert time.monotonic() - started < 10
    assert [str(p) for p in info.value.problems] == [
        "recipes/x.yaml:8:1: matrix: 1000000 targets (arches x releases x variants: 1 x 1000 x 1000); "
        "more than 1000 per recipe are refused"
    ]


def test_arches_count_towards_the_targets_of_a_recipe(workspace: Workspace, write: Write):
    path = write("recipes/x.yaml", matrix_recipe(501, 0, arches="[x86_64, ppc64le]"))
    with pytest.raises(InvalidInput, match=r"1002 targets \(arches x releases x variants: 2 x 501 x 1\)"):
        RecipeLoader(workspace).load(path)


def test_a_recipe_at_the_target_limit_is_accepted(workspace: Workspace, write: Write):
    loaded = RecipeLoader(workspace).load(write("recipes/x.yaml", matrix_recipe(500, 2, arches="[x86_64]")))
    assert len(loaded.recipe.matrix.releases) * len(loaded.variant_builds) == 1000


def test_targets_of_a_whole_run_are_limited(
    workspace: Workspace, write: Write, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(recipes, "MAX_TARGETS_PER_WORKSPACE", 25)
    paths = [
        write(f"recipes/r{i}.yaml", matrix_recipe(10, 0).replace("name: g", f"name: g{i}")) for i in range(4)
    ]
    loaded, problems = RecipeLoader(workspace).load_many(paths)
    assert [r.name for r in loaded] == ["g0", "g1"]
    assert [str(p) for p in problems] == [
        "recipes/r2.yaml:1:1: with this recipe, over 25 targets in one run; refused"
    ]


# --- build.base depth --------------------------------------------------------------------------------

PACKER_ON = """\
name: p{i}
kind: guest-image
arches: [x86_64]
build:
  builder: packer
  distro: debian
  release: bookworm
  base: {{recipe: {base}}}
"""


def base_chain(write: Write, length: int) -> None:
    write("recipes/p0.yaml", MINIMAL_GUEST.replace("name: g", "name: p0"))
    for i in range(1, length):
        write(f"recipes/p{i:04d}.yaml", PACKER_ON.format(i=i, base=f"p{i - 1}"))


def test_a_long_build_base_chain_is_refused_where_it_passes_the_limit(workspace: Workspace, write: Write):
    base_chain(write, 20)
    files = recipes.discover([workspace.recipes_dir])
    loaded, problems = RecipeLoader(workspace).load_many(files)
    assert len(loaded) == limits.MAX_BASE_DEPTH + 1  # p0 .. p16
    assert [str(p) for p in problems] == [
        f"recipes/p{i:04d}.yaml:8:10: build.base.recipe: builds on a chain of {i} base recipes "
        f"(p{i} -> p{i - 1} -> p{i - 2} -> p{i - 3} -> ...); more than 16 levels of build.base are refused"
        for i in range(17, 20)
    ]


def test_a_chain_of_1200_base_recipes_is_a_clean_refusal(workspace: Workspace, write: Write):
    from builder.cli import main

    base_chain(write, 1200)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--root", str(workspace.root), "validate", "--json"])
    assert code == 1
    problems = json.loads(out.getvalue())["problems"]
    assert len(problems) == 1200 - 1 - limits.MAX_BASE_DEPTH
    assert all(p["key"] == "build.base.recipe" and p["line"] == 8 and not p.get("internal") for p in problems)


def test_extends_deeper_than_the_limit_is_refused(workspace: Workspace, write: Write):
    write("recipes/_b0.yaml", MINIMAL_GUEST)
    for i in range(1, 12):
        write(f"recipes/_b{i}.yaml", f"extends: _b{i - 1}.yaml\n")
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(workspace.recipes_dir / "_b11.yaml")
    (problem,) = info.value.problems
    assert problem.message == f"more than {limits.MAX_EXTENDS_DEPTH} levels of extends"
    assert problem.location == Location("recipes/_b3.yaml", 1, 1)
