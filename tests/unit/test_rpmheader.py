"""Reading NAME and ARCH from an RPM header in Python, checked against rpm itself."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from builder.errors import InvalidInput
from builder.rpm.header import LEAD_MAGIC, LEAD_SIZE, name_and_arch
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


def _package_with(name: bytes, arch: bytes) -> bytes:
    """A minimal RPM: lead, an empty signature header, a main header with NAME and ARCH only."""
    empty_signature = b"\x8e\xad\xe8\x01" + b"\0" * 4 + struct.pack(">II", 0, 0)
    data = name + b"\0" + arch + b"\0"
    index = struct.pack(">iiii", 1000, 6, 0, 1) + struct.pack(">iiii", 1022, 6, len(name) + 1, 1)
    main = b"\x8e\xad\xe8\x01" + b"\0" * 4 + struct.pack(">II", 2, len(data)) + index + data
    return LEAD_MAGIC + b"\0" * (LEAD_SIZE - 4) + empty_signature + main


def test_a_minimal_header_is_read(tmp_path):
    path = tmp_path / "ok.rpm"
    path.write_bytes(_package_with(b"kiln-tiny", b"ppc64le"))
    assert name_and_arch(path) == ("kiln-tiny", "ppc64le")


@pytest.mark.parametrize(
    ("name", "arch"), [(b"", b"noarch"), (b"/etc/evil", b"noarch"), (b"../up", b"x86_64"), (b"ok", b"")]
)
def test_names_that_are_empty_or_paths_are_refused(tmp_path, name, arch):
    path = tmp_path / "crafted.rpm"
    path.write_bytes(_package_with(name, arch))
    with pytest.raises(InvalidInput, match=r"crafted\.rpm: not a package name and arch rpm would build"):
        name_and_arch(path)


def test_an_offset_past_the_data_store_is_refused(tmp_path):
    crafted = bytearray(_package_with(b"kiln-tiny", b"noarch"))
    offset_field = LEAD_SIZE + 16 + 16 + 8  # the main header's first index entry, its offset
    crafted[offset_field : offset_field + 4] = struct.pack(">i", 10_000)
    path = tmp_path / "offset.rpm"
    path.write_bytes(bytes(crafted))
    with pytest.raises(InvalidInput, match=r"offset\.rpm: not an RPM \(no string tag 1000"):
        name_and_arch(path)
