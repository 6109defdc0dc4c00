"""Glance image properties per architecture, and the reader that hashes what it uploads."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest

from builder.kinds.guest import guest_facts
from builder.manifest import BuildManifest
from builder.publishers import glance
from builder.publishers.glance import HASH_ALGO, HashingReader


def image_properties(manifest: BuildManifest, extra: dict[str, str]) -> dict[str, str]:
    """A guest image's properties as publishing makes them: with its kind's facts about the build."""
    return glance.image_properties(manifest, extra, facts=guest_facts(manifest.build))


def manifest(arch: str = "x86_64", build: dict[str, Any] | None = None, **overrides: Any) -> BuildManifest:
    fields: dict[str, Any] = {
        "target": f"debian-12:bookworm:{arch}",
        "recipe": "debian-12",
        "kind": "guest-image",
        "arch": arch,
        "release": "bookworm",
        "variant": None,
        "digest": "d" * 64,
        "artifacts": (),
        "build": {"distro": "debian"} if build is None else build,
    }
    fields.update(overrides)
    return BuildManifest(**fields)


# --- per architecture ---------------------------------------------------------------------------


def test_ppc64le_is_pseries_without_firmware_type():
    props = image_properties(manifest("ppc64le"), {})
    assert props["architecture"] == "ppc64le"
    assert props["hw_machine_type"] == "pseries"
    assert "hw_firmware_type" not in props


def test_ppc64le_ignores_a_firmware_setting():
    props = image_properties(manifest("ppc64le", build={"distro": "debian", "firmware": "uefi"}), {})
    assert "hw_firmware_type" not in props


def test_debian_arch_spelling_is_written_as_glance_wants():
    # The manifest may carry any accepted spelling; Glance/Nova want ppc64le, x86_64, aarch64.
    assert image_properties(manifest("ppc64el"), {})["architecture"] == "ppc64le"
    assert image_properties(manifest("amd64"), {})["architecture"] == "x86_64"
    assert image_properties(manifest("arm64"), {})["architecture"] == "aarch64"


@pytest.mark.parametrize(("firmware", "expected"), [(None, "bios"), ("bios", "bios"), ("uefi", "uefi")])
def test_x86_64_firmware_follows_the_build(firmware, expected):
    build: dict[str, Any] = {"distro": "debian"}
    if firmware is not None:
        build["firmware"] = firmware
    props = image_properties(manifest("x86_64", build=build), {})
    assert props["architecture"] == "x86_64"
    assert props["hw_firmware_type"] == expected
    assert "hw_machine_type" not in props


def test_aarch64_defaults_to_uefi():
    props = image_properties(manifest("aarch64"), {})
    assert props["architecture"] == "aarch64"
    assert props["hw_firmware_type"] == "uefi"
    assert "hw_machine_type" not in props


def test_common_hardware_properties():
    props = image_properties(manifest(), {})
    assert props["hw_disk_bus"] == "scsi"
    assert props["hw_scsi_model"] == "virtio-scsi"
    assert props["hw_qemu_guest_agent"] == "yes"
    assert props["os_require_quiesce"] == "yes"


# --- os_distro / os_version ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distro", "release", "version"),
    [
        ("debian", "bookworm", "12"),
        ("debian", "trixie", "13"),
        ("ubuntu", "noble", "24.04"),
        ("rocky", "9", "9"),
    ],
)
def test_os_version_maps_codenames(distro, release, version):
    props = image_properties(manifest(build={"distro": distro, "release": release}, release=release), {})
    assert props["os_distro"] == distro
    assert props["os_version"] == version


def test_build_release_wins_over_manifest_release():
    props = image_properties(manifest(build={"distro": "debian", "release": "trixie"}, release="x"), {})
    assert props["os_version"] == "13"


def test_release_falls_back_to_the_manifest():
    assert image_properties(manifest(build={"distro": "debian"}), {})["os_version"] == "12"


def test_no_distro_means_no_os_properties():
    props = image_properties(manifest(build={}), {})
    assert "os_distro" not in props
    assert "os_version" not in props


# --- kiln_* -------------------------------------------------------------------------------------


def test_kiln_properties_identify_the_build():
    m = manifest(build_id=42, source_commit="abc123")
    props = image_properties(m, {})
    assert props["kiln_recipe"] == "debian-12"
    assert props["kiln_target"] == "debian-12:bookworm:x86_64"
    assert props["kiln_digest"] == "d" * 64
    assert props["kiln_build"] == "42"
    assert props["kiln_source_commit"] == "abc123"
    assert all(isinstance(v, str) for v in props.values())


def test_build_id_zero_is_still_recorded():
    assert image_properties(manifest(build_id=0), {})["kiln_build"] == "0"


def test_optional_kiln_properties_are_left_out():
    props = image_properties(manifest(), {})
    assert "kiln_build" not in props
    assert "kiln_source_commit" not in props


def test_recipe_properties_override_defaults():
    extra = {"os_version": "12.5", "hw_disk_bus": "virtio", "hw_firmware_type": "uefi", "owner_team": "hpc"}
    props = image_properties(manifest("x86_64"), extra)
    assert props["os_version"] == "12.5"
    assert props["hw_disk_bus"] == "virtio"
    assert props["hw_firmware_type"] == "uefi"
    assert props["owner_team"] == "hpc"
    assert props["architecture"] == "x86_64"


def test_extra_is_not_modified():
    extra = {"os_version": "12.5"}
    image_properties(manifest(), extra)
    assert extra == {"os_version": "12.5"}


def test_recipe_properties_cannot_overwrite_kiln_bookkeeping():
    props = image_properties(manifest(), {"kiln_digest": "forged", "kiln_target": "other"})
    assert props["kiln_digest"] == "d" * 64
    assert props["kiln_target"] == "debian-12:bookworm:x86_64"


# --- HashingReader ------------------------------------------------------------------------------


def test_hash_covers_exactly_the_bytes_returned():
    data = bytes(range(256)) * 1000
    reader = HashingReader(io.BytesIO(data))
    got = reader.read(1000) + reader.read(7) + reader.read(-1)
    assert got == data
    assert reader.bytes_read == len(data)
    assert reader.hash.name == HASH_ALGO == "sha512"
    assert reader.hash.hexdigest() == hashlib.sha512(data).hexdigest()


def test_partial_read_hashes_only_what_was_read():
    data = b"abcdefghij" * 10
    reader = HashingReader(io.BytesIO(data))
    assert reader.read(30) == data[:30]
    assert reader.bytes_read == 30
    assert reader.hash.hexdigest() == hashlib.sha512(data[:30]).hexdigest()


def test_end_of_file_changes_nothing():
    progress: list[int] = []
    reader = HashingReader(io.BytesIO(b"xyz"), on_progress=progress.append)
    assert reader.read(10) == b"xyz"
    assert reader.read(10) == b""
    assert reader.bytes_read == 3
    assert progress == [3]
    assert reader.hash.hexdigest() == hashlib.sha512(b"xyz").hexdigest()


def test_progress_reports_the_running_total():
    progress: list[int] = []
    reader = HashingReader(io.BytesIO(b"x" * 25), on_progress=progress.append)
    while reader.read(10):
        pass
    assert progress == [10, 20, 25]


def test_iteration_yields_chunks_and_hashes_them():
    data = b"\x01" * ((4 << 20) + 123)
    reader = HashingReader(io.BytesIO(data))
    chunks = list(reader)
    assert [len(c) for c in chunks] == [4 << 20, 123]
    assert b"".join(chunks) == data
    assert reader.bytes_read == len(data)
    assert reader.hash.hexdigest() == hashlib.sha512(data).hexdigest()


def test_len_is_the_file_size(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"z" * 4321)
    with path.open("rb") as handle:
        assert len(HashingReader(handle)) == 4321
