"""The target graph: targets and what each builds on (``Target.depends_on``), walked one way for
everyone: the build loop and the plan (:meth:`TargetGraph.order`), loading a recipe with what it
builds on and a generated job's ``kiln build ID`` (:meth:`TargetGraph.closure`). Both walks are
iterative: expansion already refused cycles, and a long chain must not exhaust the stack."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .kind import Target


class TargetGraph:
    def __init__(self, targets: Iterable[Target]):
        self.targets = list(targets)
        self.by_id = {t.id: t for t in self.targets}

    def order(self) -> list[Target]:
        """The targets ordered so that each comes after those it builds on (stable otherwise)."""
        ordered: list[Target] = []
        seen: set[str] = set()
        for start in self.targets:
            stack: list[tuple[Target, int]] = [(start, 0)]
            while stack:
                target, index = stack.pop()
                if index == 0:
                    if target.id in seen:
                        continue
                    seen.add(target.id)
                deps = [self.by_id[d] for d in target.depends_on if d in self.by_id]
                if index < len(deps):
                    stack.append((target, index + 1))
                    if deps[index].id not in seen:
                        stack.append((deps[index], 0))
                    continue
                ordered.append(target)
        return ordered

    def closure(self, ids: Iterable[str], skip: Callable[[Target], bool] = lambda target: False) -> set[str]:
        """``ids`` and every target they build on, directly or not, in this graph; a dependency for
        which ``skip`` is true is left out with what it builds on (a job's ``needs:`` brought it)."""
        wanted: set[str] = set()
        todo = list(ids)
        while todo:
            current = todo.pop()
            if current in wanted:
                continue
            wanted.add(current)
            target = self.by_id.get(current)
            if target is not None:
                todo.extend(d for d in target.depends_on if d in self.by_id and not skip(self.by_id[d]))
        return wanted


def dependencies_first(targets: Iterable[Target]) -> list[Target]:
    """``targets`` ordered so that each comes after the targets it builds on (stable otherwise)."""
    return TargetGraph(targets).order()
