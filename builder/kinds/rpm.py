"""ppc64le SRPM rebuilds: ``kind: rpm-rebuild``: take a source RPM, change it a little, rebuild it,
sign it and publish it to a yum repo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PrivateAttr, StringConstraints, ValidationInfo, model_validator

from ..arch import Arch
from ..backends.rpmbuild import RpmbuildBackend
from ..capabilities import Rule
from ..core.kind import Kind, Output
from ..core.route import Facts
from ..publishers.routes import REPO
from ..recipe import (
    FileRef,
    MacroName,
    PackageName,
    Release,
    RepoPublish,
    ShortText,
    StrictModel,
    UrlWithoutCredentials,
)
from ..rpm.order import rebuild_order
from ..rpm.source import arch_refusal, read_header
from ..verify.rpm_install import RpmInstallVerifier

# rpm's own directory, database and macro-file macros: a recipe that defined one would move where
# rpmbuild reads and writes (`_srcrpmdir /etc`) or what it loads, out of the build's own tree.
RPM_PATH_MACROS = frozenset({
    "_topdir", "_srcrpmdir", "_builddir", "_rpmdir", "_sourcedir", "_specdir", "_buildrootdir",
    "buildroot", "_buildroot", "_tmppath", "_dbpath", "_rpmfilename", "_build_name_fmt",
    "_rpmconfigdir", "_usrlibrpm", "macrofiles", "_keyringpath", "_gpg_path", "_gpg_name",
})  # fmt: skip
# What makes a macro value run code or read files when rpm expands it: shell (`%(...)`), Lua,
# expressions, and the built-ins that expand, load or decompress.
MACRO_CODE = ("%(", "%{lua", "%[", "%{expand", "%{load", "%{uncompress", "%{shescape", "%{macrobody")


def _defined_macro_name(name: str) -> str:
    if name in RPM_PATH_MACROS or name.startswith("__"):
        raise ValueError(
            f"{name} is one of rpm's own path or helper macros (rpm runs or reads what it names); "
            "a recipe may not define it"
        )
    return name


def _data_only_value(value: str) -> str:
    found = next((code for code in MACRO_CODE if code in value), None)
    if found is not None:
        raise ValueError(
            f"{found!r} would make rpm run code or read a file when it expands this value; "
            "defines hold data (other macros may be referenced as %{name})"
        )
    return value


DefinedMacro = Annotated[MacroName, AfterValidator(_defined_macro_name)]
MacroValue = Annotated[ShortText, AfterValidator(_data_only_value)]


class SrpmSource(StrictModel):
    """Exactly one of ``path`` (a file in the workspace), ``url``, or ``package`` (+ ``repo``)."""

    path: FileRef | None = None
    url: UrlWithoutCredentials | None = None  # a login comes from site.yaml (builder/rpm/credentials.py)
    package: PackageName | None = None
    repo: UrlWithoutCredentials | None = Field(None, description="Repo base URL to find `package` in.")
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
    defines: dict[DefinedMacro, MacroValue] = Field(
        default_factory=dict,
        description="Extra rpm macros, as data: not rpm's path macros; no %(...), %{lua:...}, %[...].",
    )
    patches: list[FileRef] = Field(default_factory=list, description="Patches applied after upstream's.")
    without: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]] = Field(
        default_factory=list, description="bconds to build --without (e.g. tests, docs)."
    )
    run_check: bool = Field(True, description="Run %check (under emulation on a foreign host).")
    verify_signature: bool = Field(
        True, description="Check the SRPM's signature against trusted_keys before unpacking it."
    )
    trusted_keys: list[FileRef] = Field(
        default_factory=list, description="ASCII-armored public keys the SRPM may be signed with."
    )
    build_requires_map: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.+()/:-]{1,200}$")],
        list[PackageName],
    ] = Field(default_factory=dict, description="BuildRequire -> Debian packages (overrides Kiln's table).")
    build_root: Literal["debian-chroot", "mock"] = Field(
        "debian-chroot", description="debian-chroot (this host) or mock (EL hosts; not run in CI)."
    )
    # The workspace this was validated in (not a recipe key): the ExclusiveArch rule reads the SRPM.
    _workspace_root: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _remember_workspace(self, info: ValidationInfo) -> RpmRebuildBuild:
        workspace = (info.context or {}).get("workspace")
        self._workspace_root = getattr(workspace, "root", None)
        return self


class RpmVerify(StrictModel):
    install: bool = Field(True, description="dnf-install the built packages into an installroot.")


class RpmPublish(StrictModel):
    repo: RepoPublish | None = Field(default_factory=RepoPublish)


OUTPUTS = (
    Output("kiln.macros", "rpm/kiln.macros.j2"),
    Output("spec-changes.json", "rpm/spec-changes.json.j2"),
    Output("build.json", "rpm/build.json.j2"),
)
MOCK_CONFIG = Output("mock.cfg", "rpm/mock.cfg.j2")


def _outputs(build: RpmRebuildBuild, arch: object) -> tuple[Output, ...]:
    return (*OUTPUTS, MOCK_CONFIG) if build.build_root == "mock" else OUTPUTS


def _verifier(verify_settings: RpmVerify) -> object | None:
    if not verify_settings.install:
        return None

    return RpmInstallVerifier()


def _local_srpm_refusal(build: RpmRebuildBuild, arch: object) -> bool:
    return _srpm_arch_refusal(build, arch) is not None


def _srpm_arch_refusal(build: RpmRebuildBuild, arch: object) -> str | None:
    """At validate time, where the SRPM is a workspace file: its ExclusiveArch/ExcludeArch."""
    if build.source.path is None:
        return None

    if build._workspace_root is None:
        return None
    try:
        return arch_refusal(read_header(build._workspace_root / str(build.source.path)), arch)  # type: ignore[arg-type]
    except Exception:  # not readable here: the build refuses it with the reason
        return None


RULES = tuple(
    Rule(
        arch=arch,
        distro=None,
        refuses=lambda build, arch=arch: _local_srpm_refusal(build, arch),
        key=("source", "path"),
        reason=f"the SRPM's ExclusiveArch/ExcludeArch rules out {arch.rpm}",
    )
    for arch in Arch
)


def _peers(recipes: object, root: object) -> dict[str, tuple[str, ...]]:

    return rebuild_order(recipes, root)  # type: ignore[arg-type]


def _backend() -> object:

    return RpmbuildBackend()


KIND = Kind(
    name="rpm-rebuild",
    builder=None,
    build_model=RpmRebuildBuild,
    verify_model=RpmVerify,
    publish_model=RpmPublish,
    outputs=_outputs,  # type: ignore[arg-type]
    rules=RULES,
    peers=_peers,
    backend=_backend(),  # type: ignore[arg-type]
    verifier=_verifier,  # type: ignore[arg-type]
    route=REPO,
    facts=lambda build: Facts(
        distro=str(build.get("distro") or ""), os_release=str(build.get("release") or "")
    ),
    description="an SRPM rebuilt for another architecture",
)
