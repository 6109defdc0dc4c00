"""Reading NAME and ARCH from an RPM header in Python, checked against rpm itself."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from builder.errors import InvalidInput
from builder.publishers.rpmheader import LEAD_MAGIC, LEAD_SIZE, name_and_arch
from tests.support.rpms import build_noarch_rpm

REPO = Path(__file__).resolve().parents[2]
needs_rpmbuild = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild is not installed")


def _rpm_says(path: Path) -> tuple[str, str]:
    out = subprocess.run(
        ["rpm", "-qp", "--nosignature", "--nodigest", "--qf", "%{NAME} %{ARCH}", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name, arch = out.split()
    return name, arch


@needs_rpmbuild
def test_name_and_arch_match_rpm_for_a_built_package(tmp_path):
    rpm = build_noarch_rpm(tmp_path, "kiln-header-check", "2.5")
    assert name_and_arch(rpm) == ("kiln-header-check", "noarch") == _rpm_says(rpm)


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm is not installed")
def test_name_and_arch_match_rpm_for_the_example_srpm():
    srpms = sorted((REPO / "files").rglob("*.src.rpm"))
    assert srpms, "the example SRPM is missing"
    for srpm in srpms:
        assert name_and_arch(srpm) == _rpm_says(srpm)


def test_a_text_file_is_refused_naming_it(tmp_path):
    bogus = tmp_path / "notes.rpm"
    bogus.write_text("hello\n")
    with pytest.raises(InvalidInput, match=r"notes\.rpm: not an RPM \(no RPM lead\)"):
        name_and_arch(bogus)


@needs_rpmbuild
def test_a_truncated_package_is_refused(tmp_path):
    rpm = build_noarch_rpm(tmp_path, "kiln-truncated")
    cut = tmp_path / "cut.rpm"
    cut.write_bytes(rpm.read_bytes()[: LEAD_SIZE + 40])
    with pytest.raises(InvalidInput, match=r"cut\.rpm: not an RPM \(truncated header"):
        name_and_arch(cut)


def test_a_header_claiming_gigabytes_is_refused_without_reading_them(tmp_path):
    hostile = tmp_path / "huge.rpm"
    lead = LEAD_MAGIC + b"\0" * (LEAD_SIZE - 4)
    intro = b"\x8e\xad\xe8\x01" + b"\0" * 4 + struct.pack(">II", 1 << 24, 1 << 30)
    hostile.write_bytes(lead + intro)
    with pytest.raises(InvalidInput, match=r"huge\.rpm: not an RPM \(a header of 16777216 entries"):
        name_and_arch(hostile)


def test_a_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InvalidInput, match=r"absent\.rpm: cannot read it"):
        name_and_arch(tmp_path / "absent.rpm")
