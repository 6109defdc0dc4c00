"""The shape of the code, checked from its syntax trees: where kind names may be compared, who may
start processes, and what publishing and verification may import.

- A kind's name ("guest-image", ...) or builder ("dib", "packer") is compared only in the registry
  (builder/kinds/); everything else asks the Kind it was given.
- ``subprocess`` is imported by builder/host/run.py alone: every process goes through the one runner.
- Nothing under builder/publishers/ or builder/verify/ (nor the publish route) imports the embedded
  local site (builder/site/): they reach it through endpoints, as they reach a real cloud.
- The ``kiln`` command (builder/cli/) parses and prints: its modules import no private name of another
  module, and one another without a cycle (common.py imports none of them).
"""

from __future__ import annotations

import ast
from pathlib import Path

from builder import kinds
from builder.workspace import PACKAGE_ROOT

BUILDER = PACKAGE_ROOT / "builder"


def _modules(below: Path = BUILDER) -> list[Path]:
    return sorted(p for p in below.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE_ROOT).as_posix()


def _kind_words() -> set[str]:
    return {k.name for k in kinds.all_kinds()} | {k.builder for k in kinds.all_kinds() if k.builder}


def _compared_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that take part in a comparison (==, !=, in, not in) or a match case."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                elements = operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
                found += [
                    (node.lineno, e.value)
                    for e in elements
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                ]
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant):
            found.append((node.lineno, str(node.value.value)))
    return found


def test_kind_names_are_compared_only_in_the_kinds_registry():
    words = _kind_words()
    assert {"guest-image", "ipa-ramdisk", "rpm-rebuild", "container", "dib", "packer"} <= words
    offenders = [
        f"{_rel(path)}:{line}: {value!r}"
        for path in _modules()
        if not path.is_relative_to(BUILDER / "kinds")
        for line, value in _compared_constants(ast.parse(path.read_text()))
        if value in words
    ]
    assert offenders == [], "kind names compared outside builder/kinds/:\n" + "\n".join(offenders)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a module (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE_ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def test_subprocess_is_imported_by_the_runner_alone():
    users = [
        f"{_rel(path)}:{line}"
        for path in _modules()
        for line, name in _imports(path)
        if name == "subprocess" or name.startswith("subprocess.")
    ]
    assert users and all(u.startswith("builder/host/run.py:") for u in users), users


def test_publishing_and_verification_never_import_the_local_site():
    guarded = [
        *_modules(BUILDER / "publishers"),
        *_modules(BUILDER / "verify"),
        BUILDER / "pipeline/publish.py",
    ]
    offenders = [
        f"{_rel(path)}:{line}: {name}"
        for path in guarded
        for line, name in _imports(path)
        if name == "builder.site" or name.startswith("builder.site.")
    ]
    assert offenders == [], offenders


def test_the_cli_only_calls_the_pipeline():
    """builder/cli/ parses and prints: no backend, verifier or publisher is driven from it directly."""
    forbidden = ("builder.backends", "builder.verify", "builder.hostcompat", "builder.render.write_rendered")
    offenders = [
        f"{_rel(path)}:{line}: {name}"
        for path in _modules(BUILDER / "cli")
        for line, name in _imports(path)
        if name.startswith(forbidden)
    ]
    assert offenders == [], offenders


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_cli_modules_share_only_public_names_and_import_one_another_without_a_cycle():
    """Each command group (builder/cli/recipes.py, ...) adds its own commands; what they share is
    builder/cli/common.py, by public names. ``__init__`` imports the groups; only ``__main__`` imports it."""
    paths = {_module_name(path): path for path in _modules(BUILDER / "cli")}
    private = []  # `from x import _name`, or `name._attr` on a name an import bound
    edges: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
        bound = {(alias.asname or alias.name).split(".")[0] for node in imports for alias in node.names}
        private += [
            f"{_rel(path)}:{node.lineno}: {alias.name}"
            for node in imports
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
            if _private(alias.name)
        ]
        private += [
            f"{_rel(path)}:{node.lineno}: {node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _private(node.attr)
        ]
        edges[module] = {
            max((m for m in paths if name == m or name.startswith(m + ".")), key=len)
            for _, name in _imports(path)
            if name == "builder.cli" or name.startswith("builder.cli.")
        } - {module}
    assert private == [], private
    assert edges["builder.cli.common"] == set(), edges
    assert [m for m, imported in edges.items() if "builder.cli" in imported] == ["builder.cli.__main__"], (
        edges
    )

    def cycle(path: tuple[str, ...]) -> tuple[str, ...] | None:
        for imported in sorted(edges[path[-1]]):
            found = (*path, imported) if imported in path else cycle((*path, imported))
            if found:
                return found
        return None

    cycles = [found for module in sorted(edges) if (found := cycle((module,)))]
    assert cycles == [], cycles
