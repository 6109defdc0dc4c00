"""What guest images built with DIB and with Packer share: distros, formats, verification (a boot in
QEMU) and publishing (Glance)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..recipe import BootVerify, GlancePublish, StrictModel
from ..verify.base import Verifier

GuestDistro = Literal["debian", "ubuntu", "centos", "rocky", "almalinux", "fedora"]
ImageFormat = Literal["qcow2", "raw"]


class GuestVerify(StrictModel):
    boot: BootVerify = Field(default_factory=BootVerify)


class GuestPublish(StrictModel):
    glance: GlancePublish | None = None


def boot_verifier(verify: Any) -> Verifier | None:
    """The boot test, unless the recipe switched it off (verify.boot.enabled: false)."""
    from ..verify.image_boot import BootVerifier

    return BootVerifier(verify.boot) if verify.boot.enabled else None
