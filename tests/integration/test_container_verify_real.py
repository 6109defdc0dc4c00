"""The container verifier against the real docker engine: a tiny image (the host's `uname` and the
libraries it needs, imported with Kiln's labels) passes the architecture and labels cases, and
fails them when the target is another arch or another digest; a pruned tag is loaded back from its
OCI layout with skopeo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.arch import Arch
from builder.core.kind import VerifyJob
from builder.host.run import Runner
from builder.manifest import Artifact, BuildManifest
from builder.verify.container_run import ContainerVerifier, local_tag

DIGEST = "feedc0de" * 8
RECIPE = "kiln-verify-test"

pytestmark = pytest.mark.skipif(
    Arch.host() != Arch.X86_64, reason="the tiny image copies x86_64 host binaries"
)


def _uname_rootfs() -> bytes:
    """A tar of /bin/uname and the shared libraries it loads (from ldd), at their own paths."""
    uname = Path(shutil.which("uname") or "/bin/uname").resolve()
    ldd = subprocess.run(["ldd", str(uname)], capture_output=True, text=True, check=True).stdout
    libs = {Path(word) for line in ldd.splitlines() for word in line.split() if word.startswith("/")}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path in (uname, *sorted(libs)):
            tar.add(str(path.resolve()), arcname=str(path).lstrip("/"))
        if str(uname) != "/bin/uname":  # `uname -m` runs by name: PATH has /bin
            tar.add(str(uname), arcname="bin/uname")
    return raw.getvalue()


@pytest.fixture(scope="module")
def tiny_image(docker_engine):
    tag = local_tag(RECIPE, Arch.X86_64, DIGEST)
    labels = {
        "org.opencontainers.image.title": RECIPE,
        "org.opencontainers.image.revision": "unknown",
        "io.kiln.digest": DIGEST,
    }
    changes = [arg for k, v in labels.items() for arg in ("-c", f"LABEL {k}={v}")]
    subprocess.run(
        ["docker", "import", *changes, "-c", "ENV PATH=/bin:/usr/bin", "-", tag],
        input=_uname_rootfs(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)


def _verify(
    tmp_path: Path,
    arch: Arch,
    digest: str = DIGEST,
    layout: Path | None = None,
    commands=((("uname", "-s"),)),
) -> dict:
    target = SimpleNamespace(
        recipe=RECIPE,
        arch=arch,
        digest=digest,
        id=f"{RECIPE}:bookworm:{arch.value}",
        build=SimpleNamespace(cuda=None),
    )
    artifacts = (Artifact("image", "oci-layout", layout.name, "0" * 64, 0),) if layout else ()
    manifest = BuildManifest(
        target.id, RECIPE, "container", arch.value, "bookworm", None, digest, artifacts,
        base_dir=layout.parent if layout else tmp_path,
    )  # fmt: skip
    job = VerifyJob(target, manifest, tmp_path / "verify", Runner(), lambda line: None)  # type: ignore[arg-type]
    cases = ContainerVerifier(SimpleNamespace(commands=[list(c) for c in commands], nvcc=False)).verify(job)
    return {c.name: c for c in cases}


def test_a_native_image_with_kilns_labels_passes_architecture_labels_and_commands(tiny_image, tmp_path):
    cases = _verify(tmp_path, Arch.X86_64)
    assert list(cases) == ["architecture", "labels", "uname -s"]
    assert all(c.passed for c in cases.values()), {n: c.message for n, c in cases.items()}
    assert "x86_64" in cases["architecture"].output


def test_the_same_image_fails_architecture_for_a_ppc64le_target(tiny_image, tmp_path):
    # the ppc64le target's tag names the same image, recorded as linux/amd64
    ppc_tag = local_tag(RECIPE, Arch.PPC64LE, DIGEST)
    subprocess.run(["docker", "tag", tiny_image, ppc_tag], check=True, capture_output=True, timeout=60)
    try:
        case = _verify(tmp_path, Arch.PPC64LE)["architecture"]
    finally:
        subprocess.run(["docker", "image", "rm", ppc_tag], capture_output=True, timeout=60)
    assert not case.passed and "linux/amd64" in case.message


def test_labels_fail_for_another_digest(tiny_image, tmp_path):
    other = "0badf00d" * 8
    other_tag = local_tag(RECIPE, Arch.X86_64, other)
    subprocess.run(["docker", "tag", tiny_image, other_tag], check=True, capture_output=True, timeout=60)
    try:
        cases = _verify(tmp_path, Arch.X86_64, digest=other)
    finally:
        subprocess.run(["docker", "image", "rm", other_tag], capture_output=True, timeout=60)
    assert cases["architecture"].passed
    assert not cases["labels"].passed and "io.kiln.digest" in cases["labels"].message


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed: run `make test`")
def test_a_pruned_tag_is_loaded_back_from_the_builds_oci_layout(tiny_image, tmp_path):
    layout = tmp_path / "out" / "image"
    layout.parent.mkdir()
    subprocess.run(
        ["skopeo", "copy", f"docker-daemon:{tiny_image}", f"oci:{layout}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(["docker", "image", "rm", tiny_image], check=True, capture_output=True, timeout=60)
    cases = _verify(tmp_path, Arch.X86_64, layout=layout)
    assert all(c.passed for c in cases.values()), {n: c.message for n, c in cases.items()}
    inspected = subprocess.run(["docker", "image", "inspect", tiny_image], capture_output=True, timeout=60)
    assert inspected.returncode == 0, "the tag is back in the engine"
    assert os.listdir(layout)


def _write_layout(layout: Path, arch: Arch, layer: bytes, labels: dict[str, str]) -> None:
    """An OCI image layout of one uncompressed layer (file modes kept, unlike tests/support/oci.py)."""

    def blob(data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    config = {
        "architecture": arch.oci,
        "os": "linux",
        "config": {"Labels": labels, "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer, "application/vnd.oci.image.layer.v1.tar")],
    }
    descriptor = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))


@pytest.mark.skipif(
    not Path("/proc/sys/fs/binfmt_misc/qemu-ppc64le").exists(), reason="no binfmt handler for ppc64le"
)
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed: run `make test`")
def test_a_ppc64le_image_loaded_from_its_layout_passes_architecture_under_emulation(
    docker_engine, rpm_build_root, tmp_path
):
    root = rpm_build_root(Arch.PPC64LE)  # ppc64le binaries to put in the image (bootstrapped if missing)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path in ("usr/bin/uname", "lib/powerpc64le-linux-gnu/libc.so.6", "lib64/ld64.so.2"):
            real = (root / path).resolve() if not (root / path).is_symlink() else None
            if real is None:  # an absolute link inside the root: follow it there
                real = root / os.readlink(root / path).lstrip("/")
            tar.add(str(real), arcname=path)
    digest = "ba5eba11" * 8
    labels = {
        "org.opencontainers.image.title": RECIPE,
        "org.opencontainers.image.revision": "unknown",
        "io.kiln.digest": digest,
    }
    layout = tmp_path / "out" / "image"
    _write_layout(layout, Arch.PPC64LE, raw.getvalue(), labels)
    tag = local_tag(RECIPE, Arch.PPC64LE, digest)
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)
    try:
        cases = _verify(tmp_path, Arch.PPC64LE, digest=digest, layout=layout, commands=[])
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)
    assert cases["architecture"].passed, cases["architecture"].message
    assert "ppc64le" in cases["architecture"].output
    assert cases["labels"].passed, cases["labels"].message
