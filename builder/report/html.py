"""``kiln report --html DIR``: the build matrix as one static page (no server; works from a file or
GitLab Pages). Logs and provenance statements are copied beside it, so every link is relative.

The paths of logs and statements come from the ledger, which is data: a file is copied only when it
lies below Kiln's build root once symlinks are resolved (``outdir.read_below``); any other is listed
as "log not available". Everything is written through the writer that never follows a symlink below
the page's directory (``outdir.write_below``).

Rendered from ``templates/report/matrix.html.j2`` in a sandboxed Jinja2 environment with HTML
autoescaping (recipe names, errors and log paths are data, never markup).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from ..arch import Arch
from ..outdir import read_below, write_below
from . import STATES, Row, age, size_text

LOG_TAIL_BYTES = 256 << 10  # a log copied beside the page keeps its last 256 KiB
STATEMENT_MAX_BYTES = 16 << 20  # a provenance statement (or its signature) larger than this is not copied
CHART_W, CHART_H = 160, 32


def environment(templates_dir: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(templates_dir / "report")),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def sparkline(durations: list[tuple[int, float]]) -> dict[str, Any] | None:
    """Points of an inline SVG polyline of build durations (pure)."""
    values = [d for _, d in durations][-30:]
    if not values:
        return None
    top, bottom = max(values), min(values)
    span = (top - bottom) or 1.0
    step = CHART_W / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{CHART_H - 3 - ((v - bottom) / span) * (CHART_H - 6):.1f}"
        for i, v in enumerate(values)
    )
    return {
        "points": points,
        "width": CHART_W,
        "height": CHART_H,
        "last": values[-1],
        "max": top,
        "count": len(values),
        "title": f"build durations, last {len(values)}: latest {values[-1]:.0f} s, "
        f"shortest {bottom:.0f} s, longest {top:.0f} s",
    }


@dataclass
class Copies:
    """The files the page links to, copied into its directory as they are met."""

    build_root: Path  # the only tree logs and statements are copied from
    out_dir: Path

    def log(self, log: str | None, build_id: int | None) -> str | None:
        if not log or build_id is None:
            return None
        content = read_below(self.build_root, log, tail=LOG_TAIL_BYTES)
        return None if content is None else self._add(f"logs/build-{build_id}.log", content)

    def statement(self, path: str, build_id: int | None) -> str | None:
        content = read_below(self.build_root, path, limit=STATEMENT_MAX_BYTES)
        if content is None:
            return None
        name = Path(path).name
        signature = read_below(self.build_root, path + ".asc", limit=STATEMENT_MAX_BYTES)
        if signature is not None:
            self._add(f"provenance/build-{build_id}-{name}.asc", signature)
        return self._add(f"provenance/build-{build_id}-{name}", content)

    def _add(self, relative: str, content: bytes) -> str:
        write_below(self.out_dir, [(relative, content, 0o644)])
        return relative


def write_report(
    rows: list[Row], out_dir: Path, templates_dir: Path, *, build_root: Path, generated: float | None = None
) -> Path:
    """Write ``index.html`` (plus ``logs/`` and ``provenance/``, and ``matrix.json``) into ``out_dir``;
    logs and statements are copied only from below ``build_root``."""
    generated = time.time() if generated is None else generated
    copies = Copies(build_root, out_dir)
    arches = [a.value for a in Arch]
    view_rows = []
    for row in rows:
        cells = []
        for arch in arches:
            cell = row.cells[arch]
            view = {
                "arch": arch,
                "state": cell.state,
                "css": cell.state.replace(" ", "-").replace("/", ""),
                "build_id": cell.build_id,
                "age": age(generated - cell.finished_at) if cell.finished_at else "",
                "size": size_text(cell.size) if cell.size else "",
                "duration": f"{cell.duration_s:.0f} s" if cell.duration_s is not None else "",
                "verification": cell.verification,
                "log": (log := copies.log(cell.log, cell.build_id)),
                "log_not_available": bool(cell.log) and log is None,
                "provenance": [p for p in (copies.statement(p, cell.build_id) for p in cell.provenance) if p],
                "published": cell.published,
                "error": (cell.error or "")[:300],
            }
            cells.append(view)
        view_rows.append(
            {
                "name": row.name,
                "recipe": row.recipe,
                "kind": row.kind,
                "cells": cells,
                "chart": sparkline(row.durations),
            }
        )
    counts = {s: sum(1 for r in rows for c in r.cells.values() if c.state == s) for s in STATES}
    html = (
        environment(templates_dir)
        .get_template("matrix.html.j2")
        .render(
            rows=view_rows,
            arches=arches,
            states=[s for s in STATES if s != "n/a"],
            counts=counts,
            generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated)),
        )
    )
    matrix_json = json.dumps([r.as_json() for r in rows], indent=2, sort_keys=True) + "\n"
    files = [
        ("matrix.json", matrix_json.encode(), 0o644),
        ("index.html", html.encode("utf-8"), 0o644),  # last: a page whose links are all there
    ]
    write_below(out_dir, files)
    return out_dir / "index.html"
