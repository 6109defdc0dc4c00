"""Ironic Python Agent ramdisks: ``kind: ipa-ramdisk`` (kernel + initramfs, and an ISO), built with
ironic-python-agent-builder (which runs DIB)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from ..backends.dib import DISTRO_ELEMENTS, kiln_elements
from ..recipe import (
    BootVerify,
    ElementName,
    EnvName,
    GlancePublish,
    Name,
    Release,
    ShortText,
    StrictModel,
    _unique,
)
from .base import Kind, Output


class IpaBuild(StrictModel):
    distro: Literal["debian", "ubuntu", "centos"] = "debian"
    release: Release
    elements: Annotated[list[ElementName], AfterValidator(_unique)] = Field(default_factory=list)
    ipa_version: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)*$")] | None = Field(
        None, description="ironic-python-agent release from PyPI; default: the newest."
    )
    iso: bool = Field(True, description="Also build an ISO for virtual-media boot.")
    compression: Literal["gzip", "xz"] = "gzip"
    components: Annotated[list[Name], Field(min_length=1)] = Field(
        default_factory=lambda: ["main"], description="Debian archive components (firmware is in non-free)."
    )
    env: dict[EnvName, ShortText] = Field(default_factory=dict)


class IpaVerify(StrictModel):
    boot: BootVerify = Field(default_factory=lambda: BootVerify(memory_mb=3072, timeout_s=1200))


class IpaPublish(StrictModel):
    glance: GlancePublish | None = None


OUTPUTS = (Output("dib.env", "ipa/environment.j2"), Output("build.json", "ipa/build.json.j2"))

KIND = Kind(
    name="ipa-ramdisk",
    builder=None,
    build_model=IpaBuild,
    verify_model=IpaVerify,
    publish_model=IpaPublish,
    outputs=lambda build, arch: OUTPUTS,
    elements=lambda build, arch: (
        DISTRO_ELEMENTS[build.distro],
        *build.elements,
        *kiln_elements(build, arch),
    ),
    publish_route="glance",
    description="an Ironic Python Agent ramdisk (kernel, initramfs, ISO)",
)
