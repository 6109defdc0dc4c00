"""CUDA container images for real: the example runtime layer (on the base layer) built for x86_64 and
ppc64le (under binfmt emulation) from debootstrap rootfs, verified, pushed to the local registry
(authentication on) as one multi-arch tag, pulled back and run; rebuilt unchanged: nothing built,
nothing pushed. The devel layer (nvcc, ~3 GB installed) is `make test-slow`.

Times here (2 cores): cold ~6 min (the ppc64el debootstrap is most of it), warm ~10 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import registry_auth
from tests.support.kiln_cli import run_kiln

pytestmark = [pytest.mark.slow, pytest.mark.site]

TAG = "kiln/cuda:11.8-runtime-bookworm"


def _blob_uploads(local_site) -> int:
    """Blob uploads the registry has answered so far (its access log: one PUT per finished upload)."""
    log = local_site.log_dir / "registry.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if '"PUT /v2/kiln/cuda/blobs/uploads/' in line)


@pytest.fixture(scope="module")
def tools() -> None:
    missing = [t for t in ("debootstrap", "skopeo", "qemu-ppc64le-static") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"container tools missing ({', '.join(missing)}): run `make test`, which installs them")


@pytest.fixture(scope="module")
def built(local_site, site_file, docker_engine, tools, tmp_path_factory):
    work = tmp_path_factory.mktemp("container-e2e")
    ledger, build_root = work / "ledger.sqlite", work / "build"
    uploads_before = _blob_uploads(local_site)
    started = time.monotonic()
    result = run_kiln(
        site_file, ledger, build_root, "build", "cuda-runtime", "--publish", "--json", timeout=3600
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    outcomes = {o["target"]: o for o in json.loads(result.stdout)["targets"]}
    return {
        "outcomes": outcomes,
        "ledger": ledger,
        "build_root": build_root,
        "seconds": seconds,
        "uploads": _blob_uploads(local_site) - uploads_before,
    }


def test_base_and_runtime_are_built_verified_and_published_for_both_arches(built):
    outcomes = built["outcomes"]
    assert sorted(outcomes) == [
        "cuda-base:bookworm:ppc64le",
        "cuda-base:bookworm:x86_64",
        "cuda-runtime:bookworm:ppc64le",
        "cuda-runtime:bookworm:x86_64",
    ]
    for outcome in outcomes.values():
        assert outcome["status"] == "built", outcome
        assert outcome["verification"].startswith("passed"), outcome
        assert outcome["published"], outcome  # each arch is in its tag's index
    assert built["uploads"] > 0
    print(f"\ncold build + push of base and runtime, both arches: {built['seconds']:.0f}s")


def test_the_tag_is_one_index_with_amd64_and_ppc64le(built, local_site):
    ref = f"docker://{local_site.urls.registry}/{TAG}"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry_auth.authfile_args(local_site), ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    index = json.loads(raw)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    platforms = sorted(f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"])
    assert platforms == ["linux/amd64", "linux/ppc64le"]


def test_the_pulled_ppc64le_image_runs_emulated_and_finds_libcudart(built, local_site):
    ref = f"{local_site.urls.registry}/{TAG}"
    env = registry_auth.docker_env(local_site)
    subprocess.run(
        ["docker", "pull", "--platform", "linux/ppc64le", ref], env=env, check=True, capture_output=True
    )
    run = subprocess.run(
        ["docker", "run", "--rm", "--platform", "linux/ppc64le", ref, "sh", "-c", "uname -m; ldconfig -p"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "ppc64le"
    assert any("libcudart.so.11.0" in line and "/powerpc64le-linux-gnu/" in line for line in lines)


def test_the_sbom_lists_libcudart_with_its_version(built):
    outcome = built["outcomes"]["cuda-runtime:bookworm:ppc64le"]
    manifest_path = Path(outcome["manifest"])
    manifest = json.loads(manifest_path.read_text())
    sbom = json.loads((manifest_path.parent / manifest["sbom"]).read_text())
    packages = {p["name"]: p for p in sbom["packages"]}
    listed = (manifest_path.parent / "out" / "packages.dpkg").read_text()
    version = next(line.split("\t")[1] for line in listed.splitlines() if line.startswith("libcudart11.0:"))
    assert packages["libcudart11.0"]["versionInfo"] == version
    assert version.startswith("11.8")
    assert "libnvtoolsext1" in packages  # the runtime layer's own package is listed too


def test_the_cuda_packages_are_held_in_the_image(built, local_site):
    tag = json.loads(
        (
            Path(built["outcomes"]["cuda-runtime:bookworm:x86_64"]["manifest"]).parent / "out" / "image.json"
        ).read_text()
    )["tag"]
    held = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", tag, "apt-mark", "showhold"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"libcudart11.0", "libnvtoolsext1"} <= set(held)


def test_rebuilding_unchanged_builds_nothing_and_pushes_no_bytes(built, local_site, site_file):
    uploads_before = _blob_uploads(local_site)
    started = time.monotonic()
    result = run_kiln(
        site_file,
        built["ledger"],
        built["build_root"],
        "build",
        "cuda-runtime",
        "--publish",
        "--json",
        timeout=3600,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = json.loads(result.stdout)["targets"]
    assert [o["status"] for o in outcomes] == ["skipped"] * 4
    assert all(o["published"] == [] for o in outcomes)
    assert _blob_uploads(local_site) == uploads_before  # zero layer bytes, from the registry's own log
    print(f"\nwarm (unchanged) build + push, both arches: {seconds:.1f}s")


@pytest.mark.heavy
def test_the_devel_image_builds_for_x86_64_and_nvcc_works(built, site_file):
    """cuda-devel (nvidia-cuda-toolkit) on the runtime layer built above: verified with nvcc."""
    started = time.monotonic()
    result = run_kiln(
        site_file,
        built["ledger"],
        built["build_root"],
        "build",
        "cuda-devel",
        "--arch",
        "x86_64",
        "--json",
        timeout=3600,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = {o["target"]: o for o in json.loads(result.stdout)["targets"]}
    devel = outcomes["cuda-devel:bookworm:x86_64"]
    assert devel["status"] == "built" and devel["verification"].startswith("passed"), devel
    assert outcomes["cuda-runtime:bookworm:x86_64"]["status"] == "skipped"  # its parent is not rebuilt
    junit = (Path(devel["manifest"]).parent / "verify.xml").read_text()
    assert 'name="nvcc"' in junit and 'name="gpu vector add"' in junit
    print(f"\ncuda-devel x86_64 build + verify: {seconds:.0f}s")
