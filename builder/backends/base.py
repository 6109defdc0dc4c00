"""What every backend shares: running a planned command, placing copies, collecting and clearing
outputs, the Debian mirror, the build facts file. The interface itself (``Backend``: a pure ``plan``
and an I/O ``run``; ``BuildJob``, ``BuildRun``) is in builder/core/kind.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.kind import BuildJob, BuildRun
from ..errors import CommandFailed
from ..host.command import Command
from ..host.compat import host_apt_mirror
from ..manifest import Artifact, artifact_for

if TYPE_CHECKING:
    from ..host.run import Runner

Step = Callable[[str], None]


def run_command(
    command: Command, runner: Runner, log: Path, on_line: Callable[[str], None] | None = None
) -> None:
    """Run one planned command through the runner, its output lines also to ``on_line`` (progress)."""
    if on_line is not None:
        runner = replace(runner, on_line=on_line)
    runner.run(
        command.argv,
        cwd=command.cwd,
        env=dict(command.env),
        timeout=command.timeout_s,
        log_path=log,
        kill_grace_s=command.kill_grace_s,
    )


def place_copies(run: BuildRun) -> None:
    """The files a plan copies into place before its commands (CA certificates, apt keys)."""

    for source, destination in run.copies:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)


def debian_mirror(job: BuildJob) -> str:
    """The Debian archive debootstrap and apt use: site.yaml's, else the one this host's apt uses."""

    return str(job.site.mirrors.debian or host_apt_mirror() or "http://deb.debian.org/debian")


def collect_outputs(run: BuildRun, log: Path) -> list[Artifact]:
    """The artifacts a plan promised, measured; a missing one fails the build."""
    missing = [str(o.path) for o in run.outputs if not o.path.exists()]
    if missing:
        raise CommandFailed(f"{run.tool} finished but did not write {', '.join(missing)} (log: {log})")
    return [artifact_for(run.base_dir, o.path, o.name, o.type, o.format) for o in run.outputs]


def clear_outputs(run: BuildRun) -> None:
    """Never report a stale file from an earlier build as this one's."""
    for output in run.outputs:
        output.path.parent.mkdir(parents=True, exist_ok=True)
        output.path.unlink(missing_ok=True)


# Beside a build's outputs: what the backend can tell about how it built (e.g. DIB's base tree and
# phase times). The pipeline copies it into the manifest and the ledger; a backend need not write it.
FACTS = "build-facts.json"


def write_build_facts(out_dir: Path, facts: dict[str, Any]) -> None:

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FACTS).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")


def read_build_facts(out_dir: Path) -> dict[str, Any]:

    try:
        data = json.loads((out_dir / FACTS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
