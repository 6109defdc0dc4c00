"""Guest images built with Packer: ``kind: guest-image`` with ``build.builder: packer``, on top of
another recipe's image (``build.base``) or from an installer ISO."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from ..backends.packer import PackerBackend
from ..core.kind import Kind, Output
from ..publishers.routes import GLANCE
from ..recipe import (
    FileRef,
    HttpUrl,
    Name,
    Release,
    ShortText,
    StrictModel,
    refusing_credentials,
    unique_items,
)
from .guest import GuestDistro, GuestPublish, GuestVerify, ImageFormat, boot_verifier, guest_facts
from .guest_dib import RULES


class PackerBase(StrictModel):
    recipe: Name = Field(description="The Kiln recipe whose image this build starts from.")
    variant: Name | None = None


# Packer downloads the ISO itself from the URL rendered into its template: userinfo there would be
# written into the build directory, so a login has no place in it (site.yaml lends none to Packer).
IsoUrl = Annotated[
    HttpUrl,
    AfterValidator(
        refusing_credentials(
            "serve the ISO without a login, or download it into the workspace and give build.iso.path"
        )
    ),
]


class IsoSource(StrictModel):
    """An installer ISO: exactly one of ``url`` or ``path`` (a file in the workspace)."""

    url: IsoUrl | None = None
    path: FileRef | None = None
    checksum: Annotated[str, StringConstraints(pattern=r"^(none|(sha256|sha512):[0-9a-f]{64,128})$")]
    answer_file: FileRef | None = Field(None, description="preseed/kickstart served over Packer's HTTP.")
    boot_command: list[ShortText] = Field(
        default_factory=list,
        description="Keys Packer types at boot; write @@HTTP@@ for the URL of Packer's HTTP server.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> IsoSource:
        if (self.url is None) == (self.path is None):
            raise ValueError("needs exactly one of url, path")
        return self


class FileCopy(StrictModel):
    source: FileRef
    destination: Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$")]


class Provisioner(StrictModel):
    """Exactly one of ``shell`` (inline commands), ``script`` (a file) or ``file`` (a copy)."""

    shell: list[ShortText] | None = None
    script: FileRef | None = None
    file: FileCopy | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Provisioner:
        given = [k for k in ("shell", "script", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of shell, script, file (got {', '.join(given) or 'none'})")
        return self


class PackerGuestBuild(StrictModel):
    builder: Literal["packer"]
    distro: GuestDistro
    release: Release
    base: PackerBase | None = Field(None, description="Start from another Kiln target's image.")
    iso: IsoSource | None = Field(None, description="Or install from an ISO with an answer file.")
    provisioners: list[Provisioner] = Field(default_factory=list)
    formats: Annotated[list[ImageFormat], Field(min_length=1), AfterValidator(unique_items)] = Field(
        default_factory=lambda: ["qcow2"]
    )
    disk_size_gb: int = Field(8, ge=1, le=2048)
    memory_mb: int = Field(2048, ge=256, le=262144)
    cpus: int = Field(2, ge=1, le=256)
    ssh_username: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "debian"
    firmware: Literal["bios", "uefi"] = "bios"

    @model_validator(mode="after")
    def _one_source(self) -> PackerGuestBuild:
        if (self.base is None) == (self.iso is None):
            raise ValueError("needs exactly one of base (another recipe's image) or iso")
        return self


OUTPUTS = (Output("image.pkr.hcl", "packer/qemu.pkr.hcl.j2"), Output("seed/meta-data", "packer/meta-data.j2"))

KIND = Kind(
    name="guest-image",
    builder="packer",
    build_model=PackerGuestBuild,
    verify_model=GuestVerify,
    publish_model=GuestPublish,
    outputs=lambda build, arch: OUTPUTS,
    rules=RULES,  # firmware rules are the same for every guest image
    base=lambda build: (build.base.recipe, build.base.variant) if build.base is not None else None,
    base_kinds=("guest-image",),
    backend=PackerBackend(),
    verifier=boot_verifier,
    route=GLANCE,
    facts=guest_facts,
    description="a guest image built with Packer",
)
