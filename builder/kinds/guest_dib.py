"""Guest images built with diskimage-builder: ``kind: guest-image`` with ``build.builder: dib``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ..arch import Arch
from ..backends.dib import DISTRO_ELEMENTS, DibBackend, kiln_elements
from ..capabilities import Rule
from ..core.kind import Kind, Output
from ..publishers.routes import GLANCE
from ..recipe import ElementName, PackageName, Release, StrictModel, tool_env, unique_items
from .guest import GuestDistro, GuestPublish, GuestVerify, ImageFormat, boot_verifier, guest_facts

# What a recipe's build.env may set for disk-image-create: DIB's own settings (every knob of DIB and
# its elements is a DIB_* name). DIB_* names that make DIB run a program on the host (its Python,
# gzip, a logging config that may construct objects) are refused, as ALWAYS_REFUSED_ENV is for every
# kind (builder/recipe.py).
DIB_ENV = ("DIB_*",)
DIB_HOST_PROGRAMS = ("DIB_PYTHON_EXEC", "DIB_GZIP_BIN", "DIB_PYTHON_LOGGING_CONFIG_FILE", "DIB_RUN_PARTS")


class DibGuestBuild(StrictModel):
    builder: Literal["dib"]
    distro: GuestDistro
    release: Release
    elements: Annotated[list[ElementName], AfterValidator(unique_items)] = Field(
        default_factory=list, description="DIB elements beyond the distro element."
    )
    packages: Annotated[list[PackageName], AfterValidator(unique_items)] = Field(default_factory=list)
    formats: Annotated[list[ImageFormat], Field(min_length=1), AfterValidator(unique_items)] = Field(
        default_factory=lambda: ["qcow2"]
    )
    size_gb: int | None = Field(None, ge=1, le=2048, description="Root filesystem size; default: fit.")
    firmware: Literal["bios", "uefi"] = "bios"
    env: tool_env("disk-image-create", DIB_ENV, DIB_HOST_PROGRAMS) = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Extra DIB_* variables."
    )


OUTPUTS = (Output("dib.env", "dib/environment.j2"), Output("build.json", "dib/build.json.j2"))

RULES = (
    Rule(
        arch=Arch.PPC64LE,
        distro=None,
        refuses=lambda b: b.firmware == "uefi",
        key=("firmware",),
        reason="POWER guests boot through SLOF/Open Firmware, not UEFI; use firmware: bios",
    ),
    Rule(
        arch=Arch.AARCH64,
        distro=None,
        refuses=lambda b: b.firmware == "bios",
        key=("firmware",),
        reason="aarch64 guests boot with UEFI only; use firmware: uefi",
    ),
)

KIND = Kind(
    name="guest-image",
    builder="dib",
    build_model=DibGuestBuild,
    verify_model=GuestVerify,
    publish_model=GuestPublish,
    outputs=lambda build, arch: OUTPUTS,
    rules=RULES,
    elements=lambda build, arch: (
        DISTRO_ELEMENTS[build.distro],
        *build.elements,
        *kiln_elements(build, arch),
    ),
    backend=DibBackend(),
    verifier=boot_verifier,
    route=GLANCE,
    facts=guest_facts,
    description="a guest image built with diskimage-builder",
)
