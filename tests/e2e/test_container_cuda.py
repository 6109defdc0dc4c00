"""CUDA container images for real: the example runtime layer (on the base layer) built for x86_64 and
ppc64le (under binfmt emulation) from debootstrap rootfs, verified, pushed to the local registry
(authentication on) as one multi-arch tag, pulled back and run; rebuilt unchanged: nothing built,
nothing pushed. The devel layer (nvcc, ~3 GB installed) is `make test-slow`.

Times here (2 cores): cold ~6 min (the ppc64el debootstrap is most of it), warm ~10 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import registry_auth
from tests.support.kiln_cli import KILN, run_kiln

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


def _skopeo_raw(local_site, ref: str) -> dict:
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry_auth.authfile_args(local_site), f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(raw)


def test_the_tag_is_one_index_with_amd64_and_ppc64le(built, local_site):
    index = _skopeo_raw(local_site, f"{local_site.urls.registry}/{TAG}")
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


def test_a_fresh_ledger_asks_the_registry_and_builds_and_pushes_nothing(
    built, local_site, site_file, tmp_path
):
    """Another runner (no ledger, no build root): the index's io.kiln.digests has every target's digest."""
    uploads_before = _blob_uploads(local_site)
    result = run_kiln(
        site_file, tmp_path / "ledger.sqlite", tmp_path / "build", "build", "cuda-runtime", "--publish",
        "--json", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = json.loads(result.stdout)["targets"]
    assert [o["status"] for o in outcomes] == ["skipped"] * 4
    assert all(o["note"].startswith("in the registry: ") for o in outcomes), outcomes
    assert _blob_uploads(local_site) == uploads_before
    assert not (tmp_path / "build" / "cuda-runtime_bookworm_x86_64" / "out").exists()  # nothing built


CHILD_LAYER = """\
name: cuda-layer-test
kind: container
description: a layer on cuda-runtime, built where only the registry has its parent
arches: [x86_64]
build:
  distro: debian
  release: bookworm
  base: {recipe: cuda-runtime}
  cuda: "11.8"
  components: [main, contrib, non-free]
  env: {KILN_TEST_LAYER: "on-the-registry-parent"}
verify:
  commands:
    - [sh, -c, 'ldconfig -p | grep -q libnvToolsExt.so.1 && test "$KILN_TEST_LAYER" = on-the-registry-parent']
publish:
  registry:
    repository: kiln/cuda
    tags: ["11.8-layer-test"]
"""


def test_a_child_of_a_parent_only_in_the_registry_pulls_it_by_digest(built, local_site, site_file, tmp_path):
    """A new layer on a fresh runner: its parents are not rebuilt; the parent image is pulled by the
    manifest digest the index lists for the arch, and the child is built on it, verified and pushed."""
    from builder.workspace import PACKAGE_ROOT

    workspace = tmp_path / "workspace"
    for part in ("recipes", "templates", "elements", "files"):
        if (PACKAGE_ROOT / part).exists():
            shutil.copytree(PACKAGE_ROOT / part, workspace / part)
    (workspace / "recipes" / "containers" / "cuda-layer-test.yaml").write_text(CHILD_LAYER)
    env_root = tmp_path / "build"
    result = subprocess.run(
        [
            *KILN, "--root", str(workspace), "--site", str(site_file), "--ledger",
            str(tmp_path / "ledger.sqlite"), "build", "cuda-layer-test", "--publish", "--json",
        ],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "KILN_BUILD_ROOT": str(env_root)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = {o["target"]: o for o in json.loads(result.stdout)["targets"]}
    assert outcomes["cuda-runtime:bookworm:x86_64"]["status"] == "skipped"
    child = outcomes["cuda-layer-test:bookworm:x86_64"]
    assert child["status"] == "built" and child["verification"].startswith("passed"), child
    pulled = json.loads((env_root / "cuda-runtime_bookworm_x86_64" / "registry" / "image.json").read_text())
    index = _skopeo_raw(local_site, f"{local_site.urls.registry}/{TAG}")
    runtime_amd64 = [m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64"]
    pulled_index = json.loads(
        (env_root / "cuda-runtime_bookworm_x86_64" / "registry" / "oci" / "index.json").read_text()
    )
    assert [m["digest"] for m in pulled_index["manifests"]] == runtime_amd64  # by digest, the one listed
    assert pulled["from"].endswith(TAG)
    child_index = _skopeo_raw(local_site, f"{local_site.urls.registry}/kiln/cuda:11.8-layer-test")
    assert {m["platform"]["architecture"] for m in child_index["manifests"]} == {"amd64"}


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
