"""``kiln render``: every target's build files written under an output directory, one
subdirectory per target (its rendered files and ``target.json``: id, digest, inputs, files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.kind import Target
from ..render import RenderedFile, render_target, write_rendered


def render_into(
    targets: list[Target],
    templates_dir: Path,
    out_dir: Path,
    on_progress: Callable[[int, int, str], None] = lambda done, total, what: None,
) -> list[dict[str, Any]]:
    report = []
    for index, target in enumerate(targets, 1):
        files = render_target(target, templates_dir)
        target_dir = out_dir / target.slug
        description = {
            **target.summary(),
            "inputs": list(target.inputs),
            "files": sorted(f.path for f in files),
        }
        text = json.dumps(description, indent=2, sort_keys=True) + "\n"
        write_rendered(
            [*files, RenderedFile("target.json", text.encode(), 0o644)], out_dir, under=target.slug
        )
        report.append({"id": target.id, "digest": target.digest, "dir": str(target_dir)})
        on_progress(index, len(targets), target.id)
    return report
