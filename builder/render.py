"""Pure rendering of a Target into build files: same Target and templates -> byte-identical files.

Templates run in a Jinja2 ``SandboxedEnvironment`` with ``StrictUndefined``. Recipe values are data:
they are never parsed as template code, and every ``{{ expression }}`` must pass through an encoding
filter for the output language (``hcl``, ``sh``, ``json``, ``dockerfile``, ``rpm_macro``) or be a
number, otherwise rendering fails. That rule is enforced by ``finalize``, so a template that forgets
to quote a value cannot ship.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import SandboxedEnvironment

from .arch import Arch
from .errors import InvalidInput, Problem
from .outdir import write_below
from .publishers.glance import image_name

# --- encoders: recipe value -> safe text in one output language --------------------------------------


class Encoded(str):
    """Text already encoded for the output language; the only strings templates may emit."""

    __slots__ = ()


def _defined(value: Any) -> Any:
    """Raise Jinja's own "X is undefined" error (naming X) instead of a vague type error."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def _text(value: Any) -> str:
    _defined(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str | int | float):
        raise TypeError(f"cannot encode {type(value).__name__} as a string")
    return str(value)


def encode_hcl(value: Any) -> Encoded:
    """An HCL2 string literal; ``${`` and ``%{`` are escaped so values never interpolate."""
    _defined(value)
    if isinstance(value, list | tuple):
        return Encoded("[" + ", ".join(encode_hcl(v) for v in value) + "]")
    if isinstance(value, bool | int | float) and not isinstance(value, str):
        return Encoded(json.dumps(value))
    literal = json.dumps(_text(value), ensure_ascii=False)
    return Encoded(literal.replace("${", "$${").replace("%{", "%%{"))


def encode_sh(value: Any) -> Encoded:
    """A single POSIX shell word."""
    _defined(value)
    if isinstance(value, list | tuple):
        return Encoded(" ".join(shlex.quote(_text(v)) for v in value))
    return Encoded(shlex.quote(_text(value)))


def encode_json(value: Any) -> Encoded:
    _defined(value)
    return Encoded(json.dumps(value, ensure_ascii=False, sort_keys=True))


# Packer's boot_command needs Go-template placeholders that recipes may not contain ("{{" is refused
# in every recipe value). Recipes write this token instead; only this filter turns it into Go syntax.
PACKER_HTTP_TOKEN = "@@HTTP@@"
_PACKER_HTTP = "http://{{ .HTTPIP }}:{{ .HTTPPort }}"


def encode_packer_keys(value: Any) -> Encoded:
    """An HCL list of boot_command strings, with @@HTTP@@ as the URL of Packer's HTTP server."""
    _defined(value)
    items = [value] if isinstance(value, str) else list(value)
    encoded = [encode_hcl(item).replace(PACKER_HTTP_TOKEN, _PACKER_HTTP) for item in items]
    return Encoded("[" + ", ".join(encoded) + "]")


def encode_dockerfile(value: Any) -> Encoded:
    """A double-quoted Dockerfile string (ENV, LABEL): no variable expansion, no line breaks."""
    text = _text(value)
    if "\n" in text or "\r" in text:
        raise ValueError("line breaks are not allowed in Dockerfile values")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return Encoded(f'"{escaped}"')


def encode_rpm_macro(value: Any) -> Encoded:
    """A macro body for an rpm macros file: ``%`` doubled so values never expand."""
    text = _text(value)
    if "\n" in text or "\r" in text:
        raise ValueError("line breaks are not allowed in rpm macro values")
    return Encoded(text.replace("%", "%%"))


# Letters and digits as str.isalnum() sees them (which is what \w matches in a str pattern), "_" and
# ".:/-+": one regex match instead of a Python test per character.
_IDENT = re.compile(r"[\w.:/+-]+")


def encode_ident(value: Any) -> Encoded:
    """A name already restricted by the recipe schema to [A-Za-z0-9_.:/-]: emitted as-is, checked."""
    text = _text(value)
    if not _IDENT.fullmatch(text):
        raise ValueError(f"{text!r} is not a plain identifier")
    return Encoded(text)


FILTERS: dict[str, Callable[[Any], Encoded]] = {
    "hcl": encode_hcl,
    "packer_keys": encode_packer_keys,
    "sh": encode_sh,
    "json": encode_json,
    "dockerfile": encode_dockerfile,
    "rpm_macro": encode_rpm_macro,
    "ident": encode_ident,
}


def _finalize(value: Any) -> Any:
    if isinstance(value, Encoded) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise TypeError(
        f"template emitted {type(value).__name__} {str(value)[:40]!r} without an encoding filter "
        f"(use one of: {', '.join(FILTERS)})"
    )


# --- the environment ---------------------------------------------------------------------------------


def environment(templates_dir: Path) -> SandboxedEnvironment:
    # Keyed by the string: hashing a fresh Path per target cost more than rendering did.
    return _environment(str(templates_dir))


def clear_caches() -> None:
    """Forget compiled templates and include closures (tests that edit templates call this)."""
    _environment.cache_clear()
    _template_closure.cache_clear()


# Every name a plain dict has as a Python attribute (methods, dunders): ``d.items`` is the method.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox with two shortcuts that give the same results for Kiln's templates.

    * ``x.key`` on a plain dict (the template context is plain dicts): the sandbox first tries a
      Python attribute, and only when that raises AttributeError returns ``x["key"]``, unchecked.
      A plain dict's attributes are known (``dir(dict)``), so other names go straight to the item,
      without raising and catching an exception per lookup.
    * Template globals are a plain dict rather than a ChainMap over the environment's globals:
      every render copies them into a new context, and copying a ChainMap runs Python code per key.
      The environment's globals are not changed after templates are loaded (Jinja's advice too).

    It also compiles a template from the syntax tree that ``template_closure`` parsed to find its
    includes (``keep_parsed``), instead of parsing the same text a second time.
    """

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._parsed: dict[str, jinja2.nodes.Template] = {}  # template text -> its unused tree

    def keep_parsed(self, source: str, tree: jinja2.nodes.Template) -> None:
        self._parsed[source] = tree

    def compile(  # type: ignore[override]
        self,
        source: str | jinja2.nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        # Each kept tree is used once: code generation may change a tree in place.
        tree = self._parsed.pop(source, None) if isinstance(source, str) else None
        if tree is not None:
            try:
                return super().compile(tree, name, filename, raw, defer_init)
            except jinja2.TemplateSyntaxError:
                pass  # compile the text below, so that the error carries its source like Jinja's
        return super().compile(source, name, filename, raw, defer_init)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


@lru_cache(maxsize=8)
def _environment(templates_dir: str) -> _Sandbox:
    env = _Sandbox(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
        auto_reload=False,
    )
    env.filters.update(FILTERS)
    return env


@lru_cache(maxsize=512)
def _template_closure(templates_dir: str, name: str) -> tuple[str, ...]:
    """``name`` and every template it includes, imports or extends, recursively."""
    env = _environment(templates_dir)
    seen: list[str] = []
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.append(current)
        try:
            source, _, _ = env.loader.get_source(env, current)  # type: ignore[union-attr]
        except jinja2.TemplateNotFound:
            raise InvalidInput(Problem(f"templates/{current}: template not found")) from None
        tree = env.parse(source)
        for ref in jinja2.meta.find_referenced_templates(tree):
            if ref is None:
                raise InvalidInput(Problem(f"templates/{current}: dynamic include names are not allowed"))
            pending.append(ref)
        env.keep_parsed(source, tree)
    return tuple(sorted(seen))


def template_closure(templates_dir: Path, names: list[str]) -> list[str]:
    out: set[str] = set()
    for name in names:
        out.update(_template_closure(str(templates_dir), name))
    return sorted(out)


# --- rendering ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedFile:
    path: str
    content: bytes
    mode: int


def render_target(target: Any, templates_dir: Path) -> list[RenderedFile]:
    """Render every output of ``target`` in memory (no I/O besides reading templates)."""
    env = environment(templates_dir)
    context = template_context(target)
    rendered = []
    for output in target.spec.outputs(target.build, target.arch):
        try:
            text = env.get_template(output.template).render(context)
        except jinja2.TemplateSyntaxError as exc:
            name = exc.name or output.template
            raise InvalidInput(Problem(f"templates/{name}:{exc.lineno}: {exc.message}")) from None
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            where = _template_frame(templates_dir, output.template)
            raise InvalidInput(
                Problem(f"{where}: {type(exc).__name__}: {exc} (target {target.id})")
            ) from None
        rendered.append(RenderedFile(output.path, text.encode("utf-8"), output.mode))
    return rendered


def _template_frame(templates_dir: Path, fallback: str) -> str:
    """``templates/<name>:<line>`` of the innermost template frame of the exception being handled."""
    tb = sys.exc_info()[2]
    where = f"templates/{fallback}"
    root = str(templates_dir.resolve())
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(root):
            where = f"templates/{Path(filename).relative_to(root).as_posix()}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _arch_context(arch: Arch) -> dict[str, str]:
    return {
        "name": arch.value,
        "rpm": arch.rpm,
        "debian": arch.debian,
        "dib": arch.dib,
        "oci": arch.oci,
        "oci_platform": arch.oci_platform,
        "qemu_system": arch.qemu_system,
        "qemu_machine": arch.qemu_machine,
        "glance": arch.glance,
        "multiarch": arch.multiarch,
        "nvidia": arch.spellings.nvidia,
    }


# The arch table does not change while Kiln runs; its enum properties are slow to read per target.
_ARCH_CONTEXT = {arch: _arch_context(arch) for arch in Arch}


def template_context(target: Any) -> dict[str, Any]:
    """Everything a template may read: plain data, no callables from the recipe side."""
    return {
        "target": {
            "id": target.id,
            "slug": target.slug,
            "recipe": target.recipe,
            "kind": target.kind,
            "release": target.release,
            "variant": target.variant,
            "image_name": image_name(target),  # the Glance name (publishers/glance.py)
            "digest": target.digest,
        },
        "build": target.build_json,
        "arch": dict(_ARCH_CONTEXT[target.arch]),  # a copy: what one render does stays in it
        "elements": list(target.elements),
        "verify": target.verify_json,
    }


def write_rendered(files: list[RenderedFile], root: Path, under: str = "") -> list[Path]:
    """Write rendered files below ``root`` (in ``under``, a relative directory), atomically and
    never through a symlink inside ``root`` (builder/outdir.py)."""

    prefix = f"{under.strip('/')}/" if under else ""
    return write_below(root, [(prefix + f.path, f.content, f.mode) for f in files])
