"""Recipe models: what a maintainer writes, for all four kinds, as strict pydantic v2 models.

A recipe file is YAML with a ``kind`` and the common keys ``name``, ``arches``, ``matrix``, ``build``
(the kind's settings), ``verify`` and ``publish``. Unknown keys are errors. Loading, defaults and
error locations live in :mod:`builder.recipes`; this module only says what is valid.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo

from .arch import Arch
from .workspace import PathRefused, Workspace

# --- small value types -------------------------------------------------------------------------

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"),
    Field(description="Lowercase letters, digits and '-', starting with a letter or digit (max 63)."),
]
Release = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,31}$"),
    Field(description="A distro release: a codename (bookworm) or a version (9, 22.04)."),
]
PackageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9+._:-]{0,127}$")]
ElementName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")]
MacroName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
CudaVersion = Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+$")]
ShortText = Annotated[str, StringConstraints(max_length=4096)]


def _parse_arch(value: Any) -> Any:
    return Arch.parse(value) if isinstance(value, str) else value


ArchName = Annotated[Arch, BeforeValidator(_parse_arch)]


def _resolve_file(value: str, info: ValidationInfo) -> str:
    """Turn a path written in a recipe into a workspace-relative one, refusing escapes."""
    context = info.context or {}
    workspace: Workspace | None = context.get("workspace")
    base_dir = context.get("base_dir")
    if workspace is None or base_dir is None:
        return value  # validated without a workspace (e.g. schema tooling): keep as written
    # A loader passes a dict for the run: many recipes in one directory name the same file
    # (patches, scripts), and resolving costs several stats. Refusals are not kept.
    done: dict[tuple[str, str], str] | None = context.get("resolved_files")
    key = (str(base_dir), value)
    if done is not None and key in done:
        return done[key]
    try:
        relative = workspace.relative(workspace.resolve_reference(value, base_dir), resolved=True)
    except PathRefused as exc:
        raise ValueError(str(exc)) from None
    if done is not None:
        done[key] = relative
    return relative


class _IsFileRef:
    """Marker in FileRef's metadata, so that :func:`file_refs` can find every referenced file."""


FileRef = Annotated[
    str,
    _IsFileRef(),
    AfterValidator(_resolve_file),
    Field(description="A file path relative to the recipe file; must stay inside the workspace."),
]


def _unique(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!s} is listed twice")
        seen.add(value)
    return values


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


# --- matrix -------------------------------------------------------------------------------------


class Matrix(StrictModel):
    """The axes a recipe expands over, besides ``arches``."""

    releases: Annotated[list[Release], AfterValidator(_unique)] = Field(
        default_factory=list,
        description="Build once per release; empty means the single build.release.",
    )
    variants: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named variants; each maps build keys to override (merged over build).",
    )


# --- publish and verify pieces --------------------------------------------------------------------

Visibility = Literal["public", "private", "shared", "community"]


class GlancePublish(StrictModel):
    image_name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None, description="Image name in Glance; default: '<recipe> <release>[ <variant>] <arch>'."
    )
    visibility: Visibility = "private"
    keep: int = Field(3, ge=1, le=100, description="How many superseded images to keep (hidden).")
    method: Literal["upload", "glance-direct"] | None = Field(
        None, description="Plain upload or interoperable import; default from site.yaml."
    )
    properties: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_:.-]{0,254}$")], str] = Field(
        default_factory=dict, description="Extra Glance properties (os_distro, os_version, ...)."
    )


class RepoPublish(StrictModel):
    repo: Name = Field("kiln", description="Repository name on the mirror.")
    layout_distro: Name | None = Field(None, description="Directory name; default: build.distro.")


class RegistryPublish(StrictModel):
    repository: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")]
    tags: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]],
        Field(min_length=1),
        AfterValidator(_unique),
    ]


class BootVerify(StrictModel):
    enabled: bool = True
    timeout_s: int = Field(900, ge=30, le=7200, description="Give up after this long (TCG is slow).")
    memory_mb: int = Field(1024, ge=256, le=65536)
    checks: list[ShortText] = Field(
        default_factory=list, description="Commands run over SSH after boot; each must exit 0."
    )


# --- guest images ---------------------------------------------------------------------------------

GuestDistro = Literal["debian", "ubuntu", "centos", "rocky", "almalinux", "fedora"]
ImageFormat = Literal["qcow2", "raw"]


class DibGuestBuild(StrictModel):
    builder: Literal["dib"]
    distro: GuestDistro
    release: Release
    elements: Annotated[list[ElementName], AfterValidator(_unique)] = Field(
        default_factory=list, description="DIB elements beyond the distro element."
    )
    packages: Annotated[list[PackageName], AfterValidator(_unique)] = Field(default_factory=list)
    formats: Annotated[list[ImageFormat], Field(min_length=1), AfterValidator(_unique)] = Field(
        default_factory=lambda: ["qcow2"]
    )
    size_gb: int | None = Field(None, ge=1, le=2048, description="Root filesystem size; default: fit.")
    firmware: Literal["bios", "uefi"] = "bios"
    env: dict[EnvName, ShortText] = Field(default_factory=dict, description="Extra DIB_* variables.")


class PackerBase(StrictModel):
    recipe: Name = Field(description="The Kiln recipe whose image this build starts from.")
    variant: Name | None = None


class IsoSource(StrictModel):
    """An installer ISO: exactly one of ``url`` or ``path`` (a file in the workspace)."""

    url: HttpUrl | None = None
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
    formats: Annotated[list[ImageFormat], Field(min_length=1), AfterValidator(_unique)] = Field(
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


GuestBuild = Annotated[DibGuestBuild | PackerGuestBuild, Field(discriminator="builder")]


class GuestVerify(StrictModel):
    boot: BootVerify = Field(default_factory=BootVerify)


class GuestPublish(StrictModel):
    glance: GlancePublish | None = None


# --- IPA ramdisks ---------------------------------------------------------------------------------


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


# --- ppc64le SRPM rebuilds ------------------------------------------------------------------------


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


# --- CUDA containers ------------------------------------------------------------------------------


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


# --- the recipes ----------------------------------------------------------------------------------

Kind = Literal["guest-image", "ipa-ramdisk", "rpm-rebuild", "container"]


class RecipeBase(StrictModel):
    name: Name
    kind: Kind
    description: ShortText = ""
    arches: Annotated[list[ArchName], Field(min_length=1), AfterValidator(_unique)]
    matrix: Matrix = Field(default_factory=Matrix)


class GuestImageRecipe(RecipeBase):
    kind: Literal["guest-image"]
    build: GuestBuild
    verify: GuestVerify = Field(default_factory=GuestVerify)
    publish: GuestPublish = Field(default_factory=GuestPublish)


class IpaRamdiskRecipe(RecipeBase):
    kind: Literal["ipa-ramdisk"]
    build: IpaBuild
    verify: IpaVerify = Field(default_factory=IpaVerify)
    publish: IpaPublish = Field(default_factory=IpaPublish)


class RpmRebuildRecipe(RecipeBase):
    kind: Literal["rpm-rebuild"]
    build: RpmRebuildBuild
    verify: RpmVerify = Field(default_factory=RpmVerify)
    publish: RpmPublish = Field(default_factory=RpmPublish)


class ContainerRecipe(RecipeBase):
    kind: Literal["container"]
    build: ContainerBuild
    verify: ContainerVerify = Field(default_factory=ContainerVerify)
    publish: ContainerPublish = Field(default_factory=ContainerPublish)


Recipe = GuestImageRecipe | IpaRamdiskRecipe | RpmRebuildRecipe | ContainerRecipe

RECIPE_MODELS: dict[str, type[RecipeBase]] = {
    "guest-image": GuestImageRecipe,
    "ipa-ramdisk": IpaRamdiskRecipe,
    "rpm-rebuild": RpmRebuildRecipe,
    "container": ContainerRecipe,
}
KINDS: tuple[str, ...] = tuple(RECIPE_MODELS)

# Recipe values are data. Template delimiters in them would be inert in Kiln's own Jinja
# rendering, but Packer's Go templates and some downstream tools would evaluate them: refuse early.
TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#")


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema editors use for completion (``kiln schema``)."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(Annotated[Recipe, Field(discriminator="kind")]).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Kiln recipe"
    # "extends" is resolved before validation, so the models do not know it; editors should.
    for definition in schema.get("$defs", {}).values():
        if definition.get("title", "").endswith("Recipe"):
            definition["properties"]["extends"] = {
                "type": "string",
                "description": "A base recipe file (relative path) whose keys this recipe overrides.",
            }
    return schema


def _annotation_is_file_ref(annotation: Any) -> bool:
    if any(isinstance(m, _IsFileRef) for m in getattr(annotation, "__metadata__", ())):
        return True
    return any(_annotation_is_file_ref(arg) for arg in getattr(annotation, "__args__", ()) or ())


def _field_is_file_ref(info: FieldInfo) -> bool:
    # pydantic moves a field's own Annotated metadata to info.metadata; nested ones stay in place.
    return _annotation_is_file_ref(info.annotation) or any(isinstance(m, _IsFileRef) for m in info.metadata)


def _may_hold_file_refs(annotation: Any, visiting: frozenset[type] = frozenset()) -> bool:
    """Whether a value of this type can have a file reference inside: a model with a FileRef field
    at any depth (a model that contains itself, or ``Any``, counts as yes)."""
    if annotation is Any:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation in visiting or any(
            _field_is_file_ref(info) or _may_hold_file_refs(info.annotation, visiting | {annotation})
            for info in annotation.model_fields.values()
        )
    return any(_may_hold_file_refs(arg, visiting) for arg in get_args(annotation))


# Model class -> the fields where file references can be: (name, True) when the field is a FileRef
# (or a list of them), (name, False) when it may hold a model that has one. Fields that can hold
# neither (most of them: names, package lists, env) are left out, so file_refs does not walk them.
# Models do not change once defined.
_FILE_REF_FIELDS: dict[type[BaseModel], tuple[tuple[str, bool], ...]] = {}


def _file_ref_fields(model: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    fields = _FILE_REF_FIELDS.get(model)
    if fields is None:
        fields = _FILE_REF_FIELDS[model] = tuple(
            (name, marked)
            for name, info in model.model_fields.items()
            if (marked := _field_is_file_ref(info))
            or _may_hold_file_refs(info.annotation, frozenset({model}))
        )
    return fields


def file_refs(value: Any) -> list[str]:
    """Every workspace-relative file path referenced anywhere inside a validated model."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        for name, marked in _file_ref_fields(type(value)):
            child = getattr(value, name)
            found.extend(_strings(child) if marked else file_refs(child))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(file_refs(item))
    elif isinstance(value, dict):
        for item in value.values():
            found.extend(file_refs(item))
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return []
