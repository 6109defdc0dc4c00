"""Debian 12 x86_64 with diskimage-builder, for real: built, booted to the cloud-init marker,
published to the local Glance (checked with python-openstackclient), skipped when unchanged,
and a SIGTERM mid-build leaves no loop device, mount or process behind.

Slow (a cold DIB build is ~5 min here, a TCG boot ~2 min): part of `make test`, ~10 min in all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from builder.manifest import sha256_file
from builder.sbom import packages_of, read_sbom
from builder.workspace import PACKAGE_ROOT
from tests.support.clients import glance_image_of
from tests.support.kiln_cli import KILN, run_kiln

pytestmark = [pytest.mark.slow, pytest.mark.site]


@pytest.fixture(scope="module")
def built(debian12):
    """The session's warm debian-12 build (tests/e2e/conftest.py): booted and published."""
    return {**debian12["warm"], "ledger": debian12["ledger"], "build_root": debian12["build_root"],
            "site_file": debian12["site_file"]}  # fmt: skip


def test_debian_12_x86_64_builds_boots_and_publishes(built, local_site):
    outcome = built["outcome"]
    assert outcome["status"] == "built" and outcome["verification"].startswith("passed")
    manifest = json.loads(Path(outcome["manifest"]).read_text())
    image = Path(outcome["manifest"]).parent / manifest["artifacts"][0]["path"]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    junit = (Path(outcome["manifest"]).parent / "verify.xml").read_text()
    assert 'failures="0"' in junit and "boot (" in junit
    shown = glance_image_of(outcome, local_site.urls.glance)
    props = shown["properties"]
    assert shown["name"] == "debian-12 bookworm x86_64" and shown["status"] == "active"
    assert props["architecture"] == "x86_64" and props["hw_firmware_type"] == "bios"
    assert props["os_distro"] == "debian" and props["os_version"] == "12"
    assert props["kiln_digest"] == manifest["digest"]
    # The image names its provenance statement (beside the artifact) by digest, and that statement
    # is the one `kiln verify` accepts for the image, signed with the site key.
    statement = image.with_name(image.name + ".intoto.json")
    assert props["kiln_provenance"] == f"sha256:{sha256_file(statement)}"
    verified = run_kiln(
        built["site_file"], built["ledger"], built["build_root"], "verify", str(image), "--require-signature",
        "--json",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout[-3000:]
    assert json.loads(verified.stdout)["statement"] == str(statement)


def test_unchanged_target_is_skipped_in_well_under_a_second(built):
    started = time.monotonic()
    result = run_kiln(
        built["site_file"],
        built["ledger"],
        built["build_root"],
        "build",
        "debian-12",
        "--arch",
        "x86_64",
        "--publish",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert [t["status"] for t in json.loads(result.stdout)["targets"]] == ["skipped"]
    assert json.loads(result.stdout)["targets"][0]["seconds"] < 1.0
    assert time.monotonic() - started < 10  # the whole process, interpreter start-up included


def test_packer_build_on_the_dib_image_runs_its_provisioners(built, local_site):
    """debian-12-packer builds on debian-12 (built above, so skipped now); its provisioner leaves
    /etc/kiln-provisioned, which the recipe's boot check finds over SSH; the guest's package list,
    downloaded by the template's last provisioners, becomes its SBOM."""
    result = run_kiln(
        built["site_file"],
        built["ledger"],
        built["build_root"],
        "build",
        "debian-12-packer",
        "--arch",
        "x86_64",
        "--publish",
        "--json",
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    outcomes = {t["target"]: t for t in json.loads(result.stdout)["targets"]}
    assert outcomes["debian-12:bookworm:x86_64"]["status"] == "skipped"
    packer = outcomes["debian-12-packer:bookworm:x86_64"]
    assert packer["status"] == "built" and packer["verification"].startswith("passed")
    junit = (Path(packer["manifest"]).parent / "verify.xml").read_text()
    assert 'name="test -f /etc/kiln-provisioned"' in junit and 'failures="0"' in junit
    [log] = (Path(packer["manifest"]).parent / "logs").glob("build-*.log")
    assert ",ui,say," in log.read_text()  # -machine-readable output, which Kiln turns into progress
    shown = glance_image_of(packer, local_site.urls.glance)
    assert shown["name"] == "debian-12-packer bookworm x86_64"
    manifest = json.loads(Path(packer["manifest"]).read_text())
    listed = packages_of(read_sbom(Path(packer["manifest"]).parent / manifest["sbom"]))
    assert {"openssh-server", "cloud-init", "qemu-guest-agent"} <= listed.keys()  # debian-12's, in the guest


def _loop_devices(under: Path) -> list[str]:
    """Loop devices whose backing file is under ``under`` (other tests may build beside this one)."""
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], capture_output=True, text=True
    ).stdout
    return [line for line in listed.splitlines() if str(under) in line]


def test_sigterm_mid_build_leaves_no_loop_device_mount_or_process(local_site, site_file, dib_ready, tmp_path):
    build_root = tmp_path / "build"
    env = {**os.environ, "KILN_BUILD_ROOT": str(build_root)}
    proc = subprocess.Popen(
        [
            *KILN,
            "--root",
            str(PACKAGE_ROOT),
            "--site",
            str(site_file),
            "--ledger",
            str(tmp_path / "l.sqlite"),
            "build",
            "debian-12",
            "--arch",
            "x86_64",
            "--no-publish",
            "--no-verify",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log_dir = build_root / "debian-12_bookworm_x86_64" / "logs"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait until DIB works inside its chroot
        logs = list(log_dir.glob("build-*.log")) if log_dir.exists() else []
        if logs and "in_target.d/install.d/" in logs[0].read_text(errors="replace"):
            break
        if proc.poll() is not None:
            pytest.fail(f"the build ended before it could be interrupted: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the build never reached its install phase")
    os.kill(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode != 0, output[-2000:]
    tmp_root = str(build_root / ".tmp")
    mounts = Path("/proc/mounts").read_text()
    assert tmp_root not in mounts, "a mount under the build's TMPDIR was left behind"
    assert _loop_devices(build_root) == [], "a loop device was left behind"
    leftover = subprocess.run(["pgrep", "-f", tmp_root], capture_output=True, text=True).stdout.strip()
    assert leftover == "", f"processes of the build were left behind: {leftover}"
