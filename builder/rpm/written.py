"""Recipes Kiln writes itself: a rebuild recipe per source package (``kiln rpm missing
--write-recipes``) and the ad hoc recipe of ``kiln rpm rebuild``.

Their values come from a repo's metadata and from the command line, so a recipe is built as plain
data and written by the YAML emitter, never by formatting text: a package name with a newline in it
cannot add a key. What is written is read back through the reader ``kiln validate`` uses and
validated against the recipe model before anything reaches the disk; a recipe that does not validate
is refused, naming its package. Names must be rpm package names (NEVRA's N); URLs are written without
their credentials (they come from site.yaml: builder/rpm/credentials.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import kinds
from ..arch import Arch
from ..errors import InvalidInput, Problem
from ..outdir import write_below
from ..recipe import TEMPLATE_SYNTAX
from ..validation import problems_from_validation
from ..yamlsource import load_text
from .credentials import without_userinfo
from .missing import Missing

SCHEMA_COMMENT = "# yaml-language-server: $schema=../../schemas/recipe.schema.json"
# NEVRA's name: what rpm and dnf accept in practice, kept to a charset no reader of a recipe, a file
# name or a log line mistakes for syntax (no whitespace, '/', ':', quotes or controls); the first
# character alphanumeric as Kiln's PackageName wants it.
RPM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
# Characters that end a line for a YAML reader (C0 and C1 controls, DEL, U+2028/U+2029, NEL) or
# hide text in a terminal; a comment line built from remote text loses them.
_NOT_FOR_A_COMMENT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
COMMENT_MAX = 400  # characters of one comment line
NAME_MAX = 63  # builder/recipe.py Name


@dataclass(frozen=True)
class WrittenRecipe:
    """One recipe ready to write: its file name (below the directory given) and its text."""

    file_name: str
    package: str
    text: str


def default_source_repo(from_url: str) -> str:
    """Kiln's layout: ``<repo>/<distro>/<release>/<arch>/`` beside ``.../source/``."""
    return re.sub(r"/[^/]+/?$", "/source/", from_url.rstrip("/") + "/")


def recipe_name(source: str) -> str:
    """A recipe name (builder/recipe.py Name) for a source package: lowercase, '-' for the rest."""
    name = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")[:NAME_MAX].strip("-")
    return name or "package"


def is_rpm_name(name: str) -> bool:
    return RPM_NAME.fullmatch(name) is not None


def comment_text(text: str) -> str:
    """``text`` fit for one YAML comment line: no line breaks or controls, a bounded length."""
    clean = _NOT_FOR_A_COMMENT.sub("?", text)
    return clean if len(clean) <= COMMENT_MAX else clean[: COMMENT_MAX - 3] + "..."


def emit(data: dict[str, Any], comments: Iterable[str], *, schema: bool = True) -> str:
    """The schema line (for editors), the comment lines, then ``data`` in block style, keys in the
    order given."""
    header = [*([SCHEMA_COMMENT] if schema else []), *(f"# {comment_text(c)}" for c in comments)]
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=False, width=1000)
    return "\n".join(header) + "\n" + body


def recipe_problems(text: str, data: dict[str, Any], shown: str) -> list[Problem]:
    """What is wrong with a recipe Kiln wrote, read back as ``kiln validate`` reads a file: the same
    YAML reader (duplicate keys, aliases, depth), the kind's recipe model. The text must also mean
    exactly ``data``: the emitter, not the values, decides the structure."""

    try:
        doc = load_text(text, shown)
    except InvalidInput as exc:
        return exc.problems
    if doc.data != data:
        return [Problem("the written text does not read back as the recipe Kiln built (a Kiln bug)")]
    found = [s for s in _strings(data) if TEMPLATE_SYNTAX.search(s)]
    if found:
        return [Problem(f"template syntax in {found[0][:80]!r} is not allowed in recipe values")]
    model = kinds.recipe_model(str(data["kind"]))
    try:
        model.model_validate(doc.data)
    except ValidationError as exc:
        return problems_from_validation(exc, doc, model)
    return []


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def checked(recipe: WrittenRecipe, data: dict[str, Any]) -> WrittenRecipe:
    """``recipe``, or InvalidInput naming its package and what does not validate."""
    problems = recipe_problems(recipe.text, data, recipe.file_name)
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise InvalidInput(
            Problem(f"the recipe for {recipe.package} does not validate, so it was not written: {listed}")
        )
    return recipe


# --- kiln rpm missing --write-recipes --------------------------------------------------------------------


def rebuild_recipes(
    found: list[Missing], *, from_url: str, to_url: str, source_repo: str, arch: Arch,
    distro: str = "el", release: str = "9",
) -> tuple[list[WrittenRecipe], list[str]]:  # fmt: skip
    """A validated recipe per source package, and a warning for each source left out: a name that
    is not an rpm package name, or a recipe name another source already took. Pure."""
    shown_from, shown_to = without_userinfo(from_url), without_userinfo(to_url)
    repo = without_userinfo(source_repo)
    recipes: list[WrittenRecipe] = []
    warnings: list[str] = []
    taken: dict[str, str] = {}  # recipe name -> the source that has it
    for item in found:
        if not is_rpm_name(item.source):
            warnings.append(f"skipped source {comment_text(item.source)[:80]!r}: not an rpm package name")
            continue
        name = recipe_name(item.source)
        if name in taken:
            warnings.append(f"skipped source {item.source}: its recipe name {name} is {taken[name]}'s")
            continue
        taken[name] = item.source
        data: dict[str, Any] = {
            "name": name,
            "kind": "rpm-rebuild",
            "description": f"{item.source} rebuilt for {arch.value}",
            "arches": [arch.value],
            "build": {
                "source": {"package": item.source, "repo": repo},
                "distro": distro,
                "release": release,
            },
        }
        reason = f"only {item.have}" if item.have else "nothing"
        comment = (
            f"Written by `kiln rpm missing`: {item.source} {item.version} is in {shown_from} "
            f"but {reason} in {shown_to}."
        )
        recipes.append(checked(WrittenRecipe(f"{name}.yaml", item.source, emit(data, [comment])), data))
    return recipes, warnings


def _warn_on_stderr(message: str) -> None:
    print(f"kiln rpm missing: warning: {message}", file=sys.stderr)


def write_recipes(
    found: list[Missing], directory: Path, *, from_url: str, to_url: str, source_repo: str, arch: Arch,
    distro: str = "el", release: str = "9", warn: Callable[[str], None] = _warn_on_stderr,
) -> list[Path]:  # fmt: skip
    """Write the rebuild recipes into ``directory`` (nothing is written unless all validate), through
    the writer that never follows a symlink below it; the sources left out are warned about."""

    recipes, warnings = rebuild_recipes(
        found, from_url=from_url, to_url=to_url, source_repo=source_repo, arch=arch,
        distro=distro, release=release,
    )  # fmt: skip
    for warning in warnings:
        warn(warning)
    return write_below(directory, [(r.file_name, r.text.encode(), 0o644) for r in recipes])


# --- kiln rpm rebuild ------------------------------------------------------------------------------------


def adhoc_recipe(
    name: str, *, arch: Arch, source: dict[str, str], release: str, verify_signature: bool,
    trusted_keys: list[str],
) -> WrittenRecipe:  # fmt: skip
    """The recipe ``kiln rpm rebuild`` writes and builds: ``source`` is ``{path: FILE}`` (a file
    beside the recipe) or ``{package: NAME, repo: URL}``; validated, or InvalidInput. Pure."""
    data: dict[str, Any] = {
        "name": name,
        "kind": "rpm-rebuild",
        "arches": [arch.value],
        "build": {
            "source": dict(source),
            "release": release,
            "verify_signature": verify_signature,
            "trusted_keys": list(trusted_keys),
        },
    }
    package = source.get("package") or source.get("path") or name
    text = emit(data, ["Written by `kiln rpm rebuild` for an ad hoc rebuild."], schema=False)
    return checked(WrittenRecipe(f"{name}.yaml", package, text), data)
