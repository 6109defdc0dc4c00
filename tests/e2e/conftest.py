"""End-to-end fixtures: a site.yaml pointing at the session's local site (tests/conftest.py), and the
expensive builds that several modules check, made once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kiln_cli import run_kiln

DIB_TOOLS = ("disk-image-create", "qemu-system-x86_64", "cloud-localds", "qemu-img", "debootstrap")


@pytest.fixture(scope="session")
def dib_ready() -> None:
    venv_bin = Path(__file__).resolve().parents[2] / ".venv" / "bin"
    missing = [t for t in DIB_TOOLS if shutil.which(t) is None and not (venv_bin / t).exists()]
    if missing:
        pytest.skip(f"image tools missing ({', '.join(missing)}): run `make test`, which installs them")


@pytest.fixture(scope="session")
def site_file(site_settings, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "site.yaml"
    path.write_text(yaml.safe_dump(site_settings.model_dump(mode="json", exclude_none=True)))
    return path


@pytest.fixture(scope="session")
def debian12(local_site, site_settings, dib_ready, tmp_path_factory) -> dict[str, Any]:
    """The example debian-12 x86_64 guest, built twice in one workspace of the session: cold,
    recording its base tree in an empty store, then warm (``--force``) from that tree, booted to the
    cloud-init marker and published to the session's Glance. The base-tree test compares the two;
    the guest and Packer tests use the warm one (one warm DIB build and boot where each module used
    to make its own)."""
    work = tmp_path_factory.mktemp("debian-12")
    site = site_settings.model_dump(mode="json", exclude_none=True)
    site["dib"] = {"base_cache": {"store": str(work / "store")}}
    site_file = work / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    ledger, build_root = work / "ledger.sqlite", work / "build"
    found: dict[str, Any] = {"site_file": site_file, "ledger": ledger, "build_root": build_root}
    for name, extra in (("cold", ()), ("warm", ("--force", "--publish"))):
        result = run_kiln(
            site_file, ledger, build_root, "build", "debian-12", "--arch", "x86_64", "--json", *extra
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        [outcome] = json.loads(result.stdout)["targets"]
        found[name] = {"outcome": outcome, "manifest": json.loads(Path(outcome["manifest"]).read_text())}
    found["store"] = work / "store"
    return found
