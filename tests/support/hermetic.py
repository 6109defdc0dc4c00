"""Tests are hermetic: the session gets its own ledger, build root and site (state and ports), and
nothing opens the workspace's `.kiln/` (what `make demo` leaves there: its ledger, builds and site).

Two guards, because the tests run Kiln both in-process and as subprocesses:

- an audit hook (PEP 578) in the test process records every open, listing, rename, removal and
  sqlite connection of a path under the forbidden directory, reads included, and every connection
  to the local site's default ports on loopback (the services `make demo` leaves running: a
  site.yaml that names no ports means those);
- a snapshot of the forbidden tree (names, sizes, mtimes) before and after the session catches
  what any subprocess wrote there.

Either one fails the test run, naming the paths (tests/conftest.py ``pytest_sessionfinish``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from builder.siteconfig import LocalPorts

# The variables through which the session points Kiln away from the workspace's .kiln/.
SESSION_ENV = ("KILN_LEDGER", "KILN_BUILD_ROOT", "KILN_SITE")


def without_session_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Kiln whose defaults should be its own workspace's (a GitLab job in a test's repo,
    whose artifacts are the job's ``.kiln/build``)."""
    return {k: v for k, v in env.items() if k not in SESSION_ENV}


# Audit events whose first argument is a path (https://docs.python.org/3/library/audit_events.html).
PATH_EVENTS = frozenset({
    "open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod",
    "os.chown", "os.truncate", "os.utime", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree",
    "shutil.rmtree", "shutil.move", "sqlite3.connect",
})  # fmt: skip
# Events whose relative path may be relative to a directory descriptor (``dir_fd=``, as in
# ``shutil.rmtree``), which "open" does not even report: only absolute paths count for them.
RELATIVE_TO_A_DIR_FD = frozenset({
    "open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod", "os.chown", "os.truncate",
    "os.utime", "os.link", "os.symlink",
})  # fmt: skip


# The local site's default ports (builder.siteconfig.LocalPorts): where `make demo`'s services listen.
DEMO_PORTS = {port: name for name, port in LocalPorts().model_dump().items()}
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class Guard:
    """Records the paths under ``forbidden`` that this process touches, and its connections to the
    demo site's ports."""

    def __init__(self, forbidden: Path):
        self.forbidden = str(forbidden.absolute())
        self.touched: list[str] = []
        self.current = ""  # the test running now (tests/conftest.py sets it), named with each touch
        self._expecting: list[str] | None = None

    def path_of(self, event: str, args: tuple[object, ...]) -> str | None:
        """The forbidden path this event touches, or None. Pure (but for the working directory)."""
        if event not in PATH_EVENTS or not args:
            return None
        target = args[0]
        if isinstance(target, int) or target is None:  # a file descriptor
            return None
        with contextlib.suppress(TypeError, ValueError):
            text = os.fsdecode(target)  # type: ignore[arg-type]
            if event == "sqlite3.connect" and text.startswith("file:"):  # a URI: file:PATH?mode=ro
                text = text.removeprefix("file:").split("?", 1)[0]
            if not os.path.isabs(text) and event in RELATIVE_TO_A_DIR_FD:
                return None  # maybe relative to a directory descriptor the event does not name
            path = os.path.abspath(text)
            if path == self.forbidden or path.startswith(self.forbidden + "/"):
                return path
        return None

    @staticmethod
    def demo_port_of(event: str, args: tuple[object, ...]) -> str | None:
        """``127.0.0.1:19292 (glance)`` when this event connects to a demo site port, else None. Pure."""
        if event != "socket.connect" or len(args) < 2:
            return None
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2 and address[0] in LOOPBACK:
            name = DEMO_PORTS.get(address[1])  # type: ignore[call-overload]
            if name is not None:
                return f"{address[0]}:{address[1]} (the demo site's {name} port)"
        return None

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        path = self.path_of(event, args) or self.demo_port_of(event, args)
        if path is not None:
            if self._expecting is not None:
                self._expecting.append(f"{event} {path}")
            else:
                self.touched.append(f"{self.current or 'outside any test'}: {event} {path}")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inside, nothing is recorded (the guard's own look at the tree)."""
        with self.expecting():
            yield

    @contextlib.contextmanager
    def expecting(self) -> Iterator[list[str]]:
        """Inside, touches are collected for the caller (a test of the guard) instead of failing."""
        self._expecting = caught = []
        try:
            yield caught
        finally:
            self._expecting = None


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything below ``root`` (symlinks not followed)."""
    found: dict[str, tuple[int, int]] = {}
    if not root.is_dir():
        return found
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


# What the services `make demo` left running write on their own clock, whatever the tests do: the
# registry's upload purge, for one, runs at a random time after start and logs it. The session's
# site settings name other ports, so a test does not reach these services.
WRITTEN_BY_RUNNING_SITE = ("site/logs/",)


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What was added, removed or modified between two snapshots (the running site's own logs aside)."""
    found = (
        [f"added {p}" for p in after.keys() - before.keys()]
        + [f"removed {p}" for p in before.keys() - after.keys()]
        + [f"modified {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    )
    return sorted(f for f in found if not f.split(" ", 1)[1].startswith(WRITTEN_BY_RUNNING_SITE))
