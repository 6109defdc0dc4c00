"""The container backend's pure parts: the base image Kiln writes from a rootfs, and the engine tags."""

from __future__ import annotations

import json
import tarfile

from builder.arch import Arch
from builder.backends.container import local_tag, write_docker_archive


def _rootfs(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=debian\n")
    (root / "dev").mkdir()
    (root / "dev" / "null").write_text("")  # what debootstrap makes; the engine provides /dev
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / ".kiln-root-ready").write_text("{}")
    return root


def test_the_base_image_names_the_targets_architecture_and_is_the_same_for_the_same_rootfs(tmp_path):
    root = _rootfs(tmp_path)
    first = write_docker_archive(root, Arch.PPC64LE, "kiln-base/debian:x", tmp_path / "a.tar")
    second = write_docker_archive(root, Arch.PPC64LE, "kiln-base/debian:x", tmp_path / "b.tar")
    assert first == second  # same rootfs, same image id: a warm build finds it
    with tarfile.open(tmp_path / "a.tar") as archive:
        [manifest] = json.load(archive.extractfile("manifest.json"))
        config = json.load(archive.extractfile(manifest["Config"]))
        with tarfile.open(fileobj=archive.extractfile(manifest["Layers"][0])) as layer:
            names = set(layer.getnames())
    assert config["architecture"] == "ppc64le" and config["os"] == "linux"
    assert manifest["RepoTags"] == ["kiln-base/debian:x"]
    assert {"etc/os-release", "dev", "bin", "usr/bin"} <= names
    assert "dev/null" not in names and ".kiln-root-ready" not in names
    assert other_arch_differs(root, tmp_path, first)


def other_arch_differs(root, tmp_path, ppc64le_id: str) -> bool:
    return write_docker_archive(root, Arch.X86_64, "kiln-base/debian:x", tmp_path / "c.tar") != ppc64le_id


def test_engine_tags_name_recipe_arch_and_digest():
    assert local_tag("cuda-runtime", Arch.PPC64LE, "ab" * 32) == "kiln-build/cuda-runtime:ppc64le-" + "ab" * 8
