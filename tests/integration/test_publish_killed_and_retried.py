"""A publish job killed part-way and retried ends with the artifact published once (issue 25).

GitLab's ``retry`` starts a new job, on any runner with the tag: a fresh ledger, nothing of the killed
job's but what it left at the destination. Here the real ``kiln publish`` runs as a subprocess
against the session's site and is killed with SIGKILL (no clean-up of its own can run) inside its
publish, then run again with a fresh ledger:

- Glance: killed while the image's bytes stream into Glance's store (the candidate exists, nothing
  promoted); the retry deletes the stale candidate and publishes one active image.
- the RPM repo: killed when it signs the new ``repomd.xml`` (a ``gpg`` first on PATH kills its
  parent there: packages placed, metadata staged, no switch, no record); the retry leaves one copy
  of the package, listed once in the served metadata, and the record.
- the registry: killed while a layer uploads (no manifest, no tag); the retry pushes the tag once.

And two jobs racing on one target (two pipelines with no resource_group between them), each with a
fresh ledger, publish it once: Glance keeps one image at the digest, the repo one copy and one record.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml

from builder.arch import Arch
from builder.manifest import BuildManifest, artifact_for
from builder.publishers.glance import GlancePublisher
from builder.workspace import PACKAGE_ROOT
from tests.integration.test_destinations_answer import _rpm_manifest
from tests.integration.test_glance_publish import _manifest
from tests.support.oci import make_layout
from tests.support.registry_auth import credentials

pytestmark = pytest.mark.site

KILN = [sys.executable, "-m", "builder"]


@pytest.fixture
def site_file(site_settings, tmp_path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_settings.model_dump(mode="json", exclude_none=True)))
    return path


def _argv(site_file: Path, ledger: Path, manifest: Path) -> list[str]:
    return [*KILN, "--root", str(PACKAGE_ROOT), "--site", str(site_file), "--ledger", str(ledger),
            "publish", str(manifest)]  # fmt: skip


def _killed_when(argv: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None) -> str:
    """Run ``argv`` until ``ready()`` says it is inside its publish, then SIGKILL its process group
    (or it kills itself there); what it printed."""
    log = Path(argv[-1]).with_name("killed-publish.log")
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    said = log.read_text()
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed inside its publish (exit {proc.returncode}):\n{said}"
    )
    return said


def _retried(site_file: Path, manifest: Path, tmp_path: Path) -> None:
    retry = subprocess.run(
        _argv(site_file, tmp_path / "retry.sqlite", manifest), capture_output=True, text=True
    )
    assert retry.returncode == 0, retry.stdout + retry.stderr


def _written(manifest: BuildManifest, **publish) -> Path:
    path = manifest.base_dir / "manifest.json"  # beside its artifacts, as a build writes it
    replace(manifest, publish=publish, verification={"status": "passed", "cases": 1}).write(path)
    return path


def test_glance_a_job_killed_mid_upload_and_retried_publishes_one_image(local_site, site_file, tmp_path):
    target, digest = "retried-job:bookworm:x86_64", "7" * 64
    manifest = _written(
        _manifest(tmp_path, target, digest, size=192 << 20, arch="x86_64"),
        glance={"image_name": "retried-job", "visibility": "public"},
    )
    store = local_site.state / "glance" / "images"
    before = set(store.iterdir())

    def streaming() -> bool:  # the candidate's bytes are arriving in Glance's file store
        return any(p not in before and p.stat().st_size > (16 << 20) for p in store.iterdir())

    _killed_when(_argv(site_file, tmp_path / "killed.sqlite", manifest), streaming)
    glance = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    left = [i for i in glance._images() if (i.properties or {}).get("kiln_target") == target]
    assert left and all(i.status != "active" or "candidate" in i.name for i in left)  # nothing published

    _retried(site_file, manifest, tmp_path)
    mine = [i for i in glance._images() if (i.properties or {}).get("kiln_target") == target]
    published = [(i.name, i.status, i.properties["kiln_digest"]) for i in mine if "candidate" not in i.name]
    assert published == [("retried-job", "active", digest)]
    # The killed job's upload stays a private candidate until it is stale (an hour: a younger one may
    # be another job's upload in flight); it is never published.
    assert all(i.visibility == "private" and i.status != "active" for i in mine if "candidate" in i.name)


def test_the_repo_a_job_killed_while_signing_its_metadata_and_retried_serves_the_package_once(
    local_site, site_file, tmp_path
):
    manifest = _written(_rpm_manifest(tmp_path, "kiln-killed", "8" * 64), repo={"repo": "retried-job"})
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    gpg = wrappers / "gpg"  # the repo's own signature comes last: killed there, mid-publish
    gpg.write_text('#!/bin/sh\ncase " $* " in *" --detach-sign "*) kill -KILL "$PPID"; sleep 30;; esac\n'
                   'exec /usr/bin/gpg "$@"\n')  # fmt: skip
    gpg.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrappers}:{os.environ['PATH']}"}
    arch_dir = local_site.repo_root / "retried-job" / "el" / "9" / "x86_64"
    record = arch_dir / "kiln-published" / "kiln-killed_9_x86_64.json"
    _killed_when(_argv(site_file, tmp_path / "killed.sqlite", manifest), lambda: False, env=env)
    assert list(arch_dir.rglob("*.rpm")) and not record.exists()  # placed, not published: published again

    _retried(site_file, manifest, tmp_path)
    assert json.loads(record.read_text())["digest"] == "8" * 64
    rpms = [p.name for p in arch_dir.rglob("*.rpm")]
    assert len(rpms) == 1, rpms
    repomd = requests.get(f"{local_site.urls.repo}/retried-job/el/9/x86_64/repodata/repomd.xml", timeout=30)
    [primary] = re.findall(r'href="(repodata/[^"]*primary\.xml\.gz)"', repomd.text)
    served = requests.get(f"{local_site.urls.repo}/retried-job/el/9/x86_64/{primary}", timeout=30)
    listed = re.findall(r"<name>kiln-killed</name>", gzip.decompress(served.content).decode())
    assert len(listed) == 1


def test_the_registry_a_job_killed_mid_layer_and_retried_pushes_the_tag_once(local_site, site_file, tmp_path):
    out = tmp_path / "out"
    layout = make_layout(out / "oci", Arch.X86_64, [{"big": os.urandom(96 << 20)}])
    built = BuildManifest(
        target="retried-job:bookworm:x86_64",
        recipe="retried-job",
        kind="container",
        arch="x86_64",
        release="bookworm",
        variant=None,
        digest="9" * 64,
        artifacts=(artifact_for(out, layout, "image", "oci-layout", "oci"),),
        build={"distro": "debian", "release": "bookworm"},
        base_dir=out,
    )
    manifest = _written(built, registry={"repository": "kiln/retried-job", "tags": ["t1"]})
    uploads = local_site.state / "registry" / "data" / "docker" / "registry" / "v2" / "repositories"
    uploads = uploads / "kiln" / "retried-job" / "_uploads"

    def uploading() -> bool:  # a layer is arriving in the registry's upload area
        return uploads.is_dir() and any(
            p.is_file() and p.stat().st_size > (8 << 20) for p in uploads.rglob("data")
        )

    _killed_when(_argv(site_file, tmp_path / "killed.sqlite", manifest), uploading)
    tag = f"http://{local_site.urls.registry}/v2/kiln/retried-job/manifests/t1"
    accept = {"Accept": "application/vnd.oci.image.index.v1+json"}
    auth = credentials(local_site)
    assert requests.get(tag, headers=accept, auth=auth, timeout=30).status_code == 404  # no tag yet

    _retried(site_file, manifest, tmp_path)
    index = requests.get(tag, headers=accept, auth=auth, timeout=30).json()
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
    assert "x86_64=" + "9" * 64 in index["annotations"]["io.kiln.digests"]


def _race(site_file: Path, manifest: Path, tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """Two jobs of two pipelines publishing one target at once, each with its own fresh ledger."""
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    procs = [
        subprocess.Popen(_argv(site_file, tmp_path / f"race-{n}.sqlite", manifest), **out) for n in range(2)
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=600), p.stdout.read()) for p in procs]


def test_glance_two_jobs_racing_on_one_target_publish_one_image(local_site, site_file, tmp_path):
    target, digest = "retried-race:bookworm:x86_64", "a1" * 32
    manifest = _written(
        _manifest(tmp_path, target, digest, size=64 << 20, arch="x86_64"),
        glance={"image_name": "retried-race", "visibility": "public"},
    )
    results = _race(site_file, manifest, tmp_path)
    assert [r.returncode for r in results] == [0, 0], [r.stdout for r in results]
    glance = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    mine = [i for i in glance._images() if (i.properties or {}).get("kiln_target") == target]
    assert [(i.name, i.status) for i in mine if not i.is_hidden] == [("retried-race", "active")]


def test_the_repo_two_jobs_racing_on_one_target_serve_the_package_once(local_site, site_file, tmp_path):
    manifest = _written(_rpm_manifest(tmp_path, "kiln-raced", "b2" * 32), repo={"repo": "retried-race"})
    results = _race(site_file, manifest, tmp_path)
    assert [r.returncode for r in results] == [0, 0], [r.stdout for r in results]
    arch_dir = local_site.repo_root / "retried-race" / "el" / "9" / "x86_64"
    assert len(list(arch_dir.rglob("*.rpm"))) == 1
    assert (
        json.loads((arch_dir / "kiln-published" / "kiln-raced_9_x86_64.json").read_text())["digest"]
        == "b2" * 32
    )
