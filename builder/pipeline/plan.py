"""The plan: every target with its digest and its state in the ledger, and the order to build in
(dependencies first). Decides; does no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.kind import Target
from ..ledger import TargetState, state_from


@dataclass(frozen=True)
class PlanEntry:
    target: Target
    state: TargetState

    @property
    def needs_build(self) -> bool:
        return self.state is not TargetState.UP_TO_DATE

    def as_json(self) -> dict[str, Any]:
        return {**self.target.summary(), "state": self.state.value, "needs_build": self.needs_build}


def make_plan(targets: list[Target], succeeded: dict[str, set[str]]) -> list[PlanEntry]:
    """``succeeded`` maps target id -> digests with a successful build (Ledger.states())."""
    return [PlanEntry(t, state_from(succeeded, t.id, t.digest)) for t in targets]


def plan_table(entries: list[PlanEntry]) -> str:
    """A fixed-width table for people; ``--json`` gives the same data to machines."""
    rows = [("TARGET", "KIND", "STATE", "DIGEST", "DEPENDS ON")]
    for e in entries:
        t = e.target
        rows.append((t.id, t.kind, e.state.value, t.digest[:12], ", ".join(t.depends_on) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    counts = {s: sum(1 for e in entries if e.state is s) for s in TargetState}
    lines.append(
        f"{len(entries)} targets: "
        + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
        + ("" if entries else "none")
    )
    return "\n".join(lines)
