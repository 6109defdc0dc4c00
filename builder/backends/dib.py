"""Guest images with diskimage-builder: run the rendered ``disk-image-create`` command for a target.

Everything recipe-derived comes from the render directory (``build.json``'s argv, ``dib.env``);
everything site-derived (mirrors, CA certificates, caches, host shims) is added here, at build
time, so that the target's digest does not depend on the site.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandFailed
from ..manifest import Artifact, artifact_for
from ..run import Runner

BUILD_TIMEOUT_S = 3 * 3600  # a ppc64el build under emulation takes ~15 min here; leave room


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=shell-quoted value`` lines, as rendered by templates/dib/environment.j2."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        [assignment] = shlex.split(line)
        key, _, value = assignment.partition("=")
        env[key] = value
    return env


@dataclass(frozen=True)
class DibRun:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    outputs: list[tuple[Path, str]]  # (image file, format)


def plan_run(render_dir: Path, out_dir: Path, site_env: dict[str, str]) -> DibRun:
    """The exact command, environment and expected outputs (pure apart from reading the render dir)."""
    spec = json.loads((render_dir / "build.json").read_text())
    argv = list(spec["argv"])
    output_stem = Path(argv[argv.index("-o") + 1])  # relative to out_dir, e.g. image/<slug>
    env = {**read_env_file(render_dir / spec["env_file"]), **site_env}
    outputs = [(out_dir / f"{output_stem}.{fmt}", fmt) for fmt in spec.get("formats", ["qcow2"])]
    return DibRun(argv, env, out_dir, outputs)


def run_build(run: DibRun, runner: Runner, log_path: Path) -> list[Artifact]:
    run.cwd.mkdir(parents=True, exist_ok=True)
    for path, _ in run.outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # never report a stale image from an earlier build as this one's
    # On SIGTERM, DIB's own traps unmount its chroot; give them time before SIGKILL.
    runner.run(
        run.argv, cwd=run.cwd, env=run.env, log_path=log_path, timeout=BUILD_TIMEOUT_S, kill_grace_s=60
    )
    missing = [str(p) for p, _ in run.outputs if not p.exists()]
    if missing:
        raise CommandFailed(
            f"disk-image-create finished but did not write {', '.join(missing)} (log: {log_path})"
        )
    return [
        artifact_for(run.cwd, path, f"image-{fmt}" if len(run.outputs) > 1 else "image", "disk-image", fmt)
        for path, fmt in run.outputs
    ]
