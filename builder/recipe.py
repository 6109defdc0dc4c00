"""Recipe models: what a maintainer writes, for all four kinds, as strict pydantic v2 models.

A recipe file is YAML with a ``kind`` and the common keys ``name``, ``arches``, ``matrix``, ``build``
(the kind's settings), ``verify`` and ``publish``. Unknown keys are errors. Loading, defaults and
error locations live in :mod:`builder.recipes`; this module only says what is valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
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
# scheme://userinfo@ (the userinfo up to the last '@' before the path, as URL parsers read it).
URL_USERINFO = re.compile(r"(?i)^[a-z][a-z0-9+.-]*://[^/?#]*@")


def refusing_credentials(instead: str) -> Callable[[str], str]:
    """A validator refusing ``https://user:secret@host``: a recipe's URL is rendered into build files,
    logs and the ledger. ``instead`` says where the login goes (it differs by who fetches the URL)."""

    def without_credentials(value: str) -> str:
        if URL_USERINFO.match(value):
            raise ValueError(
                "credentials (user:password@) are not allowed in a recipe's URL: they would be written "
                f"into build files and records; {instead}"
            )
        return value

    return without_credentials


# An http(s) URL without userinfo, fetched by Kiln itself: a login for it comes from site.yaml.
UrlWithoutCredentials = Annotated[
    HttpUrl,
    AfterValidator(
        refusing_credentials(
            "write the URL without them and give it with its credentials in site.yaml "
            "(README, kind: rpm-rebuild, Credentials)"
        )
    ),
]
CudaVersion = Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+$")]
# Characters that end a line for some reader of a rendered file (str.splitlines, shells, env files,
# rpm macros) or are invisible in logs: C0 and C1 controls (tab allowed), DEL, U+2028/U+2029.
_LINE_BREAKING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _single_line(value: str) -> str:
    """Refuse control characters: a newline in an env value or a macro would split it in two."""
    found = _LINE_BREAKING.search(value)
    if found is not None:
        char = found.group()
        name = {"\n": " (newline)", "\r": " (carriage return)", "\x00": " (NUL)"}.get(char, "")
        raise ValueError(
            f"must be a single line of text: control character U+{ord(char):04X}{name} at offset "
            f"{found.start()} is not allowed"
        )
    return value


# Single-line text (no control characters but tab), at most 4096 characters: env values, labels,
# macros, commands, boot keys, descriptions.
ShortText = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_single_line)]

# --- build.env: what a recipe may put into a build tool's environment ---------------------------------

# Never passed from a recipe to a build tool, whatever a kind's list says: they make a shell, the
# dynamic loader or an interpreter run code of the recipe's choosing (BASH_ENV, ENV, LD_PRELOAD,
# PYTHONSTARTUP, PROMPT_COMMAND, PS4 under xtrace, BASH_FUNC_*), or change which programs run and how
# (PATH, HOME, IFS, SHELLOPTS, CDPATH, GIT_SSH_COMMAND and the rest of GIT_*).
ALWAYS_REFUSED_ENV = re.compile(
    r"BASH_ENV|ENV|PATH|HOME|IFS|SHELLOPTS|BASHOPTS|CDPATH|PS4|PROMPT_COMMAND|LD_\w*|PYTHON\w*|GIT_\w*"
    r"|BASH_FUNC_\w*"
)


def allows_env_name(name: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``allowed`` (names, and prefixes written ``DIB_*``) admits ``name``."""
    return any(name.startswith(a[:-1]) if a.endswith("*") else name == a for a in allowed)


def tool_env(tool: str, allowed: tuple[str, ...], refused: tuple[str, ...] = ()) -> Any:
    """The type of a kind's ``build.env``: variables for ``tool`` whose names ``allowed`` admits,
    except ``refused`` (names a kind knows make its tool run a program of the recipe's choosing) and
    :data:`ALWAYS_REFUSED_ENV`; refused by ``kiln validate`` at the key, naming what is accepted."""
    accepted = ", ".join(allowed) + (f" (but not {', '.join(refused)})" if refused else "")

    def check(name: str) -> str:
        if ALWAYS_REFUSED_ENV.fullmatch(name) or name in refused:
            raise ValueError(
                f"{name} is never passed to a build tool (it would change what the tool's shell, loader "
                f"or interpreter runs); build.env takes {accepted}"
            )
        if not allows_env_name(name, allowed):
            raise ValueError(f"{name} is not passed to {tool}: build.env takes {accepted}")
        return name

    return dict[Annotated[EnvName, AfterValidator(check)], ShortText]


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


def unique_items(values: list[Any]) -> list[Any]:
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

    releases: Annotated[list[Release], AfterValidator(unique_items)] = Field(
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
        AfterValidator(unique_items),
    ]


class BootVerify(StrictModel):
    enabled: bool = True
    timeout_s: int = Field(900, ge=30, le=7200, description="Give up after this long (TCG is slow).")
    memory_mb: int = Field(1024, ge=256, le=65536)
    checks: list[ShortText] = Field(
        default_factory=list, description="Commands run over SSH after boot; each must exit 0."
    )


# --- the recipes ----------------------------------------------------------------------------------


class RecipeBase(StrictModel):
    """The keys every recipe has; builder/kinds/ adds ``kind``, ``build``, ``verify`` and ``publish``
    per kind (the registry makes one model per kind name)."""

    name: Name
    description: ShortText = ""
    arches: Annotated[list[ArchName], Field(min_length=1), AfterValidator(unique_items)]
    matrix: Matrix = Field(default_factory=Matrix)


# Recipe values are data. Template delimiters in them would be inert in Kiln's own Jinja
# rendering, but Packer's Go templates and some downstream tools would evaluate them: refuse early.
TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#")


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
