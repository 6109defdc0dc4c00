"""End-to-end fixtures: a site.yaml pointing at the session's local site (tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

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
