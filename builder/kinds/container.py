"""CUDA container images per architecture: ``kind: container``, pushed as one multi-arch tag.

Layered as NVIDIA's images are (base -> runtime -> devel, a site's ``ci`` on top): each layer is a
recipe whose ``build.base`` names the recipe it builds on, so each is a target that depends on its
parent of the same arch. The bottom layer starts from ``debootstrap:<release>`` (a rootfs Kiln
bootstraps for the arch and imports with the right platform; no registry to pull from) or from a
registry reference.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from ..arch import Arch
from ..backends.container import ContainerBackend
from ..capabilities import Rule, version_tuple
from ..core.kind import Kind, Output
from ..publishers.routes import REGISTRY
from ..recipe import (
    CudaVersion,
    EnvName,
    FileRef,
    Name,
    PackageName,
    RegistryPublish,
    Release,
    ShortText,
    StrictModel,
    unique_items,
)
from ..verify.container_run import ContainerVerifier

DEBOOTSTRAP = "debootstrap:"
# A registry reference: host[:port]/path[:tag][@sha256:...] (lowercase path, as registries require).
ImageReference = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]([a-z0-9.-]*(:[0-9]{1,5})?/)?[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
        r"(@sha256:[0-9a-f]{64})?$"
    ),
]
DebootstrapBase = Annotated[str, StringConstraints(pattern=r"^debootstrap:[a-z0-9][a-z0-9.-]{0,31}$")]


class ContainerParent(StrictModel):
    recipe: Name = Field(description="The container recipe this layer builds on (same arch).")
    variant: Name | None = None


class RegistryBase(StrictModel):
    image: ImageReference = Field(description="A registry reference, pulled for the target's platform.")


class AptRepository(StrictModel):
    """An extra apt repository, e.g. NVIDIA's CUDA repos for sites that reach them."""

    uri: Annotated[
        str,
        StringConstraints(
            pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*|/?\{(nvidia|debian)_arch\}/?)*$"
        ),
    ] = Field(
        description="The repository's URL; {nvidia_arch} (x86_64, ppc64el, sbsa) or {debian_arch} "
        "(amd64, ppc64el, arm64) is replaced per target."
    )
    suite: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,64}$")] = Field(
        "/", description="The suite; '/' for a flat repository (NVIDIA's)."
    )
    components: list[Name] = Field(default_factory=list)
    key: FileRef = Field(description="The repository's signing key (ASCII-armored), relative to the recipe.")


class ContainerBuild(StrictModel):
    distro: Literal["debian", "ubuntu"] = "debian"
    release: Release
    base: DebootstrapBase | ContainerParent | RegistryBase | None = Field(
        None,
        description="debootstrap:<release> (the default: a rootfs bootstrapped for the arch), "
        "{recipe: NAME} (another container recipe's image of the same arch) or {image: REF}.",
    )
    cuda: CudaVersion | None = Field(None, description="CUDA version, e.g. '11.8'.")
    cuda_packages: Annotated[list[PackageName], AfterValidator(unique_items)] = Field(
        default_factory=list,
        description="CUDA packages of this layer; held (apt-mark hold): later layers cannot upgrade them.",
    )
    packages: Annotated[list[PackageName], AfterValidator(unique_items)] = Field(default_factory=list)
    apt_repositories: list[AptRepository] = Field(
        default_factory=list,
        description="Extra apt repositories (signed-by their key) for this layer's packages.",
    )
    components: Annotated[list[Name], Field(min_length=1)] = Field(default_factory=lambda: ["main"])
    env: dict[EnvName, ShortText] = Field(default_factory=dict)
    labels: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/-]{0,127}$")], ShortText] = (
        Field(default_factory=dict)
    )
    cmd: list[ShortText] | None = None

    @model_validator(mode="after")
    def _base_release(self) -> ContainerBuild:
        if isinstance(self.base, str) and self.base.removeprefix(DEBOOTSTRAP) != self.release:
            raise ValueError(f"base {self.base} is another release than release: {self.release}")
        return self

    @property
    def parent(self) -> ContainerParent | None:
        return self.base if isinstance(self.base, ContainerParent) else None


class ContainerVerify(StrictModel):
    commands: list[list[ShortText]] = Field(
        default_factory=list,
        description="Commands (argument lists) run in the built image; each must exit 0.",
    )
    nvcc: bool = Field(False, description="devel images: `nvcc --version` must work in the image.")


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


def _verifier(verify: Any) -> Any:

    return ContainerVerifier(verify)


KIND = Kind(
    name="container",
    builder=None,
    build_model=ContainerBuild,
    verify_model=ContainerVerify,
    publish_model=ContainerPublish,
    outputs=lambda build, arch: (Output("Dockerfile", f"containers/Dockerfile.{build.distro}.j2"),),
    rules=RULES,
    base=lambda build: (build.parent.recipe, build.parent.variant) if build.parent is not None else None,
    base_kinds=("container",),
    backend=ContainerBackend(),
    verifier=_verifier,
    route=REGISTRY,
    description="a container image per architecture, one multi-arch tag",
)
