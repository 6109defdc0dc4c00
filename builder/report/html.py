"""``kiln report --html DIR``: the build matrix as one static page (no server; works from a file or
GitLab Pages). Logs and provenance statements are copied beside it, so every link is relative.

Rendered from ``templates/report/matrix.html.j2`` in a sandboxed Jinja2 environment with HTML
autoescaping (recipe names, errors and log paths are data, never markup).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from ..arch import Arch
from . import STATES, Row, age, size_text

LOG_TAIL_BYTES = 256 << 10  # a log copied beside the page keeps its last 256 KiB
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


def write_report(
    rows: list[Row], out_dir: Path, templates_dir: Path, *, generated: float | None = None
) -> Path:
    """Write ``index.html`` (plus ``logs/`` and ``provenance/``, and ``matrix.json``) into ``out_dir``."""
    generated = time.time() if generated is None else generated
    out_dir.mkdir(parents=True, exist_ok=True)
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
                "log": _copy_log(cell.log, out_dir, cell.build_id),
                "provenance": [
                    p for p in (_copy_provenance(p, out_dir, cell.build_id) for p in cell.provenance) if p
                ],
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
    page = out_dir / "index.html"
    page.write_text(html, encoding="utf-8")
    (out_dir / "matrix.json").write_text(
        json.dumps([r.as_json() for r in rows], indent=2, sort_keys=True) + "\n"
    )
    return page


def _copy_log(log: str | None, out_dir: Path, build_id: int | None) -> str | None:
    if not log or build_id is None:
        return None
    source = Path(log)
    if not source.is_file():
        return None
    dest = out_dir / "logs" / f"build-{build_id}.log"
    dest.parent.mkdir(exist_ok=True)
    with source.open("rb") as handle:
        size = source.stat().st_size
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        dest.write_bytes(handle.read())
    return dest.relative_to(out_dir).as_posix()


def _copy_provenance(path: str, out_dir: Path, build_id: int | None) -> str | None:
    source = Path(path)
    if not source.is_file():
        return None
    dest = out_dir / "provenance" / f"build-{build_id}-{source.name}"
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(source, dest)
    signature = source.with_name(source.name + ".asc")
    if signature.is_file():
        shutil.copyfile(signature, dest.with_name(dest.name + ".asc"))
    return dest.relative_to(out_dir).as_posix()
