"""Loading recipe files: ``extends``, shared defaults, validation, and errors that point at file:line.

Order of precedence, weakest first: ``recipes/defaults.yaml`` (the section for the recipe's kind),
then the ``extends`` chain (base first), then the recipe file itself. Mappings merge key by key;
lists and scalars replace. File paths in a recipe are relative to the recipe file being loaded.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import kinds
from .errors import InvalidInput, KeyPath, Location, Problem
from .limits import (
    MAX_BASE_DEPTH,
    MAX_EXTENDS_DEPTH,
    MAX_PROBLEMS_PER_FILE,
    MAX_TARGETS_PER_RECIPE,
    MAX_TARGETS_PER_WORKSPACE,
)
from .recipe import TEMPLATE_SYNTAX, RecipeBase
from .validation import one_of_message, problems_from_validation
from .workspace import PathRefused, Workspace
from .yamlsource import LocatedDoc, deep_merge, display_path, load_file, merge_values, subdoc, without_key

DEFAULTS_FILE = "defaults.yaml"


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: RecipeBase
    path: Path  # absolute path of the recipe file
    rel_path: str  # workspace-relative, for digests and reports
    # Where the merged document's keys are, to locate later problems. Its data is not kept (None):
    # the validated recipe has it, and a second copy of every recipe would only slow the GC.
    doc: LocatedDoc = field(repr=False)
    # Build settings per variant (None: no variants), already validated.
    variant_builds: dict[str | None, BaseModel] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.recipe.name

    def problem(self, path: KeyPath, message: str) -> Problem:
        return self.doc.problem(path, message)


def is_recipe_file(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") and path.name != DEFAULTS_FILE and not path.name.startswith("_")


def discover(paths: Iterable[Path]) -> list[Path]:
    """Recipe files named directly, or found below directories (sorted, defaults and _partials skipped).

    Below a directory, symlinked directories are not followed (a link loop would never end) and a
    symlink with a recipe's name is listed whatever it points to, so that loading reports it
    (a loop, a link out of the workspace) instead of skipping it silently."""
    found: list[Path] = []
    for path in paths:
        try:
            is_dir = path.is_dir()
            exists = is_dir or os.path.lexists(path)
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise InvalidInput(Problem(f"cannot use {str(path)[:200]!r}: {_reason(exc)}")) from None
        if is_dir:
            found.extend(_walk(path))
        elif exists:
            found.append(path)
        else:
            raise InvalidInput(Problem(f"no such recipe file or directory: {path}"))
    return found


def _walk(top: Path) -> list[Path]:
    out: list[Path] = []
    # A directory that cannot be listed (its path over PATH_MAX, no permission) is listed itself:
    # loading it then says why, where skipping it would hide the recipes below it.
    for dirpath, dirnames, filenames in os.walk(
        top, followlinks=False, onerror=lambda e: out.append(Path(e.filename))
    ):
        here = Path(dirpath)
        out.extend(here / name for name in filenames if is_recipe_file(here / name))
        # A symlink to a directory is listed among dirnames (and not entered); one named like a
        # recipe file is listed, so that loading says what is wrong with it.
        out.extend(here / n for n in dirnames if is_recipe_file(here / n) and (here / n).is_symlink())
    return sorted(out)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, RuntimeError):  # pathlib's "Symlink loop from ..."
        return "symlink loop"
    return str(exc) or type(exc).__name__


class RecipeLoader:
    """Loads recipes of one workspace; caches the defaults file and ``extends`` bases."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._defaults: LocatedDoc | None = None
        self._default_sections: dict[str, LocatedDoc | None] = {}  # by kind: shared by its recipes
        self._bases: dict[Path, LocatedDoc] = {}
        self._resolved_dirs: dict[str, Path] = {}
        self._resolved_files: dict[tuple[str, str], str] = {}  # see recipe._resolve_file

    # -- public ---------------------------------------------------------------------------------

    def load_many(self, paths: Iterable[Path]) -> tuple[list[LoadedRecipe], list[Problem]]:
        """Load every recipe, collecting problems across files instead of stopping at the first."""
        loaded: list[LoadedRecipe] = []
        problems: list[Problem] = []
        seen: dict[str, LoadedRecipe] = {}
        reported: set[Problem] = set()
        targets = 0
        for path in paths:
            try:
                recipe = self.load(path)
            except InvalidInput as exc:
                new = [p for p in exc.problems if p not in reported]  # a broken defaults file or
                reported.update(exc.problems)  # base is reported once, not for every recipe
                problems.extend(_capped(new))
                continue
            except Exception as exc:  # a Kiln bug met by one file: reported for it, the others go on
                problems.append(_internal_problem(path, exc))
                continue
            targets += target_count(recipe.recipe)
            if targets > MAX_TARGETS_PER_WORKSPACE:
                message = f"with this recipe, over {MAX_TARGETS_PER_WORKSPACE} targets in one run; refused"
                problems.append(recipe.problem((), message))
                break
            first = seen.get(recipe.name)
            if first is not None:
                problems.append(
                    recipe.problem(("name",), f"recipe name {recipe.name!r} is also used by {first.rel_path}")
                )
                continue
            seen[recipe.name] = recipe
            loaded.append(recipe)
        too_deep = _too_deep_bases(loaded)
        if too_deep:
            problems.extend(too_deep.values())
            loaded = [r for r in loaded if r.name not in too_deep]
        return loaded, problems

    def load(self, path: Path) -> LoadedRecipe:
        path = self._checked(path)
        doc = self._load_with_bases(path, chain=())
        if not isinstance(doc.data, dict):
            raise InvalidInput(doc.problem((), "a recipe must be a mapping of keys to values"))
        kind = doc.data.get("kind")
        if kind is None:
            known = kinds.names()
            raise InvalidInput(doc.problem(("kind",), f"required key is missing (one of {', '.join(known)})"))
        if not isinstance(kind, str) or kind not in kinds.names():
            raise InvalidInput(doc.problem(("kind",), one_of_message(str(kind), kinds.names())))
        defaults = self._defaults_for(str(kind))
        if defaults is not None:
            doc = deep_merge(defaults, doc)
        _refuse_template_syntax(doc)
        model = kinds.recipe_model(kind)
        context = {
            "workspace": self.workspace,
            "base_dir": path.parent,
            "resolved_files": self._resolved_files,
        }
        try:
            recipe = model.model_validate(doc.data, context=context)
        except ValidationError as exc:
            raise InvalidInput(problems_from_validation(exc, doc, model)) from None
        count = target_count(recipe)
        if count > MAX_TARGETS_PER_RECIPE:
            raise InvalidInput(
                doc.problem(
                    ("matrix",) if "matrix" in doc.data else ("arches",),
                    f"{count} targets (arches x releases x variants: {_matrix_sizes(recipe)}); "
                    f"more than {MAX_TARGETS_PER_RECIPE} per recipe are refused",
                )
            )
        variant_builds = self._variant_builds(recipe, doc, context)
        return LoadedRecipe(
            recipe=recipe,
            path=path,
            rel_path=self.workspace.relative_or_abs(path, resolved=True),
            doc=doc.without_data(),
            variant_builds=variant_builds,
        )

    # -- pieces ---------------------------------------------------------------------------------

    def _checked(self, path: Path) -> Path:
        """``path`` resolved; refused when it cannot be (a symlink loop, a name too long) or when it
        lies in the workspace but is a symlink to a file outside it."""
        try:
            resolved = self._resolve(path)
        except (OSError, RuntimeError, ValueError) as exc:
            where = Location(display_path(path, resolved=True)[:4096], 1, 1)
            raise InvalidInput(Problem(f"cannot read: {_reason(exc)}", where)) from None
        root = self.workspace._resolved_root()
        if not resolved.is_relative_to(root):
            given = Path(os.path.abspath(path))
            if given.is_relative_to(self.workspace.root) or given.is_relative_to(root):
                where = Location(display_path(given, resolved=True), 1, 1)
                raise InvalidInput(
                    Problem(f"a symlink to {resolved}, outside the workspace ({root}); refused", where)
                )
        return resolved

    def _resolve(self, path: Path) -> Path:
        """``path.resolve()``, each directory resolved once per loader: realpath costs an lstat and
        some Python per path component, and a recipe directory holds many files."""
        name = path.name
        if name in ("", ".", "..") or os.path.islink(path):
            return path.resolve()
        parent = path.parent
        key = str(parent)
        resolved_dir = self._resolved_dirs.get(key)
        if resolved_dir is None:
            resolved_dir = self._resolved_dirs[key] = parent.resolve()
        return resolved_dir / name

    def _load_with_bases(self, path: Path, chain: tuple[Path, ...]) -> LocatedDoc:
        doc = load_file(path, resolved=True)  # load() and resolve_reference() resolved it
        if not isinstance(doc.data, dict) or "extends" not in doc.data:
            return doc
        reference = doc.data["extends"]
        if not isinstance(reference, str):
            raise InvalidInput(doc.problem(("extends",), "must be a path to a base recipe file"))
        try:
            base_path = self.workspace.resolve_reference(reference, path.parent)
        except PathRefused as exc:
            raise InvalidInput(doc.problem(("extends",), str(exc))) from None
        if base_path in chain or base_path == path:
            raise InvalidInput(doc.problem(("extends",), f"extends itself through {display_path(base_path)}"))
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise InvalidInput(doc.problem(("extends",), f"more than {MAX_EXTENDS_DEPTH} levels of extends"))
        base = self._bases.get(base_path)
        if base is None:
            base = self._load_with_bases(base_path, (*chain, path))
            if not isinstance(base.data, dict):
                raise InvalidInput(base.problem((), "a base recipe must be a mapping"))
            self._bases[base_path] = base
        return deep_merge(base, without_key(doc, "extends"))

    def _defaults_for(self, kind: str) -> LocatedDoc | None:
        if kind not in self._default_sections:
            self._default_sections[kind] = self._defaults_section(kind)
        return self._default_sections[kind]

    def _defaults_section(self, kind: str) -> LocatedDoc | None:
        if self._defaults is None:
            path = self.workspace.recipes_dir / DEFAULTS_FILE
            if os.path.lexists(path):  # not is_file(): a directory, FIFO or loop there is reported
                defaults = load_file(self._checked(path), resolved=True)
            else:
                defaults = LocatedDoc(data={}, file=str(path))
            data = defaults.data
            if not isinstance(data, dict):
                raise InvalidInput(defaults.problem((), "defaults must map a kind to its default keys"))
            for key in data:
                if key not in kinds.names():
                    raise InvalidInput(defaults.problem((key,), one_of_message(key, kinds.names())))
            self._defaults = defaults  # only once checked: every recipe meets a broken one again
        if kind not in self._defaults.data:
            return None
        section = subdoc(self._defaults, (kind,))
        if not isinstance(section.data, dict):
            raise InvalidInput(self._defaults.problem((kind,), "must be a mapping of default keys"))
        return section

    def _variant_builds(
        self, recipe: RecipeBase, doc: LocatedDoc, context: dict[str, Any]
    ) -> dict[str | None, BaseModel]:
        build = recipe.build  # type: ignore[attr-defined]
        variants = recipe.matrix.variants
        if not variants:
            return {None: build}
        model = type(recipe)
        raw_build = doc.data.get("build", {})
        out: dict[str | None, BaseModel] = {}
        problems: list[Problem] = []
        for name, overrides in variants.items():
            # Validate the whole recipe with the variant's build, so that discriminated unions and
            # key paths behave exactly as for the recipe itself.
            merged = {**doc.data, "build": merge_values(raw_build, overrides)}
            try:
                out[name] = model.model_validate(merged, context=context).build  # type: ignore[attr-defined]
            except ValidationError as exc:
                variant_prefix: KeyPath = ("matrix", "variants", name)
                for problem in problems_from_validation(exc, doc, model):
                    inner = problem.key_path[1:]
                    if problem.key_path[:1] == ("build",) and _has_path(overrides, inner):
                        path = (*variant_prefix, *inner)
                        problem = Problem(problem.message, doc.locate(path), path)
                    if problem not in problems:
                        problems.append(problem)
        if problems:
            raise InvalidInput(problems)
        return out


def _capped(problems: list[Problem]) -> list[Problem]:
    """At most MAX_PROBLEMS_PER_FILE problems of one file, then one saying how many more."""
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return problems
    shown = problems[:MAX_PROBLEMS_PER_FILE]
    last = shown[-1]
    more = Problem(f"... and {len(problems) - len(shown)} more problems in this file", last.location)
    return [*shown, more]


def target_count(recipe: RecipeBase) -> int:
    """How many targets a recipe expands to at most (before capability rules): arches x releases
    x variants. Known from the matrix alone, so a huge matrix is refused before any expansion."""
    matrix = recipe.matrix
    return len(recipe.arches) * max(1, len(matrix.releases)) * max(1, len(matrix.variants))


def _matrix_sizes(recipe: RecipeBase) -> str:
    matrix = recipe.matrix
    return f"{len(recipe.arches)} x {max(1, len(matrix.releases))} x {max(1, len(matrix.variants))}"


def _too_deep_bases(loaded: list[LoadedRecipe]) -> dict[str, Problem]:
    """Recipes whose ``build.base`` chain (among ``loaded``) is longer than MAX_BASE_DEPTH, each
    with its problem. Iterative: a chain of thousands must not exhaust Python's stack, here or in
    expansion (which follows the chain recursively). A cycle ends a chain; expansion reports it."""
    by_name = {r.name: r for r in loaded}
    bases: dict[str, list[str]] = {}
    for r in loaded:
        names = {getattr(getattr(b, "base", None), "recipe", None) for b in r.variant_builds.values()}
        bases[r.name] = sorted(n for n in names if isinstance(n, str) and n in by_name)
    if not any(bases.values()):
        return {}
    depth: dict[str, int] = {}
    through: dict[str, str] = {}  # name -> the base its longest chain goes through
    for start in bases:
        if start in depth:
            continue
        stack = [(start, iter(bases[start]))]
        on_stack = {start}
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_stack.discard(name)
                depth[name], through[name] = max(
                    ((depth.get(c, 0) + 1, c) for c in bases[name] if c not in on_stack), default=(0, "")
                )
            elif child not in depth and child not in on_stack:
                stack.append((child, iter(bases[child])))
                on_stack.add(child)
    problems: dict[str, Problem] = {}
    for name, level in depth.items():
        if level > MAX_BASE_DEPTH:
            chain = [name]
            while len(chain) < 4 and through.get(chain[-1]):
                chain.append(through[chain[-1]])
            problems[name] = by_name[name].problem(
                ("build", "base", "recipe"),
                f"builds on a chain of {level} base recipes ({' -> '.join(chain)} -> ...); "
                f"more than {MAX_BASE_DEPTH} levels of build.base are refused",
            )
    return problems


def _internal_problem(path: Path, exc: Exception) -> Problem:
    """An unexpected exception while loading one file: a Kiln bug, reported against that file."""
    try:
        shown = display_path(path)
    except Exception:  # the path itself may be what broke
        shown = str(path)[:4096]
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/builder/" in f.filename]
    where = ""
    if frames:  # the innermost frame in Kiln's code, for the bug report
        inner = frames[-1]
        where = f" at builder/{inner.filename.rsplit('/builder/', 1)[1]}:{inner.lineno} in {inner.name}"
    return Problem(
        f"internal error while loading this file ({type(exc).__name__}{where}{': ' + text if text else ''}); "
        "this is a bug in Kiln, please report it with this file",
        Location(shown, 1, 1),
        internal=True,
    )


def _has_path(data: Any, path: KeyPath) -> bool:
    for part in path[:1]:  # the variant sets a top-level build key, or it does not
        return isinstance(data, dict) and part in data
    return False


def _walk_strings(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield (*path, key), str(key)
            yield from _walk_strings(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk_strings(child, (*path, index))


def _has_template_syntax(value: Any) -> bool:
    """Whether any string or key below ``value`` has template syntax (a quick check, no paths)."""
    if isinstance(value, str):
        return TEMPLATE_SYNTAX.search(value) is not None
    if isinstance(value, dict):
        for key, child in value.items():
            if TEMPLATE_SYNTAX.search(str(key)) or _has_template_syntax(child):
                return True
    elif isinstance(value, list):
        for child in value:
            if _has_template_syntax(child):
                return True
    return False


def _refuse_template_syntax(doc: LocatedDoc) -> None:
    if not doc.may_have_template_syntax or not _has_template_syntax(doc.data):
        return
    problems = [
        doc.problem(path, "template syntax ('{{', '{%', '{#') is not allowed in recipe values")
        for path, text in _walk_strings(doc.data, ())
        if TEMPLATE_SYNTAX.search(text)
    ]
    if problems:
        raise InvalidInput(problems)
