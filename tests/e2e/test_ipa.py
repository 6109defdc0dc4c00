"""The example IPA ramdisk for real: Debian bookworm x86_64 built with ironic-python-agent-builder
(sources from local git repos made from PyPI sdists), booted in QEMU (kernel + initramfs, then the
ISO) until the agent's API answers through a forwarded port with both virtual disks in its
inventory, then published to the local Glance (aki/ari) and the Bifrost HTTP directory.

Part of `make test`: 7 min 22 s here with a warm DIB cache (the build, two TCG boots of ~2 min
each, publishing).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import requests

from tests.support.kiln_cli import run_kiln

pytestmark = [pytest.mark.slow, pytest.mark.site]

TARGET = "ipa-bookworm:bookworm:x86_64"


@pytest.fixture(scope="module")
def built(local_site, site_file, dib_ready, tmp_path_factory):
    work = tmp_path_factory.mktemp("ipa-e2e")
    started = time.monotonic()
    result = run_kiln(
        site_file,
        work / "l.sqlite",
        work / "build",
        *("build", "ipa-bookworm", "--arch", "x86_64", "--publish", "--json"),
        timeout=5400,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    [outcome] = json.loads(result.stdout)["targets"]
    print(f"\nIPA build + two boots + publish: {seconds:.0f}s")
    return {"outcome": outcome, "manifest": Path(outcome["manifest"])}


def test_the_ramdisk_was_built_on_the_shared_base_tree(built):
    facts = json.loads(built["manifest"].read_text())["build_facts"]
    assert facts["base"]["state"] in ("recorded", "reused"), facts["base"]
    assert len(facts["base"]["digest"]) == 64
    assert "root.d" in facts["phases"]


def test_the_ramdisk_and_the_iso_boot_and_the_agent_lists_both_disks(built):
    outcome = built["outcome"]
    assert outcome["status"] == "built" and outcome["verification"].startswith("passed"), outcome
    junit = (built["manifest"].parent / "verify.xml").read_text()
    for case in ("hardware inventory: 2 disks", "software RAID: mdadm", "iso: hardware inventory: 2 disks"):
        assert f'name="{case}"' in junit
    assert "<failure" not in junit


def test_kernel_and_ramdisk_are_in_glance_as_aki_and_ari(built):
    published = {p["artifact"]: p for p in built["outcome"]["published"] if p["publisher"] == "glance"}
    assert {"kernel", "initramfs"} <= set(published)


def test_the_http_directory_serves_what_bifrost_expects(built, local_site):
    manifest = json.loads(built["manifest"].read_text())
    files = {a["name"]: built["manifest"].parent / a["path"] for a in manifest["artifacts"]}
    base = f"{local_site.urls.repo}/ipa/ipa-bookworm-bookworm-x86_64"
    for name, served in (("kernel", "ipa.kernel"), ("initramfs", "ipa.initramfs")):
        body = requests.get(f"{base}/{served}", timeout=60).content
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(files[name].read_bytes()).hexdigest()
        checksum = requests.get(f"{base}/{served}.sha256", timeout=60).text
        assert checksum == f"{hashlib.sha256(body).hexdigest()}  {served}\n"
