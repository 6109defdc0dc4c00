"""The one subprocess runner every backend and publisher goes through.

- Argument lists only: a command is a list of strings, never a shell string, so recipe values cannot
  become shell syntax. A caller that needs a shell must say so with an explicit ``["sh", "-c", ...]``
  built from constants.
- Output is streamed line by line to a log file and an optional callback (progress), and the tail is
  kept in memory for error messages.
- Secrets (passwords, tokens) are masked in logs, echoes and errors.
- Timeouts and interrupts stop the whole process group (DIB forks chroots and loop helpers).
- ``dry_run`` prints the exact commands instead of running them.

Three ways in, one way out. :meth:`Runner.run` runs a step to completion; :meth:`Runner.capture`
asks a short question (versions, probes) and never raises; :meth:`Runner.start` starts a
long-running process (QEMU, the site's services) and hands back a :class:`Started`. Every one of
them gets its own process group, and :func:`stop_process_group` is the only code that stops one
(SIGTERM, a grace period, SIGKILL); it takes a pid too, for ``kiln site down``, which has only pid
files. No other module of Kiln imports ``subprocess``.
"""

from __future__ import annotations

import atexit
import contextlib
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

from .. import masking
from ..errors import CommandFailed

TAIL_LINES = 200
POLL_MAX_S = 2_000_000.0  # ~23 days: poll()'s timeout is milliseconds in a C int
KILL_GRACE_S = 10.0
KILL_WAIT_S = 5.0  # after SIGKILL: how long to wait for the kernel to finish the processes off
CAPTURE_TIMEOUT_S = 30.0
MASK = "********"

TimeoutExpired = subprocess.TimeoutExpired  # what Started.wait raises; no caller imports subprocess


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


@dataclass(frozen=True)
class Captured:
    """What a short command said: :meth:`Runner.capture` never raises for the command's sake."""

    argv: tuple[str, ...]
    returncode: int | None  # None: it did not finish (not found, timed out) or did not run (dry run)
    stdout: str  # secrets masked
    stderr: str
    timed_out: bool = False
    error: str = ""  # why there is no exit status
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Started:
    """A long-running process started by :meth:`Runner.start`, the leader of its own process group.

    Under ``dry_run`` nothing was started: ``pid`` is None, ``poll()`` says it exited with 0 and
    ``stop()`` does nothing."""

    def __init__(
        self,
        argv: tuple[str, ...],
        proc: subprocess.Popen[bytes] | None,
        log_path: Path | None,
        detached: bool,
    ):
        self.argv = argv
        self.log_path = log_path
        self.detached = detached
        self._proc = proc

    @property
    def dry_run(self) -> bool:
        return self._proc is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return 0 if self._proc is None else self._proc.returncode

    def poll(self) -> int | None:
        """The exit status once the process has exited, else None (reaps it when it has)."""
        if self._proc is None:
            return 0
        code = self._proc.poll()
        if code is not None:
            _attached.discard(self)
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status; raises :data:`TimeoutExpired` (and leaves it running) after ``timeout``."""
        if self._proc is None:
            return 0
        code = wait_for_exit(self._proc, timeout)
        _attached.discard(self)
        return code

    def stop(self, grace_s: float = KILL_GRACE_S) -> bool:
        """Stop its whole process group (see :func:`stop_process_group`); True if a signal was sent."""
        _attached.discard(self)
        if self._proc is None:
            return False
        return stop_process_group(self._proc, grace_s)


_attached: set[Started] = set()  # started without detach and not yet seen to exit: stopped at exit


@atexit.register
def _stop_attached() -> None:
    """A safety net: an attached process never outlives the Kiln process that started it."""
    for started in list(_attached):
        started.stop(grace_s=2.0)


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
        """This runner's own secrets, then the process-wide layer (URL credentials, secrets from the
        environment and site.yaml: builder/masking.py)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return masking.mask(text)

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

    def capture(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = CAPTURE_TIMEOUT_S,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        log_path: Path | None = None,
        query: bool = True,
        kill_grace_s: float = 2.0,
    ) -> Captured:
        """Run a short command and return what it printed and its exit status; never raises for it.

        A missing program or a timeout is a :class:`Captured` without a ``returncode`` (a timeout
        stops the command's whole process group first). ``query`` (the default) says the command
        only looks (a version, a probe): it runs under ``dry_run`` too, since what a dry run prints
        depends on it, and it is not echoed there as a step. ``query=False`` is honoured like
        :meth:`run`: echoed, and under ``dry_run`` not run."""
        args = _checked_argv(argv)
        line = self.describe(args, cwd, env)
        if self.echo is not None and not (self.dry_run and query):
            self.echo(line)
        if self.dry_run and not query:
            return Captured(args, None, "", "", dry_run=True)
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:  # not found, not executable, bad cwd
            result = Captured(args, None, "", "", error=f"{args[0]}: {exc.strerror or exc}")
            _log_captured(log_path, line, result)
            return result
        timed_out = False
        try:
            try:
                out, err = proc.communicate(input.encode() if input is not None else None, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_process_group(proc, kill_grace_s)
                out, err = proc.communicate()
        except BaseException:
            stop_process_group(proc, kill_grace_s)
            raise
        result = Captured(
            args,
            None if timed_out else proc.returncode,
            self.mask(out.decode("utf-8", errors="replace")),
            self.mask(err.decode("utf-8", errors="replace")),
            timed_out=timed_out,
            error=f"timed out after {timeout}s" if timed_out else "",
        )
        _log_captured(log_path, line, result)
        return result

    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        detach: bool = False,
    ) -> Started:
        """Start a long-running process in its own process group and return at once.

        Its stdout and stderr go to ``log_path`` (appended to, after the masked command line), or
        nowhere. An attached process (the default: QEMU) is stopped at the latest when this Python
        process exits; a ``detach``-ed one (the site's services) outlives it and is stopped later
        with :func:`stop_process_group` on its pid. Its output is written by the process itself,
        so it is not masked: give secrets to background processes in files, not on stdout.
        Under ``dry_run`` it is echoed and nothing starts."""
        args = _checked_argv(argv)
        line = self.describe(args, cwd, env)
        if self.echo is not None:
            self.echo(line)
        if self.dry_run:
            return Started(args, None, log_path, detach)
        out: IO[bytes] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = log_path.open("ab")
            out.write(f"$ {line}\n".encode())
            out.flush()
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop_process_group stops all of it
            )
        except FileNotFoundError as exc:
            raise CommandFailed(f"{args[0]}: command not found (is it installed?)") from exc
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        started = Started(args, proc, log_path, detach)
        if not detach:
            _attached.add(started)
        return started

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


def _log_captured(log_path: Path | None, line: str, result: Captured) -> None:
    if log_path is None:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {line}\n{result.output}")
        if result.output and not result.output.endswith("\n"):
            log.write("\n")
        log.write(f"# exit {result.returncode}{' (' + result.error + ')' if result.error else ''}\n")


def tool_version(
    argv: Sequence[str], runner: Runner | None = None, timeout: float = CAPTURE_TIMEOUT_S
) -> str:
    """The first line a ``--version`` command prints (stdout, else stderr), or ``"unknown"``."""
    done = (runner or Runner()).capture(argv, timeout=timeout)
    if done.returncode is None:
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


# --- stopping processes: the one implementation of "SIGTERM, grace, SIGKILL" -----------------------


def stop_process_group(target: int | subprocess.Popen[bytes], grace_s: float = KILL_GRACE_S) -> bool:
    """SIGTERM the process group ``target`` leads, give every member ``grace_s`` to exit, then
    SIGKILL what is left. True if a signal was sent.

    ``target`` is a child started by this runner (it is reaped), or the pid of a group leader that
    the caller knows is its own (``kiln site down`` checks the start time in its pid file first).
    Members that outlive their leader (a child that ignores SIGTERM) are waited for and killed too.
    Daemons that leave the group with ``setsid`` (gpg-agent) are not members: their owners find
    them with :func:`processes_matching` and stop them with :func:`stop_processes` (for gpg's
    daemons: ``builder.publishers.signing.stop_daemons``)."""
    proc = target if isinstance(target, subprocess.Popen) else None
    pgid = target.pid if isinstance(target, subprocess.Popen) else int(target)
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to stop process group {pgid}")

    def reap() -> None:
        if proc is not None:
            proc.poll()
        else:
            _reap(pgid)

    def signal_group(sig: signal.Signals) -> bool:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:  # the group has a member we may not signal: at least its leader
            try:
                os.kill(pgid, sig)
            except (ProcessLookupError, PermissionError):
                return False
        return True

    def running() -> bool:
        reap()
        return _group_members(pgid) != []

    sent = _terminate(signal_group, running, grace_s)
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_WAIT_S)
    reap()
    return sent


def stop_processes(pids: Iterable[int], grace_s: float = KILL_GRACE_S) -> list[str]:
    """The same for single processes that are no group's leader (daemons found by a scan).
    Returns what was done, as ``kill -SIGTERM PID`` lines."""
    targets = sorted({int(pid) for pid in pids if int(pid) > 1 and int(pid) != os.getpid()})
    done: list[str] = []

    def signal_each(sig: signal.Signals) -> bool:
        sent = False
        for pid in targets:
            if not _alive(pid):
                continue
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
            done.append(f"kill -{sig.name} {pid}")
            sent = True
        return sent

    def running() -> bool:
        for pid in targets:
            _reap(pid)
        return any(_alive(pid) for pid in targets)

    _terminate(signal_each, running, grace_s)
    return done


def processes_matching(match: Callable[[tuple[str, ...]], bool]) -> dict[int, tuple[str, ...]]:
    """{pid: argv} of the running processes (zombies and this one left out) whose argv ``match``es:
    how daemons that left their process group (gpg-agent) are found again."""
    found: dict[int, tuple[str, ...]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = _cmdline(int(entry.name))
        if argv and match(argv) and _alive(int(entry.name)):
            found[int(entry.name)] = argv
    return found


PF_KTHREAD = 0x00200000


def _cmdline(pid: int) -> tuple[str, ...]:
    """``pid``'s argv; empty for a zombie, a kernel thread or a process that is gone. A process in
    the middle of exec shows an empty command line for a moment: it is read again."""
    for _ in range(20):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                raw = cmdline.read()
        except OSError:
            return ()
        if raw:
            return tuple(part.decode("utf-8", errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X") or int(fields[6]) & PF_KTHREAD:
            return ()
        time.sleep(0.005)
    return ()


def _terminate(send: Callable[[signal.Signals], bool], running: Callable[[], bool], grace_s: float) -> bool:
    if not running() or not send(signal.SIGTERM):
        return False
    if not _wait_until(lambda: not running(), grace_s):
        send(signal.SIGKILL)
        _wait_until(lambda: not running(), KILL_WAIT_S)
    return True


def _wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]; None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (which only waits for its parent to reap it)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)  # cheap: no such group at all
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is an exited child of ours (else nothing to do)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
