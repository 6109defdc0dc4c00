"""Packer guests' SBOMs: the rendered template's last provisioners list the guest's packages and
download the list into the build's output directory; the backend and attest make the SPDX SBOM
from it with the parser every other builder's list goes through (no real Packer run here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder.arch import Arch
from builder.backends.packer import PackerBackend
from builder.core.kind import BuildJob, HostFacts, Target
from builder.errors import CommandFailed
from builder.host.run import Runner, RunResult
from builder.manifest import BuildManifest
from builder.pipeline.attest import attest
from builder.pipeline.graph import load_targets
from builder.render import render_target
from builder.sbom import packages_of, read_sbom
from builder.siteconfig import SiteConfig
from builder.workspace import PACKAGE_ROOT, Workspace

# What the template's dpkg-query line leaves in a Debian guest (installed packages only).
GUEST_PACKAGES = "openssh-server\t1:9.2p1-2+deb12u3\nbash\t5.2.15-2+b7\nlibc6:amd64\t2.36-9+deb12u9\n"

FEDORA_ISO = """
name: fedora-from-iso
kind: guest-image
arches: [x86_64]
build:
  builder: packer
  distro: fedora
  release: "40"
  iso:
    url: http://127.0.0.1:8000/fedora.iso
    checksum: none
  provisioners:
    - shell: ["true"]
"""


def _example(target_id: str) -> Target:
    workspace = Workspace(PACKAGE_ROOT)
    targets, problems = load_targets([workspace.recipes_dir / "guest"], workspace)
    assert problems == []
    return {t.id: t for t in targets}[target_id]


def _hcl(target: Target, templates_dir: Path = PACKAGE_ROOT / "templates") -> str:
    [hcl] = [f.content.decode() for f in render_target(target, templates_dir) if f.path == "image.pkr.hcl"]
    return hcl


def _provisioners(hcl: str) -> list[str]:
    """The build block's provisioner blocks, in order (Kiln's template never nests braces in them)."""
    return re.findall(r'^  provisioner "\w+" \{\n.*?^  \}$', hcl, flags=re.M | re.S)


def _job(target: Target, tmp_path: Path) -> BuildJob:
    slug_dir = tmp_path / "build" / target.slug
    render_dir = slug_dir / "render"
    for item in render_target(target, PACKAGE_ROOT / "templates"):
        (render_dir / item.path).parent.mkdir(parents=True, exist_ok=True)
        (render_dir / item.path).write_bytes(item.content)
    base_image = tmp_path / "base.qcow2"
    base_image.write_bytes(b"QFI\xfb")
    return BuildJob(
        target=target,
        rendered={},
        render_dir=render_dir,
        out_dir=slug_dir / "out",
        tmp_dir=slug_dir / "tmp",
        build_root=tmp_path / "build",
        workspace_root=PACKAGE_ROOT,
        elements_dir=PACKAGE_ROOT / "elements",
        cache_dir=tmp_path / "cache",
        site=SiteConfig(),
        host=HostFacts(arch=Arch.X86_64, placement="native", accelerator="tcg"),
        dependencies={dependency: base_image for dependency in target.depends_on},
    )


@dataclass
class FakePacker(Runner):
    """Plays ssh-keygen and `packer build`: writes the image Packer would, and performs the rendered
    template's download provisioners with the run's -var values, as Packer's ``file`` provisioner would."""

    guest_packages: str | None = None  # what the guest's listing wrote; None: it downloaded nothing

    def run(self, argv: Any, **kwargs: Any) -> RunResult:
        args = [str(a) for a in argv]
        if args[0] == "ssh-keygen":
            key = Path(args[args.index("-f") + 1])
            key.write_text("private\n")
            key.with_suffix(".pub").write_text("ssh-ed25519 AAAA kiln-test\n")
        elif args[0] == "packer":
            variables = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-var")
            hcl = (Path(kwargs["cwd"]) / args[-1]).read_text()
            vm_name = re.search(r'vm_name\s*=\s*"([^"]+)"', hcl).group(1)  # type: ignore[union-attr]
            Path(variables["output_dir"]).mkdir(parents=True)
            (Path(variables["output_dir"]) / vm_name).write_bytes(b"QFI\xfb packer")
            for block in _provisioners(hcl):
                if 'direction   = "download"' in block and self.guest_packages is not None:
                    destination = re.search(r'destination = "\$\{var\.(\w+)\}/([\w.]+)"', block)
                    assert destination, block
                    Path(variables[destination.group(1)], destination.group(2)).write_text(
                        self.guest_packages
                    )
        return RunResult(tuple(args), 0, 0.0, (), kwargs.get("log_path"))


def test_the_template_lists_the_guests_packages_after_the_recipes_provisioners_and_downloads_them():
    target = _example("debian-12-packer:bookworm:x86_64")
    steps = _provisioners(_hcl(target))
    recipe_steps, listing, download, cleanup = steps[:-3], steps[-3], steps[-2], steps[-1]
    assert len(recipe_steps) == len(target.build.provisioners) == 2
    assert "dpkg-query -W -f='$${db:Status-Status}\\\\t$${binary:Package}\\\\t$${Version}\\\\n'" in listing
    assert "sed -n 's/^installed\\\\t//p' /tmp/kiln-dpkg-status > /tmp/kiln-packages.list" in listing
    assert 'direction   = "download"' in download and 'source      = "/tmp/kiln-packages.list"' in download
    assert 'destination = "${var.package_list_dir}/packages.dpkg"' in download
    assert "rm -f /tmp/kiln-packages.list" in cleanup  # the image does not carry the list


def test_the_download_lands_in_the_builds_output_directory(tmp_path):
    target = _example("debian-12-packer:bookworm:x86_64")
    job = _job(target, tmp_path)
    build = PackerBackend().plan(job).commands[-1]
    variables = dict(a.split("=", 1) for a in build.argv if "=" in a)
    assert variables["package_list_dir"] == str(job.out_dir)
    assert Path(variables["output_dir"]).parent == job.out_dir  # beside Packer's own output directory


def test_an_rpm_guest_lists_its_packages_with_rpm_qa_and_hcl_escapes_the_query_format(workspace, write):
    write("recipes/fedora.yaml", FEDORA_ISO)
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    [listing, download, _] = _provisioners(_hcl(targets[0], workspace.templates_dir))[-3:]
    assert "rpm -qa --qf '%%{NAME}\\\\t%%{VERSION}-%%{RELEASE}\\\\t%%{ARCH}\\\\n'" in listing
    assert "dpkg-query" not in listing
    assert 'destination = "${var.package_list_dir}/packages.rpm"' in download


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed (make test installs it)")
def test_packer_validate_accepts_the_rpm_guests_template(tmp_path, workspace, write):
    write("recipes/fedora.yaml", FEDORA_ISO)
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    (tmp_path / "image.pkr.hcl").write_text(_hcl(targets[0], workspace.templates_dir))
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    result = subprocess.run(
        ["packer", "validate", "-var", f"ssh_private_key_file={key}", "image.pkr.hcl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_packer_build_gets_an_spdx_sbom_from_the_guests_downloaded_package_list(tmp_path):
    target = _example("debian-12-packer:bookworm:x86_64")
    job = _job(target, tmp_path)
    job.out_dir.mkdir(parents=True)
    (job.out_dir / "packages.rpm").write_text("stale\t1-1\tx86_64\n")  # an earlier build's leftover
    backend = PackerBackend()
    run = backend.plan(job)
    log = tmp_path / "build.log"
    artifacts = backend.run(run, job, FakePacker(guest_packages=GUEST_PACKAGES), log, lambda step: None)
    assert not (job.out_dir / "packages.rpm").exists()
    manifest = BuildManifest(
        target=target.id,
        recipe=target.recipe,
        kind=target.kind,
        arch=target.arch.value,
        release=target.release,
        variant=target.variant,
        digest=target.digest,
        artifacts=tuple(artifacts),
        build_id=7,
        base_dir=run.base_dir,
    )
    manifest = attest(manifest, None, job.render_dir, None)
    assert manifest.sbom == "sbom/build-7.spdx.json"
    document = read_sbom(run.base_dir / manifest.sbom)
    assert packages_of(document) == {
        "bash": "5.2.15-2+b7",
        "libc6": "2.36-9+deb12u9",
        "openssh-server": "1:9.2p1-2+deb12u3",
    }
    [main] = [p for p in document["packages"] if p["SPDXID"] == "SPDXRef-Artifact"]
    assert main["checksums"][0]["checksumValue"] == artifacts[0].sha256


def test_a_packer_run_that_downloaded_no_package_list_fails_the_build_naming_the_file(tmp_path):
    job = _job(_example("debian-12-packer:bookworm:x86_64"), tmp_path)
    backend = PackerBackend()
    with pytest.raises(CommandFailed, match=r"package list \(packages.dpkg or packages.rpm in .*/out;"):
        backend.run(
            backend.plan(job), job, FakePacker(guest_packages=None), tmp_path / "build.log", lambda step: None
        )
