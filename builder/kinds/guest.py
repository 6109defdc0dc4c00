"""What guest images built with DIB and with Packer share: distros, formats, verification (a boot in
QEMU) and publishing (Glance)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from ..core.kind import Verifier
from ..core.route import Facts
from ..recipe import BootVerify, GlancePublish, StrictModel
from ..verify.image_boot import BootVerifier

GuestDistro = Literal["debian", "ubuntu", "centos", "rocky", "almalinux", "fedora"]
ImageFormat = Literal["qcow2", "raw"]


class GuestVerify(StrictModel):
    boot: BootVerify = Field(default_factory=BootVerify)


class GuestPublish(StrictModel):
    glance: GlancePublish | None = None


def boot_verifier(verify: Any) -> Verifier | None:
    """The boot test, unless the recipe switched it off (verify.boot.enabled: false)."""

    return BootVerifier(verify.boot) if verify.boot.enabled else None


def guest_facts(build: Mapping[str, Any]) -> Facts:
    """What Glance tells Nova of a guest image: its OS (``os_distro``, ``os_version``) and firmware."""
    firmware = build.get("firmware")
    return Facts(
        distro=str(build.get("distro") or ""),
        os_release=str(build.get("release") or ""),
        firmware=str(firmware) if firmware else None,
    )
