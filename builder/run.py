"""The one subprocess runner every backend and publisher goes through.

- Argument lists only: a command is a list of strings, never a shell string, so recipe values cannot
  become shell syntax. A caller that needs a shell must say so with an explicit ``["sh", "-c", ...]``
  built from constants.
- Output is streamed line by line to a log file and an optional callback (progress), and the tail is
  kept in memory for error messages.
- Secrets (passwords, tokens) are masked in logs, echoes and errors.
- Timeouts and interrupts stop the whole process group (DIB forks chroots and loop helpers).
- ``dry_run`` prints the exact commands instead of running them.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import CommandFailed

TAIL_LINES = 200
POLL_MAX_S = 2_000_000.0  # ~23 days: poll()'s timeout is milliseconds in a C int
KILL_GRACE_S = 10.0
MASK = "********"


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    duration_s: float
    tail: tuple[str, ...]  # last lines of combined stdout+stderr, secrets masked
    log_path: Path | None
    dry_run: bool = False

    @property
    def output(self) -> str:
        return "\n".join(self.tail)


@dataclass
class Runner:
    dry_run: bool = False
    secrets: list[str] = field(default_factory=list)
    on_line: Callable[[str], None] | None = None  # each output line, masked (progress display)
    echo: Callable[[str], None] | None = None  # the command line, masked, before it runs

    def add_secret(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    def describe(
        self, argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        """The command as a copy-pasteable shell line (for --dry-run and logs), secrets masked."""
        parts = []
        if cwd is not None:
            parts.append(f"cd {shlex.quote(str(cwd))} &&")
        if env:
            parts.append("env " + " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items())))
        parts.append(shlex.join(argv))
        return self.mask(" ".join(parts))

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        log_path: Path | None = None,
        check: bool = True,
        stdin: bytes | None = None,
        kill_grace_s: float = KILL_GRACE_S,
    ) -> RunResult:
        args = _checked_argv(argv)
        line = self.describe(args, cwd, env)
        if self.echo is not None:
            self.echo(line)
        if self.dry_run:
            return RunResult(args, 0, 0.0, (), None, dry_run=True)

        full_env = {**os.environ, **(env or {})}
        log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = log_path.open("a", encoding="utf-8")
            log.write(f"$ {line}\n")
            log.flush()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so we can stop all of it
            )
        except FileNotFoundError as exc:
            if log is not None:
                log.close()
            raise CommandFailed(f"{args[0]}: command not found (is it installed?)") from exc
        reader = threading.Thread(target=self._pump, args=(proc, log, tail), daemon=True)
        reader.start()
        timed_out = False
        try:
            if stdin is not None and proc.stdin is not None:
                proc.stdin.write(stdin)
                proc.stdin.close()
            try:
                wait_for_exit(proc, timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_process_group(proc, kill_grace_s)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM turned into an exception): leave nothing running.
            stop_process_group(proc, kill_grace_s)
            raise
        finally:
            reader.join(timeout=5)
            if log is not None:
                log.write(f"# exit {proc.returncode} after {time.monotonic() - started:.1f}s\n")
                log.close()
        result = RunResult(args, proc.returncode, time.monotonic() - started, tuple(tail), log_path)
        if timed_out:
            raise CommandFailed(
                f"{self.mask(shlex.join(args))}: timed out after {timeout}s\n{_tail_text(tail)}"
            )
        if check and proc.returncode != 0:
            where = f" (log: {log_path})" if log_path else ""
            raise CommandFailed(
                f"{self.mask(shlex.join(args))}: exited {proc.returncode}{where}\n{_tail_text(tail)}"
            )
        return result

    def _pump(self, proc: subprocess.Popen[bytes], log: IO[str] | None, tail: deque[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = self.mask(raw.decode("utf-8", errors="replace").rstrip("\n"))
            tail.append(text)
            if log is not None:
                log.write(text + "\n")
                log.flush()
            if self.on_line is not None:
                self.on_line(text)


def wait_for_exit(proc: subprocess.Popen[bytes], timeout: float | None) -> int:
    """``proc.wait(timeout)`` that returns as soon as the process exits.

    With a timeout, ``Popen.wait`` polls with sleeps that double up to 50 ms, so a 25 ms command is
    noticed about 30 ms after it started, and a publish that runs rpmsign and gpg pays that each
    time. A pidfd (Linux >= 5.3) becomes readable the moment the process exits."""
    if timeout is None:
        return proc.wait()
    if timeout > POLL_MAX_S:  # poll() takes milliseconds in a C int
        return proc.wait(timeout=timeout)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # another OS, an old kernel, or already reaped
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def _checked_argv(argv: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise TypeError("commands are argument lists, not shell strings")
    args = tuple(os.fspath(a) for a in argv)
    if not args:
        raise ValueError("empty command")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"command arguments must be strings, got {type(arg).__name__}")
        if "\x00" in arg:
            raise ValueError("NUL byte in a command argument")
    return args


def _tail_text(tail: Iterable[str], lines: int = 20) -> str:
    last = list(tail)[-lines:]
    return "\n".join(f"  | {line}" for line in last)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait()
