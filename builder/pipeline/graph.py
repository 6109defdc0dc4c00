"""Expansion of recipes into Targets (recipe x arch x release x variant) and their input digests.

A Target is fully resolved data: everything a backend needs, nothing it must look up. Its digest
covers the resolved build settings plus the bytes of every template, Kiln element and referenced file
it uses, and the digests of the targets it builds on. Paths in the digest are workspace-relative and
no mtimes are read, so the digest is the same on every machine and checkout; it does not change
when a recipe's comments or key order change, and does when any input's bytes do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..arch import Arch
from ..capabilities import refusals
from ..core.kind import Kind, Target
from ..core.targets import TargetGraph
from ..elements import known_elements, unknown_element
from ..errors import InvalidInput, Problem
from ..kinds import kind_of
from ..recipe import file_refs
from ..recipes import LoadedRecipe, RecipeLoader, discover
from ..render import template_closure
from ..workspace import Workspace

DIGEST_VERSION = 1


class FileHasher:
    """sha256 of workspace files, each read once per run (templates are shared by many targets)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.templates_dir = workspace.templates_dir
        self._templates_rel = self.templates_dir.relative_to(workspace.root).as_posix()
        self._cache: dict[str, str] = {}
        self._elements: dict[str, list[str]] = {}
        self._templates: dict[tuple[str, ...], list[str]] = {}

    def file(self, rel: str) -> str:
        cached = self._cache.get(rel)
        if cached is None:
            path = self.workspace.root / rel
            digest = hashlib.sha256()
            with path.open("rb") as handle:  # in chunks: a referenced ISO may be gigabytes
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            # The executable bit matters to DIB (phase scripts); git keeps it, so it is stable.
            digest.update(b"x" if os.access(path, os.X_OK) else b"-")
            cached = self._cache[rel] = digest.hexdigest()
        return cached

    def tree(self, rel_dir: str) -> list[str]:
        """Every file below a directory, sorted, as workspace-relative paths."""
        root = self.workspace.root / rel_dir
        files = sorted(
            p.relative_to(self.workspace.root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
        return files

    def templates(self, names: tuple[str, ...]) -> list[str]:
        """Templates ``names`` and all they include, as workspace-relative paths, once per run
        (each kind renders the same few, for every target)."""
        cached = self._templates.get(names)
        if cached is None:
            closure = template_closure(self.templates_dir, list(names))
            cached = self._templates[names] = [f"{self._templates_rel}/{name}" for name in closure]
        return cached

    def element(self, name: str) -> list[str]:
        """The files of element ``name`` in elements/ (none for upstream DIB elements), once per run."""
        cached = self._elements.get(name)
        if cached is None:
            element_dir = self.workspace.elements_dir / name
            cached = self.tree(self.workspace.relative(element_dir)) if element_dir.is_dir() else []
            self._elements[name] = cached
        return cached


@dataclass
class _Pending:
    loaded: LoadedRecipe
    spec: Kind
    arch: Arch
    release: str
    variant: str | None
    build_model: BaseModel
    inputs: tuple[str, ...]  # becomes the Target's, as is
    base: tuple[str, str | None] | None  # (recipe, variant) this target builds on
    elements: tuple[str, ...]


def expand(recipes: Iterable[LoadedRecipe], workspace: Workspace) -> list[Target]:
    """Every target of the given recipes, with dependencies resolved and digests computed.

    Raises InvalidInput listing every impossible target (capability rules), unknown dependency or
    dependency cycle, each located in its recipe file.
    """
    hasher = FileHasher(workspace)
    pending: list[_Pending] = []
    problems: list[Problem] = []
    for loaded in recipes:
        pending.extend(_expand_one(loaded, hasher, problems))
    if problems:
        raise InvalidInput(problems)
    return _finish(pending, hasher)


def _expand_one(loaded: LoadedRecipe, hasher: FileHasher, problems: list[Problem]) -> list[_Pending]:
    recipe = loaded.recipe
    out: list[_Pending] = []
    for variant, variant_build in loaded.variant_builds.items():
        _check_elements(loaded, variant_build, hasher.workspace.elements_dir, problems)
        releases = recipe.matrix.releases or [variant_build.release]  # type: ignore[attr-defined]
        for release in releases:
            build = variant_build
            if release != build.release:  # type: ignore[attr-defined]
                build = build.model_copy(update={"release": release})
            refs = file_refs(build)
            spec = kind_of(recipe.kind, build)
            for arch in recipe.arches:
                refused = refusals(spec.rules, arch, build)
                for refusal in refused:
                    problems.append(
                        loaded.problem(
                            ("build", *refusal.key),
                            f"cannot build for {arch.value} (target {recipe.name}:{release}:{arch.value}): "
                            f"{refusal.reason}",
                        )
                    )
                if refused:
                    continue
                inputs = [*hasher.templates(tuple(o.template for o in spec.outputs(build, arch)))]
                elements = list(spec.elements(build, arch))
                for element in elements:
                    inputs.extend(hasher.element(element))
                inputs.extend(refs)
                out.append(
                    _Pending(
                        loaded=loaded,
                        spec=spec,
                        arch=arch,
                        release=release,
                        variant=variant,
                        build_model=build,
                        inputs=tuple(sorted(set(inputs))),
                        base=spec.base(build),
                        elements=tuple(elements),
                    )
                )
    return out


def _check_elements(
    loaded: LoadedRecipe, build: BaseModel, elements_dir: Path, problems: list[Problem]
) -> None:
    """A recipe's own DIB elements (``build.elements``) must exist: refused here, not minutes into DIB."""
    names = getattr(build, "elements", None)
    if not names:
        return
    known = known_elements(str(elements_dir))
    for index, name in enumerate(names):
        why = unknown_element(name, known)
        if why is not None:
            problems.append(loaded.problem(("build", "elements", index), why))


def _finish(pending: list[_Pending], hasher: FileHasher) -> list[Target]:
    by_key: dict[tuple[str, str | None, str, Arch], _Pending] = {
        (p.loaded.name, p.variant, p.release, p.arch): p for p in pending
    }
    by_recipe: dict[tuple[str, str | None, Arch], list[_Pending]] = {}
    for p in pending:
        by_recipe.setdefault((p.loaded.name, p.variant, p.arch), []).append(p)

    problems: list[Problem] = []
    peers = _peer_needs(pending, hasher.workspace.root)
    deps: dict[int, list[_Pending]] = {id(p): _peer_dependencies(p, by_key, peers) for p in pending}
    for p in pending:
        if p.base is None:
            continue
        base_recipe, base_variant = p.base
        match = by_key.get((base_recipe, base_variant, p.release, p.arch))
        if match is None:
            candidates = by_recipe.get((base_recipe, base_variant, p.arch), [])
            match = candidates[0] if len(candidates) == 1 else None
        if match is None:
            problems.append(
                p.loaded.problem(
                    ("build", "base", "recipe"),
                    f"no target of recipe {base_recipe!r}"
                    f"{f' variant {base_variant!r}' if base_variant else ''} for {p.arch.value} "
                    f"(release {p.release}) to build on",
                )
            )
            continue
        if match.loaded.recipe.kind not in p.spec.base_kinds:
            problems.append(
                p.loaded.problem(
                    ("build", "base", "recipe"),
                    f"{base_recipe!r} is a {match.loaded.recipe.kind}; this builds on: "
                    + ", ".join(p.spec.base_kinds),
                )
            )
            continue
        deps[id(p)].insert(0, match)
    if problems:
        raise InvalidInput(problems)

    # Dependencies first, without recursion: a long chain of bases must not exhaust the stack.
    done: dict[int, Target] = {}
    for start in pending:
        stack = [start]
        on_stack = {id(start)}
        while stack:
            p = stack[-1]
            waiting = next((d for d in deps[id(p)] if id(d) not in done), None)
            if waiting is not None:
                if id(waiting) in on_stack:
                    at = next(i for i, q in enumerate(stack) if q is waiting)
                    members = " -> ".join(q.loaded.name for q in [*stack[at:], waiting])
                    raise InvalidInput(
                        p.loaded.problem(
                            ("build", "base") if p.base is not None else ("build",),
                            f"dependency cycle between recipes: {members}; nothing in it is built",
                        )
                    )
                stack.append(waiting)
                on_stack.add(id(waiting))
                continue
            stack.pop()
            on_stack.discard(id(p))
            if id(p) not in done:
                done[id(p)] = _make_target(p, hasher, [done[id(d)] for d in deps[id(p)]])
    return [done[id(p)] for p in pending]


def _peer_needs(pending: list[_Pending], root: Path) -> dict[Any, dict[str, tuple[str, ...]]]:
    """Per kind with a ``peers`` hook: recipe name -> the recipes of that kind it builds after."""
    kinds = {p.spec.key: p.spec for p in pending if p.spec.peers is not None}
    out = {}
    for key, spec in kinds.items():
        recipes = {q.loaded.name: q.build_model for q in pending if q.spec.key == key}
        assert spec.peers is not None
        out[key] = spec.peers(sorted(recipes.items()), root)
    return out


def _peer_dependencies(
    p: _Pending,
    by_key: dict[tuple[str, str | None, str, Arch], _Pending],
    peers: dict[Any, dict[str, tuple[str, ...]]],
) -> list[_Pending]:
    """The targets of the same kind, release, variant and arch that ``p``'s kind orders it after."""
    needs = peers.get(p.spec.key, {}).get(p.loaded.name, ())
    found = [by_key.get((name, p.variant, p.release, p.arch)) for name in needs if name != p.loaded.name]
    return [q for q in found if q is not None]


def _make_target(p: _Pending, hasher: FileHasher, bases: list[Target]) -> Target:
    recipe = p.loaded.recipe
    build_json = p.build_model.model_dump(mode="json")
    input_digests = {rel: hasher.file(rel) for rel in p.inputs}
    depends = {base.id: base.digest for base in bases}
    payload = {
        "v": DIGEST_VERSION,
        "recipe": recipe.name,
        "kind": recipe.kind,
        "arch": p.arch.value,
        "release": p.release,
        "variant": p.variant,
        "build": build_json,
        "elements": list(p.elements),
        "inputs": input_digests,
        "depends": depends,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Target(
        recipe=recipe.name,
        kind=recipe.kind,  # type: ignore[attr-defined]
        arch=p.arch,
        release=p.release,
        variant=p.variant,
        recipe_file=p.loaded.rel_path,
        build=p.build_model,
        verify=recipe.verify,  # type: ignore[attr-defined]
        publish=recipe.publish,  # type: ignore[attr-defined]
        elements=p.elements,
        inputs=p.inputs,
        depends_on=tuple(depends),
        digest=digest,
        spec=p.spec,
        build_json=build_json,
        verify_json=recipe.verify.model_dump(mode="json"),  # type: ignore[attr-defined]
    )


def select(targets: list[Target], arch: str | None = None, recipe: str | None = None) -> list[Target]:
    """Targets filtered by ``--arch`` (any spelling) and recipe name."""
    wanted_arch = Arch.parse(arch) if arch else None
    return [
        t
        for t in targets
        if (wanted_arch is None or t.arch == wanted_arch) and (recipe is None or t.recipe == recipe)
    ]


@dataclass(frozen=True)
class Loaded:
    """What loading some recipe files gave: counts for reports, the targets, every problem."""

    files: int
    recipes: int  # valid recipes among the files asked for
    targets: list[Target]  # the requested recipes' targets (and, if asked, what they build on)
    problems: list[Problem]


def load(paths: list[Path], workspace: Workspace, *, with_dependencies: bool = False) -> Loaded:
    """Load recipes below ``paths`` and expand them; problems from every file are collected.

    Recipes that a requested recipe builds on (``build.base``, at any depth) are loaded from the
    workspace too, so that dependencies resolve (``kiln validate one.yaml`` works alone), but only
    the requested recipes' targets are returned, plus, ``with_dependencies``, every target they
    build on.
    """

    loader = RecipeLoader(workspace)
    files = discover(paths)
    loaded, problems = loader.load_many(files)
    requested = {r.name for r in loaded}
    everything: dict[str, LoadedRecipe] | None = None
    workspace_problems: list[Problem] = []
    have = set(requested)
    while wanted := _bases_of(loaded) - have:
        if everything is None:
            found, workspace_problems = (
                loader.load_many(discover([workspace.recipes_dir]))
                if workspace.recipes_dir.is_dir()
                else ([], [])
            )
            everything = {r.name: r for r in found}
        more = [everything[name] for name in sorted(wanted) if name in everything]
        if len(more) < len(wanted):  # a base that did not load: say why, where the workspace can
            problems += [p for p in workspace_problems if p not in problems]
        have |= wanted
        loaded += more
    try:
        targets = expand(loaded, workspace)
    except InvalidInput as exc:
        return Loaded(len(files), len(requested), [], [*problems, *exc.problems])
    chosen = [t for t in targets if t.recipe in requested]
    if with_dependencies:
        needed = TargetGraph(targets).closure(t.id for t in chosen)
        chosen = [t for t in targets if t.id in needed]
    return Loaded(len(files), len(requested), chosen, problems)


def _bases_of(recipes: list[LoadedRecipe]) -> set[str]:
    return {
        base[0]
        for r in recipes
        for build in r.variant_builds.values()
        if (base := kind_of(r.recipe.kind, build).base(build)) is not None  # type: ignore[attr-defined]
    }


def load_targets(
    paths: list[Path], workspace: Workspace, *, with_dependencies: bool = False
) -> tuple[list[Target], list[Problem]]:
    """:func:`load`'s targets and problems."""
    result = load(paths, workspace, with_dependencies=with_dependencies)
    return result.targets, result.problems
