"""The container backend's pure parts: the base image Kiln writes from a rootfs, and the engine tags."""

from __future__ import annotations

import json
import shutil
import tarfile

from builder.arch import Arch
from builder.backends.container import local_tag, write_docker_archive
from builder.cli import main
from builder.pipeline.build import default_build_root
from builder.workspace import PACKAGE_ROOT, Workspace


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


def test_an_nvidia_repository_is_signed_by_its_key_and_named_per_arch(tmp_path, capsys):
    for folder in ("templates", "elements"):
        shutil.copytree(PACKAGE_ROOT / folder, tmp_path / folder)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "nvidia.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "c.yaml").write_text(
        "name: cuda-nv\nkind: container\narches: [x86_64, ppc64le]\nbuild:\n  distro: ubuntu\n"
        "  release: focal\n  cuda: '12.2'\n  cuda_packages: [cuda-cudart-12-2]\n  apt_repositories:\n"
        "    - uri: 'https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2004/{nvidia_arch}/'\n"
        "      key: ../files/nvidia.asc\n"
    )
    assert main(["--root", str(tmp_path), "render", "-o", str(tmp_path / "out")]) == 0
    ppc = (tmp_path / "out" / "cuda-nv_focal_ppc64le" / "Dockerfile").read_text()
    amd = (tmp_path / "out" / "cuda-nv_focal_x86_64" / "Dockerfile").read_text()
    line = "deb [signed-by=/etc/apt/keyrings/kiln/0.asc] https://developer.download.nvidia.com/compute/cuda/repos"
    assert f"'{line}/ubuntu2004/ppc64el/ /'" in ppc and f"'{line}/ubuntu2004/x86_64/ /'" in amd
    assert "COPY apt-keys/ /etc/apt/keyrings/kiln/" in ppc
    capsys.readouterr()
    argv = [
        "--root",
        str(tmp_path),
        "--ledger",
        str(tmp_path / "l.sqlite"),
        "build",
        "cuda-nv",
        "--arch",
        "ppc64le",
    ]
    assert main([*argv, "--dry-run", "--json"]) == 0
    [target] = json.loads(capsys.readouterr().out)["targets"]
    assert target["plan"]["copies"] == [
        [
            str(tmp_path / "files" / "nvidia.asc"),
            str(default_build_root(Workspace(tmp_path)) / "cuda-nv_focal_ppc64le/render/apt-keys/0.asc"),
        ]
    ]
