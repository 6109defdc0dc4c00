"""ServiceProcess with real (tiny) processes: pid files, start times, and never killing a stranger."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.site.process import ServiceProcess, ServiceSpec, _start_time

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def gone(pid: int) -> bool:
    """True once ``pid`` is neither running nor an unreaped zombie."""
    return not Path(f"/proc/{pid}").exists()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """make(argv=..., healthy=..., env=...) -> a ServiceProcess in tmp dirs; stopped after the test."""
    made: list[ServiceProcess] = []

    def _make(
        argv: tuple[str, ...] = SLEEPER,
        healthy: Callable[[], bool] = lambda: False,
        env: dict[str, str] | None = None,
        name: str = "svc",
    ) -> ServiceProcess:
        spec = ServiceSpec(name=name, argv=argv, env=env or {}, healthy=healthy, cwd=tmp_path)
        service = ServiceProcess(spec, tmp_path / "run", tmp_path / "log")
        made.append(service)
        return service

    yield _make
    for service in made:
        with contextlib.suppress(Exception):  # some tests leave a malformed pid file on purpose
            if service.pid() is not None:
                service.stop(grace_s=2)
        with contextlib.suppress(Exception):  # reap a child left as a zombie by an exited process
            leftover = json.loads(service.pid_file.read_text())["pid"]
            if isinstance(leftover, int) and leftover != os.getpid():
                os.waitpid(leftover, os.WNOHANG)


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process this test owns but no ServiceProcess started: a group leader, so killpg would hit it."""
    proc = subprocess.Popen(list(SLEEPER), start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def forge_pid_file(service: ServiceProcess, pid: int, start: str | None) -> None:
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.write_text(json.dumps({"pid": pid, "start": start, "argv": ["sleep"]}))


def test_start_writes_a_pid_file_and_runs(make):
    service = make()
    assert not service.running()
    pid = service.start()
    record = json.loads(service.pid_file.read_text())
    assert record["pid"] == pid
    assert record["start"] == _start_time(pid)
    assert record["argv"] == list(SLEEPER)
    assert service.running()
    assert service.pid() == pid
    assert os.getpgid(pid) == pid  # its own process group, so stop() can signal the group


def test_start_again_returns_the_same_process(make):
    service = make()
    first = service.start()
    assert service.start() == first
    assert json.loads(service.pid_file.read_text())["pid"] == first


def test_stop_ends_the_process_and_removes_the_pid_file(make):
    service = make()
    pid = service.start()
    assert service.stop(grace_s=5) is True
    assert wait_for(lambda: gone(pid))
    assert not service.pid_file.exists()
    assert not service.running()
    assert service.stop() is False  # nothing left to stop


def test_stop_kills_a_process_that_ignores_sigterm(make):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    service = make(argv=(sys.executable, "-c", code))
    pid = service.start()
    assert wait_for(lambda: "ready" in service.tail())
    started = time.monotonic()
    assert service.stop(grace_s=0.5) is True
    assert time.monotonic() - started < 5
    # SIGKILL is not waited for, so an unreaped zombie may remain (it is our child here): dead is enough.
    assert wait_for(lambda: _start_time(pid) is None)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def test_output_and_environment_reach_the_log(make):
    code = "import os, time; print('mark=' + os.environ['KILN_TEST_MARK'], flush=True); time.sleep(60)"
    service = make(argv=(sys.executable, "-c", code), env={"KILN_TEST_MARK": "hello"})
    service.start()
    assert wait_for(lambda: "mark=hello" in service.tail())
    assert service.log_path.exists()


def test_tail_without_a_log_is_empty(make):
    assert make().tail() == ""


def test_mismatched_start_time_with_own_pid_is_not_running_and_not_signalled(make):
    service = make()
    forge_pid_file(service, os.getpid(), "1")
    assert service.pid() is None
    assert not service.running()
    assert service.stop(grace_s=0.5) is False
    assert not service.pid_file.exists()
    os.kill(os.getpid(), 0)  # still here (a SIGTERM to our group would have ended the test run)


def test_mismatched_start_time_never_signals_that_process(make, stranger):
    service = make()
    real = _start_time(stranger.pid)
    assert real is not None
    forge_pid_file(service, stranger.pid, str(int(real) + 1))  # the pid was reused by a stranger
    assert not service.running()
    assert service.start() != stranger.pid  # a new process, not the stranger
    service.stop(grace_s=2)
    forge_pid_file(service, stranger.pid, str(int(real) + 1))
    assert service.stop(grace_s=0.5) is False
    time.sleep(0.2)
    assert stranger.poll() is None  # the stranger is alive


def test_matching_start_time_is_trusted(make, stranger):
    # The control for the test above: the same pid file with the right start time is ours.
    service = make()
    forge_pid_file(service, stranger.pid, _start_time(stranger.pid))
    assert service.pid() == stranger.pid


def test_pid_file_of_an_exited_process_is_not_running(make):
    service = make(argv=(sys.executable, "-c", "pass"))
    pid = service.start()
    assert wait_for(lambda: not service.running())
    assert _start_time(pid) is None  # a zombie counts as gone
    assert service.stop() is False
    assert not service.pid_file.exists()
    os.waitpid(pid, 0)  # it is our child: reap the zombie


def test_wait_healthy_returns_false_quickly_when_the_process_exits(make):
    service = make(argv=(sys.executable, "-c", "import sys; sys.exit(3)"))
    service.start()
    started = time.monotonic()
    assert service.wait_healthy(timeout_s=30) is False
    assert time.monotonic() - started < 10


def test_wait_healthy_returns_true_once_the_probe_answers(make, tmp_path):
    ready = tmp_path / "ready"
    code = f"import pathlib, time; time.sleep(0.3); pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    service = make(argv=(sys.executable, "-c", code), healthy=ready.exists)
    service.start()
    assert service.wait_healthy(timeout_s=20) is True
    assert service.running()


def test_wait_healthy_times_out_when_the_probe_never_answers(make):
    service = make()
    service.start()
    started = time.monotonic()
    assert service.wait_healthy(timeout_s=0.5) is False
    assert time.monotonic() - started >= 0.5
    assert service.running()


@pytest.mark.parametrize("text", ["12345\n", '{"pid": "abc"}', '{"pid": null}', "[1, 2]"])
def test_malformed_pid_file_is_not_running(make, text):
    service = make()
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.write_text(text)
    assert service.pid() is None
    assert service.stop() is False
