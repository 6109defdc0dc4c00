"""The example recipes shipped in recipes/ are valid and expand to the targets later issues build."""

from __future__ import annotations

from builder.pipeline.graph import load_targets
from builder.workspace import PACKAGE_ROOT, Workspace


def test_every_example_recipe_validates_and_expands():
    workspace = Workspace(PACKAGE_ROOT)
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    kinds = {t.kind for t in targets}
    assert kinds == {"guest-image", "ipa-ramdisk", "rpm-rebuild", "container"}
    ids = {t.id for t in targets}
    assert "debian-12:bookworm:x86_64" in ids
    assert "debian-12:bookworm:ppc64le" in ids
    assert "kiln-hello:9:ppc64le" in ids


def test_packer_example_depends_on_the_dib_image_of_the_same_arch():
    workspace = Workspace(PACKAGE_ROOT)
    targets, _ = load_targets([workspace.recipes_dir], workspace)
    by_id = {t.id: t for t in targets}
    packer = by_id["debian-12-packer:bookworm:ppc64le"]
    assert packer.depends_on == ("debian-12:bookworm:ppc64le",)
