"""Long-running local services: start detached, remember by pid file, stop only what we started.

A pid file alone is not proof: after a reboot the pid may belong to something else. Each pid file
records the process's start time (from /proc), and ``stop`` signals only a process whose start time
still matches, so ``kiln site down`` never kills a stranger.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..host.run import Runner, stop_process_group


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    healthy: Callable[[], bool]  # cheap probe: True once the service answers
    cwd: Path | None = None


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return fields[19]  # starttime, in clock ticks since boot


class ServiceProcess:
    def __init__(self, spec: ServiceSpec, run_dir: Path, log_dir: Path, runner: Runner | None = None):
        self.spec = spec
        self.runner = runner or Runner()
        self.pid_file = run_dir / f"{spec.name}.pid"
        self.log_path = log_dir / f"{spec.name}.log"

    def pid(self) -> int | None:
        """The pid of the process this site started, if it is still that process."""
        try:
            record = json.loads(self.pid_file.read_text())
            pid = int(record["pid"])
            start = record["start"]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None  # no pid file, or not one this site wrote: nothing of ours is running
        if pid <= 0 or _start_time(pid) != start:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int | None:
        """Start the service detached (it outlives ``kiln site up``); its pid, or None in a dry run."""
        existing = self.pid()
        if existing is not None:
            return existing
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        started = self.runner.start(
            self.spec.argv, log_path=self.log_path, env=self.spec.env, cwd=self.spec.cwd, detach=True
        )
        if started.pid is None:
            return None
        record = {"pid": started.pid, "start": _start_time(started.pid), "argv": list(self.spec.argv)}
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.pid_file)
        return started.pid

    def wait_healthy(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.spec.healthy():
                return True
            if not self.running():
                return False
            time.sleep(0.2)
        return self.spec.healthy()

    def stop(self, grace_s: float = 10.0) -> bool:
        """Stop the process group this site started; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_process_group(pid, grace_s)  # ours: the start time matched
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def run_once(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """A short set-up command (db_sync, ring builder); raises with its output on failure."""
    return Runner().run(list(argv), env=dict(env or {}), cwd=cwd, timeout=300).output


def installed_version(distribution: str) -> str:
    """The version of a Debian-packaged Python distribution (glance, keystone), so that a cached
    database schema is never reused across versions; "unknown" when it is not installed so."""
    for suffix in (".egg-info", ".dist-info"):
        for dist in Path("/usr/lib/python3/dist-packages").glob(f"{distribution}-*{suffix}"):
            return dist.name.removesuffix(suffix).removeprefix(f"{distribution}-")
    return "unknown"


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only (a file holding a password), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(text)
    tmp.replace(path)
