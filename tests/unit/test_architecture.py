"""The shape of the code, checked from its syntax trees: the layers and that nothing imports upward,
no import cycle, where kind and route names may be compared, who may start processes, and what
publishing and verification may import.

- :data:`LAYERS`: every module of builder/ belongs to one layer and imports only from its own layer
  or those below (imports inside functions and under ``TYPE_CHECKING`` count); no import cycle.
- A kind's name ("guest-image", ...) or builder ("dib", "packer") is compared only in the registry
  (builder/kinds/); everything else asks the Kind it was given.
- A route's name ("glance", "registry", ...) is compared only in builder/publishers/; everything else
  asks the Route a kind names. No ``getattr`` on a backend, publisher or route for a capability: the
  capabilities are typed attributes of ``Backend`` and ``Route`` (builder/core/).
- ``subprocess`` is imported by builder/host/run.py alone: every process goes through the one runner.
- Nothing under builder/publishers/ or builder/verify/ (nor the publish route) imports the embedded
  local site (builder/site/): they reach it through endpoints, as they reach a real cloud.
"""

from __future__ import annotations

import ast
from pathlib import Path

from builder import kinds
from builder.publishers.routes import BUILTIN as BUILTIN_ROUTES
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
    return _imports_in(path, PACKAGE_ROOT)


def _imports_in(path: Path, root: Path) -> list[tuple[int, str]]:
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
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


# Bottom to top: a module imports from its own layer and those below, never from above. The longest
# prefix names a module's layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    # foundation: values, errors, limits, files, YAML, settings, the host and its processes
    (
        "builder",  # the package itself: __version__
        "builder.arch",
        "builder.errors",
        "builder.limits",
        "builder.masking",
        "builder.workspace",
        "builder.outdir",
        "builder.yamlsource",
        "builder.validation",
        "builder.recipe",
        "builder.capabilities",
        "builder.siteconfig",
        "builder.endpoints",
        "builder.manifest",
        "builder.ledger",
        "builder.elements",
        "builder.host",
        "builder.ipa_sources",
        "builder.signing",
    ),
    # what Kiln knows of RPMs, SBOMs, provenance and reports, without kinds
    ("builder.rpm", "builder.sbom", "builder.provenance", "builder.report"),
    # the core types: Kind, Target, the backend, verifier and route interfaces
    ("builder.core",),
    # their implementations, and the embedded local site
    ("builder.backends", "builder.verify", "builder.publishers", "builder.site"),
    # the kinds registry, recipes, rendering; written recipes are validated against the kinds' models
    ("builder.kinds", "builder.recipes", "builder.render", "builder.rpm.written"),
    # the pipeline: the graph, build, publish, GitLab
    ("builder.pipeline",),
    # the command line
    ("builder.cli", "builder.__main__"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_of(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), index)
    return best[1]


def _import_graph() -> dict[str, set[str]]:
    """builder module -> the builder modules it imports, wherever the import is (functions and
    ``TYPE_CHECKING`` blocks included); ``from pkg import mod`` counts as importing pkg.mod."""
    modules = {_module_name(path): path for path in _modules()}
    return {
        name: {m for _, m in _imports(path) if m in modules and m != name} for name, path in modules.items()
    }


def test_every_module_has_a_layer():
    assert [m for m in _import_graph() if _layer_of(m) < 0] == []


def test_layers_import_downward_only():
    offenders = [
        f"{module} (layer {_layer_of(module)}) imports {imported} (layer {_layer_of(imported)})"
        for module, imported_set in _import_graph().items()
        for imported in sorted(imported_set)
        if _layer_of(imported) > _layer_of(module)
    ]
    assert offenders == [], "imports upward:\n" + "\n".join(offenders)


def test_no_import_cycle_among_builder_modules():
    graph = _import_graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path: list[str] = []
        stack = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                cycles.append(" -> ".join([*path[path.index(child) :], child]))
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_layer_checks_would_see_a_cycle_and_an_upward_import(tmp_path):
    """The checks above read what they claim to: an import inside a function and one under
    TYPE_CHECKING are found, and resolved to builder modules."""
    module = tmp_path / "builder" / "backends" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..pipeline.graph import load\n"
        "def f():\n    from ..kinds import names\n"
    )
    found = {name for _, name in _imports_in(module, tmp_path)}
    assert {"builder.pipeline.graph", "builder.kinds"} <= found
    assert _layer_of("builder.pipeline.graph") > _layer_of("builder.backends.probe")


def _route_words() -> set[str]:
    return {route.name for route in BUILTIN_ROUTES}


def test_route_names_are_compared_only_in_publishers():
    words = _route_words()
    assert {"glance", "registry", "repo", "ipa"} <= words
    offenders = [
        f"{_rel(path)}:{line}: {value!r}"
        for path in _modules()
        if not path.is_relative_to(BUILDER / "publishers")
        for line, value in _compared_constants(ast.parse(path.read_text()))
        if value in words
    ]
    assert offenders == [], "route names compared outside builder/publishers/:\n" + "\n".join(offenders)


_CAPABILITY_HOLDERS = ("backend", "publisher", "route", "spec")


def _named(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def test_no_getattr_on_a_backend_publisher_or_route():
    offenders = [
        f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and node.args
        and any(word in _named(node.args[0]).lower() for word in _CAPABILITY_HOLDERS)
    ]
    assert offenders == [], offenders


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_cli_groups_share_only_common_and_import_one_another_without_a_cycle():
    """Each command group (builder/cli/recipes.py, ...) adds its own commands; what they share is
    builder/cli/common.py (by public names: :func:`test_no_module_imports_a_private_name_of_another`).
    ``__init__`` imports the groups; only ``__main__`` imports it."""
    paths = {_module_name(path): path for path in _modules(BUILDER / "cli")}
    edges = {
        module: {
            max((m for m in paths if name == m or name.startswith(m + ".")), key=len)
            for _, name in _imports(path)
            if name == "builder.cli" or name.startswith("builder.cli.")
        }
        - {module}
        for module, path in paths.items()
    }
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


def test_no_module_imports_a_private_name_of_another():
    """What one module of builder/ uses of another is public: no ``from x import _name``, no
    ``module._name`` on a module it imported."""
    private = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
        ours = [
            node
            for node in imports
            if not isinstance(node, ast.ImportFrom) or node.level or (node.module or "").startswith("builder")
        ]
        bound = {(alias.asname or alias.name).split(".")[0] for node in ours for alias in node.names}
        private += [
            f"{_rel(path)}:{node.lineno}: {alias.name}"
            for node in ours
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
    assert private == [], private


_SAYS_WHY = ("start-up", "first use")


def test_an_import_inside_a_function_is_for_start_up_time_and_says_so():
    """Imports go at the top of a module. Inside a function only a heavy one, imported on first use,
    with a comment that says so (in builder/cli/, the module's docstring may say it once for all its
    commands), or an optional one inside ``try``."""
    offenders = []
    for path in _modules():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        said_for_module = path.is_relative_to(BUILDER / "cli") and any(
            word in (ast.get_docstring(tree) or "") for word in _SAYS_WHY
        )
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in ast.walk(t)}
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in optional:
                    continue
                said = " ".join(lines[node.lineno - 1 : node.end_lineno])
                if not said_for_module and not any(word in said for word in _SAYS_WHY):
                    offenders.append(f"{_rel(path)}:{node.lineno}: {said.strip()}")
    assert offenders == [], "\n".join(offenders)
