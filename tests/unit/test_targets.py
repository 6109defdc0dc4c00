"""Expansion into targets, and the input digest: stable where it must be, sensitive where it must be."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.errors import InvalidInput
from builder.pipeline.graph import load_targets
from builder.workspace import Workspace

GUEST = """
# a comment
name: guest
kind: guest-image
arches: [x86_64, ppc64el]
matrix:
  releases: [bookworm, trixie]
  variants:
    minimal: {}
    cloud:
      packages: [cloud-init]
build:
  builder: dib
  distro: debian
  release: bookworm
  elements: [vm]
  packages: [openssh-server]
"""


def _targets(workspace: Workspace):
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    return {t.id: t for t in targets}


def test_expansion_is_arch_times_release_times_variant(workspace, write):
    write("recipes/guest.yaml", GUEST)
    targets = _targets(workspace)
    assert len(targets) == 2 * 2 * 2
    cloud = targets["guest:trixie+cloud:ppc64le"]
    assert cloud.arch is Arch.PPC64LE
    assert cloud.release == "trixie"
    assert cloud.build.release == "trixie"
    assert cloud.build.packages == ["cloud-init"]  # the variant's list replaces build's
    assert targets["guest:bookworm+minimal:x86_64"].build.packages == ["openssh-server"]
    assert cloud.slug == "guest_trixie_cloud_ppc64le"


def test_dib_targets_carry_distro_recipe_and_kiln_elements(workspace, write):
    write("recipes/guest.yaml", GUEST)
    target = _targets(workspace)["guest:bookworm+minimal:x86_64"]
    assert target.elements == ("debian-minimal", "vm", "kiln-extra-ca")
    assert "elements/kiln-extra-ca/install.d/05-kiln-extra-ca" in target.inputs


def test_every_target_has_a_distinct_digest(workspace, write):
    write("recipes/guest.yaml", GUEST)
    digests = [t.digest for t in _targets(workspace).values()]
    assert len(set(digests)) == len(digests)


def test_digest_ignores_comments_key_order_and_spelling_of_arches(workspace, write):
    write("recipes/guest.yaml", GUEST)
    before = {k: t.digest for k, t in _targets(workspace).items()}
    reordered = """
    build:
      packages: [openssh-server]   # comment moved and keys reordered
      elements: [vm]
      release: bookworm
      distro: debian
      builder: dib
    kind: guest-image
    name: guest
    arches: [amd64, ppc64le]
    matrix:
      variants:
        cloud: {packages: [cloud-init]}
        minimal: {}
      releases: [bookworm, trixie]
    """
    write("recipes/guest.yaml", reordered)
    after = {k: t.digest for k, t in _targets(workspace).items()}
    assert after == before


def test_digest_is_the_same_in_another_checkout(workspace, write, tmp_path):
    write("recipes/guest.yaml", GUEST)
    before = {k: t.digest for k, t in _targets(workspace).items()}
    other_root = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(workspace.root, other_root)
    after = {k: t.digest for k, t in _targets(Workspace(other_root)).items()}
    assert after == before


@pytest.mark.parametrize(
    "edit",
    [
        ("templates/dib/environment.j2", "# one more comment line\n"),
        ("elements/kiln-extra-ca/install.d/05-kiln-extra-ca", "# changed\n"),
    ],
)
def test_digest_changes_when_a_used_template_or_element_changes(workspace, write, edit):
    write("recipes/guest.yaml", GUEST)
    before = _targets(workspace)["guest:bookworm+minimal:x86_64"].digest
    path = workspace.root / edit[0]
    path.write_text(path.read_text() + edit[1])
    assert _targets(workspace)["guest:bookworm+minimal:x86_64"].digest != before


def test_digest_changes_when_an_elements_file_becomes_executable(workspace, write):
    write("recipes/guest.yaml", GUEST)
    before = _targets(workspace)["guest:bookworm+minimal:x86_64"].digest
    (workspace.root / "elements/kiln-extra-ca/README.rst").chmod(0o755)
    assert _targets(workspace)["guest:bookworm+minimal:x86_64"].digest != before


def test_digest_ignores_templates_the_target_does_not_use(workspace, write):
    write("recipes/guest.yaml", GUEST)
    before = _targets(workspace)["guest:bookworm+minimal:x86_64"].digest
    dockerfile = workspace.root / "templates/containers/Dockerfile.debian.j2"
    dockerfile.write_text(dockerfile.read_text() + "# unrelated\n")
    assert _targets(workspace)["guest:bookworm+minimal:x86_64"].digest == before


def test_digest_changes_when_an_included_template_changes(workspace, write):
    write(
        "recipes/c.yaml",
        """
        name: c
        kind: container
        arches: [x86_64]
        build: {release: bookworm, packages: [curl]}
        """,
    )
    before = _targets(workspace)["c:bookworm:x86_64"]
    assert "templates/containers/_apt.j2" in before.inputs
    included = workspace.root / "templates/containers/_apt.j2"
    included.write_text(included.read_text() + "{# changed #}\n")
    assert _targets(workspace)["c:bookworm:x86_64"].digest != before.digest


def test_digest_changes_when_a_referenced_file_changes(workspace, write):
    write("files/a.patch", "--- a\n+++ b\n")
    write("files/pkg.src.rpm", "not really an rpm")
    write(
        "recipes/rpm.yaml",
        """
        name: r
        kind: rpm-rebuild
        arches: [ppc64le]
        build:
          release: "9"
          source: {path: ../files/pkg.src.rpm}
          patches: [../files/a.patch]
        """,
    )
    target = _targets(workspace)["r:9:ppc64le"]
    assert {"files/a.patch", "files/pkg.src.rpm"} <= set(target.inputs)
    (workspace.root / "files/a.patch").write_text("--- a\n+++ c\n")
    assert _targets(workspace)["r:9:ppc64le"].digest != target.digest


def test_digest_changes_with_a_build_setting_but_not_with_publish_settings(workspace, write):
    write("recipes/guest.yaml", GUEST)
    before = _targets(workspace)["guest:bookworm+minimal:x86_64"].digest
    write("recipes/guest.yaml", GUEST + "publish:\n  glance:\n    visibility: public\n")
    assert _targets(workspace)["guest:bookworm+minimal:x86_64"].digest == before
    write("recipes/guest.yaml", GUEST.replace("[openssh-server]", "[openssh-server, curl]"))
    assert _targets(workspace)["guest:bookworm+minimal:x86_64"].digest != before


PACKER = """
name: layered
kind: guest-image
arches: [x86_64]
build:
  builder: packer
  distro: debian
  release: bookworm
  base: {recipe: base}
  provisioners:
    - shell: ["true"]
"""
BASE = """
name: base
kind: guest-image
arches: [x86_64]
build: {builder: dib, distro: debian, release: bookworm}
"""


def test_packer_target_depends_on_its_base_and_inherits_its_digest(workspace, write):
    write("recipes/base.yaml", BASE)
    write("recipes/layered.yaml", PACKER)
    layered = _targets(workspace)["layered:bookworm:x86_64"]
    assert layered.depends_on == ("base:bookworm:x86_64",)
    write("recipes/base.yaml", BASE.replace("release: bookworm}", "release: bookworm, packages: [vim]}"))
    assert _targets(workspace)["layered:bookworm:x86_64"].digest != layered.digest


def test_planning_one_recipe_loads_its_base_from_the_workspace(workspace, write):
    write("recipes/base.yaml", BASE)
    layered_path = write("recipes/layered.yaml", PACKER)
    targets, problems = load_targets([layered_path], workspace)
    assert problems == []
    assert [t.id for t in targets] == ["layered:bookworm:x86_64"]
    assert targets[0].depends_on == ("base:bookworm:x86_64",)


def test_missing_base_recipe_is_a_located_error(workspace, write, monkeypatch):
    monkeypatch.chdir(workspace.root)
    write("recipes/layered.yaml", PACKER)
    _, problems = load_targets([workspace.recipes_dir], workspace)
    assert len(problems) == 1
    assert str(problems[0]).startswith(
        "recipes/layered.yaml:8:10: build.base.recipe: no target of recipe 'base'"
    )


def test_capability_refusal_names_the_arch_and_the_key(workspace, write, monkeypatch):
    monkeypatch.chdir(workspace.root)
    write(
        "recipes/cuda.yaml",
        """
        name: cuda
        kind: container
        arches: [x86_64, ppc64le]
        build:
          distro: ubuntu
          release: noble
          cuda: "12.8"
        """,
    )
    _, problems = load_targets([workspace.recipes_dir], workspace)
    assert [str(p) for p in problems] == [
        "recipes/cuda.yaml:7:3: build.cuda: cannot build for ppc64le (target cuda:noble:ppc64le): "
        "NVIDIA dropped ppc64le after CUDA 12.4; use 12.4 or older for ppc64le"
    ]


def test_load_targets_reports_problems_of_every_file(workspace, write):
    write("recipes/a.yaml", "name: a\nkind: nope\n")
    write("recipes/b.yaml", "name: b\nkind: container\narches: [x86_64]\n")
    write("recipes/ok.yaml", BASE)
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert targets == [] or all(t.recipe == "base" for t in targets)
    files = sorted({p.location.file for p in problems if p.location})
    assert [Path(f).name for f in files] == ["a.yaml", "b.yaml"]


def test_invalid_input_lists_every_problem_in_its_message(workspace, write):
    write("recipes/a.yaml", "name: A\nkind: container\narches: []\nbuild: {release: bookworm}\n")
    from builder.recipes import RecipeLoader

    with pytest.raises(InvalidInput) as caught:
        RecipeLoader(workspace).load(workspace.recipes_dir / "a.yaml")
    keys = [p.key_path for p in caught.value.problems]
    assert ("name",) in keys and ("arches",) in keys
