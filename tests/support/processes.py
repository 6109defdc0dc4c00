"""What the tests started and what is still running: daemons that left their process group
(gpg-agent, dirmngr) and services, found again by their command line or by the test run's mark."""

from __future__ import annotations

import os
from pathlib import Path

from builder.host.run import processes_matching, stop_processes
from builder.signing import daemon_homedir

# Every process a test run starts inherits this variable (set in tests/conftest.py), daemons too:
# it tells this run's leftovers from processes that other runs on the same machine started.
RUN_MARK = "KILN_TEST_RUN"


def _spellings(path: Path) -> tuple[str, ...]:
    return tuple({str(path), str(path.absolute()), str(path.resolve())})


def naming(path: Path) -> dict[int, tuple[str, ...]]:
    """{pid: argv} of running processes whose command line names ``path`` or a path below it."""
    prefixes = _spellings(path)

    def names(argv: tuple[str, ...]) -> bool:
        return any(p == arg or f"{p}/" in arg or arg.endswith(p) for arg in argv for p in prefixes)

    return processes_matching(names)


def gpg_daemons_under(root: Path) -> dict[int, tuple[str, ...]]:
    """gpg's daemons (gpg-agent, dirmngr, keyboxd, scdaemon) whose --homedir is ``root`` or below it."""
    prefixes = _spellings(root)

    def under(argv: tuple[str, ...]) -> bool:
        home = daemon_homedir(argv)
        return home is not None and any(home == p or home.startswith(f"{p}/") for p in prefixes)

    return processes_matching(under)


def stop_gpg_daemons_under(root: Path) -> list[int]:
    """Stop the gpg daemons that tools (dnf's gpgme, gpg itself) started for keyrings under ``root``."""
    found = sorted(gpg_daemons_under(root))
    stop_processes(found, grace_s=5)
    return found


def marked(token: str) -> dict[int, tuple[str, ...]]:
    """{pid: argv} of running processes whose environment carries ``RUN_MARK=token``."""
    needle = f"{RUN_MARK}={token}".encode()
    found = {}
    for pid, argv in processes_matching(lambda _: True).items():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found[pid] = argv
    return found


def pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def running(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
