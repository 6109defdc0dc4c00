"""CUDA container images per architecture: ``kind: container``, pushed as one multi-arch tag."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from ..arch import Arch
from ..capabilities import Rule, version_tuple
from ..recipe import (
    CudaVersion,
    EnvName,
    Name,
    PackageName,
    RegistryPublish,
    Release,
    ShortText,
    StrictModel,
    _unique,
)
from .base import Kind, Output


class ContainerBuild(StrictModel):
    distro: Literal["debian", "ubuntu"] = "debian"
    release: Release
    cuda: CudaVersion | None = Field(None, description="CUDA version, e.g. '11.8'.")
    packages: Annotated[list[PackageName], AfterValidator(_unique)] = Field(default_factory=list)
    components: Annotated[list[Name], Field(min_length=1)] = Field(default_factory=lambda: ["main"])
    env: dict[EnvName, ShortText] = Field(default_factory=dict)
    labels: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/-]{0,127}$")], ShortText] = (
        Field(default_factory=dict)
    )
    cmd: list[ShortText] | None = None


class ContainerVerify(StrictModel):
    commands: list[list[ShortText]] = Field(
        default_factory=list,
        description="Commands (argument lists) run in the built image; each must exit 0.",
    )


class ContainerPublish(StrictModel):
    registry: RegistryPublish | None = None


RULES = (
    Rule(
        arch=Arch.PPC64LE,
        distro=None,
        refuses=lambda b: b.cuda is not None and version_tuple(b.cuda) > (12, 4),
        key=("cuda",),
        reason="NVIDIA dropped ppc64le after CUDA 12.4; use 12.4 or older for ppc64le",
    ),
    Rule(
        arch=None,
        distro="debian",
        refuses=lambda b: b.cuda is not None and b.release in ("bookworm", "12") and b.cuda != "11.8",
        key=("cuda",),
        reason="Debian 12 ships CUDA 11.8 only (non-free nvidia-cuda-toolkit); use cuda: '11.8'",
    ),
)

KIND = Kind(
    name="container",
    builder=None,
    build_model=ContainerBuild,
    verify_model=ContainerVerify,
    publish_model=ContainerPublish,
    outputs=lambda build, arch: (Output("Dockerfile", f"containers/Dockerfile.{build.distro}.j2"),),
    rules=RULES,
    publish_route="registry",
    description="a container image per architecture, one multi-arch tag",
)
