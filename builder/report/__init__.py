"""The build matrix: recipes x arches with the latest state of each target, from the ledger.

``matrix(...)`` is pure (the ledger's history and the workspace's current targets in, rows out);
``builder/report/html.py`` writes the static page.

A cell's state: ``published`` (its latest build is of the current inputs and was published),
``built`` (current, not published), ``stale`` (its inputs changed since its last successful build),
``failed`` (its latest build failed or was cancelled), ``never built``; ``n/a`` where the recipe
does not build for that arch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..arch import Arch

STATES = ("published", "built", "stale", "failed", "never built", "n/a")


@dataclass
class Cell:
    state: str
    target: str = ""
    build_id: int | None = None
    finished_at: float | None = None
    size: int = 0
    duration_s: float | None = None
    verification: str = ""
    log: str | None = None  # a path (the caller may copy it next to the page)
    provenance: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Row:
    name: str  # recipe:release[+variant]
    recipe: str
    kind: str
    cells: dict[str, Cell]
    durations: list[tuple[int, float]]  # (build id, seconds) of this row's successful builds, oldest first

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "recipe": self.recipe,
            "kind": self.kind,
            "cells": {a: c.as_json() for a, c in self.cells.items()},
            "durations": self.durations,
        }


def row_name(target_id: str) -> tuple[str, str]:
    """``debian-12:bookworm:ppc64le`` -> (``debian-12:bookworm``, ``ppc64le``)."""
    name, _, arch = target_id.rpartition(":")
    return name, arch


def matrix(
    history: list[dict[str, Any]],
    current: dict[str, tuple[str, str, str]],
    attestations: dict[int, list[dict[str, Any]]] | None = None,
    arches: tuple[str, ...] = tuple(a.value for a in Arch),
) -> list[Row]:
    """Rows for every target the workspace has now (``current``: target id -> (recipe, kind,
    digest)) and every target the ledger remembers (``history``: ``Ledger.history()``, any order)."""
    attestations = attestations or {}
    by_target: dict[str, list[dict[str, Any]]] = {}
    for build in sorted(history, key=lambda b: b["id"]):
        by_target.setdefault(build["target_id"], []).append(build)
    rows: dict[str, Row] = {}
    for target_id in sorted(set(current) | set(by_target)):
        builds = by_target.get(target_id, [])
        recipe, kind, digest = current.get(target_id) or (builds[-1]["recipe"], builds[-1]["kind"], None)
        name, arch = row_name(target_id)
        row = rows.setdefault(name, Row(name, recipe, kind, {}, []))
        row.cells[arch] = _cell(target_id, builds, digest, attestations)
        row.durations += [
            (b["id"], float(b["duration_s"]))
            for b in builds
            if b["status"] == "succeeded" and b.get("duration_s") is not None
        ]
    for row in rows.values():
        row.durations.sort()
        for arch in arches:
            row.cells.setdefault(arch, Cell("n/a"))
    return [rows[k] for k in sorted(rows)]


def _cell(
    target_id: str,
    builds: list[dict[str, Any]],
    digest: str | None,
    attestations: dict[int, list[dict[str, Any]]],
) -> Cell:
    finished = [b for b in builds if b["status"] != "running"]
    if not finished:
        return Cell("never built", target_id)
    latest = finished[-1]
    if latest["status"] != "succeeded":
        shown, state = latest, "failed"
    else:
        shown = latest
        if digest is not None and latest["digest"] != digest:
            state = "stale"
        else:
            state = "published" if latest["publications"] else "built"
    verdict = shown.get("verification") or {}
    return Cell(
        state=state,
        target=target_id,
        build_id=shown["id"],
        finished_at=shown.get("finished_at"),
        size=int(shown.get("size") or 0),
        duration_s=shown.get("duration_s"),
        verification=str(verdict.get("status", "")),
        log=shown.get("log_path"),
        provenance=[a["path"] for a in attestations.get(shown["id"], []) if a["type"] == "provenance"],
        published=[f"{p['publisher']}: {p['location']}" for p in shown.get("publications", [])],
        error=shown.get("error") if state == "failed" else None,
    )


def age(seconds_ago: float) -> str:
    if seconds_ago < 120:
        return f"{int(seconds_ago)} s ago"
    if seconds_ago < 7200:
        return f"{int(seconds_ago // 60)} min ago"
    if seconds_ago < 172800:
        return f"{int(seconds_ago // 3600)} h ago"
    return f"{int(seconds_ago // 86400)} d ago"


def size_text(size: int) -> str:
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.0f} MiB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.0f} KiB"
    return f"{size} B"


def now() -> float:
    return time.time()
