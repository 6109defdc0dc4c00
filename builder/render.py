"""Pure rendering of a Target into build files: same Target and templates -> byte-identical files.

Templates run in a Jinja2 ``SandboxedEnvironment`` with ``StrictUndefined``. Recipe values are data:
they are never parsed as template code, and every ``{{ expression }}`` must pass through an encoding
filter for the output language (``hcl``, ``sh``, ``json``, ``dockerfile``, ``rpm_macro``) or be a
number, otherwise rendering fails. That rule is enforced by ``finalize``, so a template that forgets
to quote a value cannot ship.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from .arch import Arch
from .errors import InvalidInput, Problem

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


def encode_ident(value: Any) -> Encoded:
    """A name already restricted by the recipe schema to [A-Za-z0-9_.:/-]: emitted as-is, checked."""
    text = _text(value)
    if not text or any(not (c.isalnum() or c in "_.:/-+") for c in text):
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


@lru_cache(maxsize=8)
def _environment(templates_dir: str) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
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
        for ref in jinja2.meta.find_referenced_templates(env.parse(source)):
            if ref is None:
                raise InvalidInput(Problem(f"templates/{current}: dynamic include names are not allowed"))
            pending.append(ref)
    return tuple(sorted(seen))


def template_closure(templates_dir: Path, names: list[str]) -> list[str]:
    out: set[str] = set()
    for name in names:
        out.update(_template_closure(str(templates_dir), name))
    return sorted(out)


# --- what each kind renders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    path: str  # relative to the target's render directory
    template: str  # relative to templates/
    mode: int = 0o644


def outputs_for(kind: str, build: Any, arch: Arch) -> list[Output]:
    """The files a target of this kind renders. Pure: used for digests as well as for rendering."""
    if kind == "guest-image" and build.builder == "dib":
        return [
            Output("dib.env", "dib/environment.j2"),
            Output("build.json", "dib/build.json.j2"),
        ]
    if kind == "guest-image" and build.builder == "packer":
        return [
            Output("image.pkr.hcl", "packer/qemu.pkr.hcl.j2"),
            Output("seed/meta-data", "packer/meta-data.j2"),
        ]
    if kind == "ipa-ramdisk":
        return [
            Output("dib.env", "ipa/environment.j2"),
            Output("build.json", "ipa/build.json.j2"),
        ]
    if kind == "rpm-rebuild":
        return [
            Output("kiln.macros", "rpm/kiln.macros.j2"),
            Output("spec-changes.json", "rpm/spec-changes.json.j2"),
            Output("build.json", "rpm/build.json.j2"),
        ]
    if kind == "container":
        return [Output("Dockerfile", f"containers/Dockerfile.{build.distro}.j2")]
    raise ValueError(f"no render plan for kind {kind!r}")


def kiln_elements(kind: str, build: Any, arch: Arch) -> list[str]:
    """Kiln's own DIB elements (from elements/) that every build of this kind gets."""
    if kind not in ("guest-image", "ipa-ramdisk") or getattr(build, "builder", "dib") != "dib":
        return []
    if arch is Arch.PPC64LE and getattr(build, "distro", "") in ("debian", "ubuntu"):
        return ["kiln-extra-ca", "kiln-ppc64le-boot"]
    return ["kiln-extra-ca"]


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
    for output in outputs_for(target.kind, target.build_model, target.arch):
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
            "image_name": target.image_name,
        },
        "build": target.build,
        "arch": {
            "name": target.arch.value,
            "rpm": target.arch.rpm,
            "debian": target.arch.debian,
            "dib": target.arch.dib,
            "oci": target.arch.oci,
            "oci_platform": target.arch.oci_platform,
            "qemu_system": target.arch.qemu_system,
            "qemu_machine": target.arch.qemu_machine,
            "glance": target.arch.glance,
        },
        "elements": list(target.dib_elements),
        "verify": target.verify,
    }


def write_rendered(files: list[RenderedFile], out_dir: Path) -> list[Path]:
    """Write rendered files under ``out_dir``, replacing stale ones atomically (tmp + rename)."""
    written = []
    for item in files:
        dest = out_dir / item.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(item.content)
        tmp.chmod(item.mode)
        tmp.replace(dest)
        written.append(dest)
    return written
