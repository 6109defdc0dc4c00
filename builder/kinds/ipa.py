"""Ironic Python Agent ramdisks: ``kind: ipa-ramdisk`` (kernel + initramfs, and an ISO), built with
ironic-python-agent-builder (which runs DIB)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints

from ..arch import Arch
from ..backends.dib import DISTRO_ELEMENTS, kiln_elements
from ..backends.ipa import IpaBackend
from ..core.kind import Kind, Output
from ..core.route import Facts
from ..publishers.routes import IPA
from ..recipe import (
    BootVerify,
    ElementName,
    GlancePublish,
    Name,
    PackageName,
    Release,
    StrictModel,
    tool_env,
    unique_items,
)
from ..verify.ipa_boot import ipa_verifier as boot_verifier
from .guest_dib import DIB_ENV, DIB_HOST_PROGRAMS

# What a recipe's build.env may set for ironic-python-agent-builder (which runs DIB): DIB's settings,
# and what IPA-builder's own elements read besides (ironic-python-agent-ramdisk: whether firmware
# is removed from the ramdisk).
IPA_ENV = (*DIB_ENV, "IPA_REMOVE_FIRMWARE")

# A PyPI requirement without URLs or options: name, optional extras, optional version specifier.
PythonRequirement = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[a-z0-9,_-]+\])?((==|>=|<=|~=|!=|<|>)[0-9][0-9a-z.*+!-]{0,40})?$"
    ),
]
KernelArg = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}(=[A-Za-z0-9_.,:/@+-]{0,200})?$")]


class IpaBuild(StrictModel):
    distro: Literal["debian", "ubuntu", "centos"] = "debian"
    release: Release
    elements: Annotated[list[ElementName], AfterValidator(unique_items)] = Field(default_factory=list)
    ipa_version: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$")] | None = Field(
        None, description="ironic-python-agent release from PyPI; default: the newest at build time."
    )
    glean_version: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$")] | None = Field(
        None, description="glean (the ramdisk's network set-up) release from PyPI; default: the newest."
    )
    packages: Annotated[list[PackageName], AfterValidator(unique_items)] = Field(
        default_factory=list, description="Extra Debian packages in the ramdisk (e.g. lvm2, nvme-cli)."
    )
    raid: bool = Field(False, description="Software RAID: mdadm in the ramdisk (checked when it boots).")
    debug_login: bool = Field(
        False,
        description="A login for debugging (DIB's dynamic-login: an SSH key or password given on the kernel "
        "command line at boot, nothing baked in); the artifact's name and Glance properties say so.",
    )
    hardware_managers: Annotated[list[PythonRequirement], AfterValidator(unique_items)] = Field(
        default_factory=list,
        description="Extra hardware managers: Python packages installed into the agent's environment.",
    )
    kernel_args: list[KernelArg] = Field(
        default_factory=list, description="Kernel arguments baked into the ISO's boot menu (virtual media)."
    )
    iso: bool = Field(True, description="Also build an ISO for virtual-media boot.")
    compression: Literal["gzip", "xz"] = "gzip"
    components: Annotated[list[Name], Field(min_length=1)] = Field(
        default_factory=lambda: ["main"], description="Debian archive components (firmware is in non-free)."
    )
    env: tool_env("ironic-python-agent-builder", IPA_ENV, DIB_HOST_PROGRAMS) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )


class IpaVerify(StrictModel):
    boot: BootVerify = Field(default_factory=lambda: BootVerify(memory_mb=3072, timeout_s=1200))


HttpDirectory = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class HttpDirPublish(StrictModel):
    directory: HttpDirectory | None = Field(
        None,
        description="Directory under site.yaml's ipa_http.root for ipa.kernel, ipa.initramfs (ipa.iso) and "
        "their .sha256, as Bifrost expects; default: '<recipe>-<release>[-<variant>]-<arch>'.",
    )


class IpaPublish(StrictModel):
    glance: GlancePublish | None = None
    http: HttpDirPublish | None = Field(None, description="Also publish to an HTTP directory for Bifrost.")


def iso_for(build: Any, arch: Arch) -> bool:
    """An ISO (GRUB for BIOS and EFI) is built for x86_64 and aarch64: not for POWER, whose machines
    boot the kernel and initramfs over the network (petitboot)."""
    return bool(build.iso) and arch is not Arch.PPC64LE


def ipa_verifier(verify: Any) -> Any:
    """Boot kernel + initramfs (and the ISO) in QEMU and ask the agent's API (builder/verify/ipa_boot.py)."""

    return boot_verifier(verify)


# The ISO's boot menu; Kiln makes the ISO with grub-mkrescue (BIOS and EFI, no loop mount needed).
ISO_OUTPUTS = (Output("iso/grub.cfg", "ipa/grub.cfg.j2"),)
OUTPUTS = (Output("dib.env", "ipa/environment.j2"), Output("build.json", "ipa/build.json.j2"))


def _facts(build: Mapping[str, Any]) -> Facts:
    """What Glance tells operators of an agent ramdisk: its OS, IPA version, whether it has a debug login."""
    version = build.get("ipa_version")
    return Facts(
        distro=str(build.get("distro") or ""),
        os_release=str(build.get("release") or ""),
        ipa_version=str(version) if version else None,
        debug_login=build.get("debug_login") is True,
    )


KIND = Kind(
    name="ipa-ramdisk",
    builder=None,
    build_model=IpaBuild,
    verify_model=IpaVerify,
    publish_model=IpaPublish,
    outputs=lambda build, arch: OUTPUTS + (ISO_OUTPUTS if iso_for(build, arch) else ()),
    elements=lambda build, arch: (
        DISTRO_ELEMENTS[build.distro],
        *build.elements,
        *(["dynamic-login"] if build.debug_login else []),
        *(["kiln-ipa-extras"] if build.packages or build.raid or build.hardware_managers else []),
        *kiln_elements(build, arch),
    ),
    backend=IpaBackend(),
    verifier=ipa_verifier,
    route=IPA,  # Glance (aki/ari) and the Bifrost HTTP directory
    facts=_facts,
    description="an Ironic Python Agent ramdisk (kernel, initramfs, ISO)",
)
