"""ppc64le SRPM rebuilds: ``kind: rpm-rebuild``: take a source RPM, change it a little, rebuild it,
sign it and publish it to a yum repo."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from ..recipe import FileRef, HttpUrl, MacroName, PackageName, Release, RepoPublish, ShortText, StrictModel
from .base import Kind, Output


class SrpmSource(StrictModel):
    """Exactly one of ``path`` (a file in the workspace), ``url``, or ``package`` (+ ``repo``)."""

    path: FileRef | None = None
    url: HttpUrl | None = None
    package: PackageName | None = None
    repo: HttpUrl | None = Field(None, description="Repo base URL to find `package` in.")
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SrpmSource:
        given = [k for k in ("path", "url", "package") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of path, url, package (got {', '.join(given) or 'none'})")
        if self.package is not None and self.repo is None:
            raise ValueError("package needs repo (the base URL of the repo that has it)")
        if self.url is not None and self.sha256 is None:
            raise ValueError("url needs sha256 so that the download can be checked")
        return self


class RpmRebuildBuild(StrictModel):
    source: SrpmSource
    distro: Literal["el", "fedora"] = "el"
    release: Release
    dist: Annotated[str, StringConstraints(pattern=r"^\.[a-z0-9_.]{1,32}$")] | None = Field(
        None, description="Value of %dist; default: .el<release> / .fc<release>."
    )
    release_suffix: Annotated[str, StringConstraints(pattern=r"^\.?[A-Za-z0-9_.]{1,32}$")] = Field(
        ".kiln1", description="Appended to the spec's Release so the rebuild sorts after upstream."
    )
    defines: dict[MacroName, ShortText] = Field(default_factory=dict, description="Extra rpm macros.")
    patches: list[FileRef] = Field(default_factory=list, description="Patches applied after upstream's.")
    without: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]] = Field(
        default_factory=list, description="bconds to build --without (e.g. tests, docs)."
    )
    run_check: bool = Field(True, description="Run %check (under emulation on a foreign host).")


class RpmVerify(StrictModel):
    install: bool = Field(True, description="dnf-install the built packages into an installroot.")


class RpmPublish(StrictModel):
    repo: RepoPublish | None = Field(default_factory=RepoPublish)


OUTPUTS = (
    Output("kiln.macros", "rpm/kiln.macros.j2"),
    Output("spec-changes.json", "rpm/spec-changes.json.j2"),
    Output("build.json", "rpm/build.json.j2"),
)

KIND = Kind(
    name="rpm-rebuild",
    builder=None,
    build_model=RpmRebuildBuild,
    verify_model=RpmVerify,
    publish_model=RpmPublish,
    outputs=lambda build, arch: OUTPUTS,
    publish_route="repo",
    description="an SRPM rebuilt for another architecture",
)
