"""Glance properties of an IPA build's kernel, ramdisk and ISO: no guest properties, Kiln's and IPA's own."""

from __future__ import annotations

from typing import Any

import pytest

from builder.kinds import ipa as ipa_kind
from builder.manifest import BuildManifest
from builder.publishers import glance


def image_properties(manifest: BuildManifest, extra: dict[str, str], *artifact: str) -> dict[str, str]:
    """An agent's image properties as publishing makes them: with its kind's facts about the build."""
    return glance.image_properties(manifest, extra, *artifact, facts=ipa_kind.KIND.facts(manifest.build))


GUEST_PROPERTIES = {
    "hw_disk_bus",
    "hw_scsi_model",
    "hw_qemu_guest_agent",
    "os_require_quiesce",
    "hw_firmware_type",
    "hw_machine_type",
    "os_distro",
    "os_version",
}


def ipa(arch: str = "x86_64", **build: Any) -> BuildManifest:
    return BuildManifest(
        target=f"ipa:bookworm:{arch}",
        recipe="ipa",
        kind="ipa-ramdisk",
        arch=arch,
        release="bookworm",
        variant=None,
        digest="e" * 64,
        artifacts=(),
        build={"distro": "debian", "release": "bookworm", **build},
        build_id=3,
        source_commit="abc123",
    )


@pytest.mark.parametrize("artifact_type", ["kernel", "ramdisk", "iso"])
@pytest.mark.parametrize("arch", ["x86_64", "ppc64le", "aarch64"])
def test_kernel_ramdisk_and_iso_carry_no_guest_properties(artifact_type, arch):
    props = image_properties(ipa(arch), {}, artifact_type, "x")
    assert GUEST_PROPERTIES.isdisjoint(props)
    assert props["architecture"] == arch


def test_a_ramdisk_carries_kiln_properties_and_which_artifact_it_is():
    props = image_properties(ipa(), {}, "ramdisk", "initramfs")
    assert props["kiln_digest"] == "e" * 64 and props["kiln_target"] == "ipa:bookworm:x86_64"
    assert props["kiln_recipe"] == "ipa" and props["kiln_build"] == "3"
    assert props["kiln_source_commit"] == "abc123" and props["kiln_artifact"] == "initramfs"


def test_the_ipa_version_the_build_names_is_a_property():
    assert image_properties(ipa(ipa_version="10.2.0"), {}, "kernel", "kernel")["kiln_ipa_version"] == "10.2.0"
    assert "kiln_ipa_version" not in image_properties(ipa(ipa_version=None), {}, "kernel", "kernel")


def test_a_debug_login_says_so_and_its_absence_says_nothing():
    assert image_properties(ipa(debug_login=True), {}, "ramdisk", "initramfs")["kiln_debug_login"] == "true"
    assert "kiln_debug_login" not in image_properties(ipa(debug_login=False), {}, "ramdisk", "initramfs")


def test_a_recipe_cannot_forge_the_debug_login_or_ipa_version_properties():
    extra = {"kiln_debug_login": "false", "kiln_ipa_version": "0", "kernel_id": "k-1"}
    props = image_properties(ipa(debug_login=True, ipa_version="10.2.0"), extra, "ramdisk", "initramfs")
    assert props["kiln_debug_login"] == "true" and props["kiln_ipa_version"] == "10.2.0"
    assert props["kernel_id"] == "k-1"


def test_a_disk_image_still_gets_guest_properties_and_no_artifact_mark():
    props = image_properties(ipa(), {})
    assert {"hw_disk_bus", "hw_firmware_type", "os_distro"} <= set(props)
    assert "kiln_artifact" not in props
