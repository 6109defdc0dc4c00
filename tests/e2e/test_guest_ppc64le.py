"""Debian 12 ppc64le with diskimage-builder under qemu-user emulation, for real: a PReP boot
partition and GRUB for ieee1275, a kernel (elements/kiln-ppc64le-boot), booted under
qemu-system-ppc64 -M pseries with TCG to the cloud-init marker on hvc0, published to Glance
with hw_machine_type=pseries.

Very slow on an x86_64 host (~15 min build under emulation, ~3 min boot): `make test-slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.workspace import PACKAGE_ROOT
from tests.support.clients import glance_image_of

pytestmark = [pytest.mark.slow, pytest.mark.emulated, pytest.mark.site]


def test_debian_12_ppc64le_has_prep_boots_on_pseries_and_publishes(
    local_site, site_file, dib_ready, tmp_path
):
    if not Path("/proc/sys/fs/binfmt_misc/qemu-ppc64le").exists():
        pytest.skip("no binfmt handler for ppc64le: run scripts/bootstrap.sh as root")
    # The archive's ppc64el security index has been seen out of step with its InRelease here: leave
    # that suite out for ppc64le, as a site with such a mirror would (FIELD-NOTES).
    settings = yaml.safe_load(site_file.read_text())
    settings.setdefault("mirrors", {})["without_security"] = ["ppc64le"]
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "KILN_BUILD_ROOT": str(tmp_path / "build")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "--root",
            str(PACKAGE_ROOT),
            "--site",
            str(site_file),
            "--ledger",
            str(tmp_path / "ledger.sqlite"),
            "build",
            "debian-12",
            "--arch",
            "ppc64le",
            "--publish",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    [outcome] = json.loads(result.stdout)["targets"]
    assert outcome["status"] == "built" and outcome["verification"].startswith("passed")
    directory = Path(outcome["manifest"]).parent
    manifest = json.loads((directory / "manifest.json").read_text())
    image = directory / manifest["artifacts"][0]["path"]
    raw = tmp_path / "image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    dump = subprocess.run(["sfdisk", "--dump", str(raw)], capture_output=True, text=True, check=True).stdout
    assert "type=41" in dump, f"no PReP boot partition:\n{dump}"
    serial = (directory / "verify" / "serial.log").read_text(errors="replace")
    assert "KILN-BOOT-" in serial
    shown = glance_image_of(outcome, local_site.urls.glance)
    assert shown["properties"]["architecture"] == "ppc64le"
    assert shown["properties"]["hw_machine_type"] == "pseries"
    assert "hw_firmware_type" not in shown["properties"]
