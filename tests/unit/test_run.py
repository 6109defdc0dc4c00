"""The subprocess runner: argument lists only, streamed logs, masking, timeouts that leave nothing running;
background processes (start), short questions (capture), and the one way to stop a process group."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from builder.errors import CommandFailed
from builder.host.run import (
    MASK,
    Runner,
    TimeoutExpired,
    processes_matching,
    stop_process_group,
    stop_processes,
    tool_version,
    wait_for_exit,
)


def test_runs_an_argument_list_and_streams_lines_to_log_and_callback(tmp_path):
    seen: list[str] = []
    log = tmp_path / "logs" / "step.log"
    result = Runner(on_line=seen.append).run(
        [sys.executable, "-c", "print('one'); print('two', flush=True)"], log_path=log
    )
    assert result.returncode == 0
    assert seen == ["one", "two"]
    text = log.read_text()
    assert "one\ntwo\n" in text and text.startswith("$ ") and "# exit 0" in text


def test_refuses_a_shell_string():
    with pytest.raises(TypeError, match="argument lists"):
        Runner().run("echo hi; rm -rf /")  # type: ignore[arg-type]


def test_metacharacters_in_arguments_reach_the_program_verbatim(tmp_path):
    marker = tmp_path / "pwned"
    value = f"x; touch {marker}; $(touch {marker}) `touch {marker}`"
    result = Runner().run([sys.executable, "-c", "import sys; print(sys.argv[1])", value])
    assert result.tail == (value,)
    assert not marker.exists()


def test_secrets_are_masked_in_output_logs_echo_and_errors(tmp_path):
    secret = "s3cr3t-token"
    echoed: list[str] = []
    runner = Runner(secrets=[secret], echo=echoed.append)
    log = tmp_path / "x.log"
    with pytest.raises(CommandFailed) as caught:
        runner.run(
            [sys.executable, "-c", f"print('token={secret}'); raise SystemExit(3)", secret], log_path=log
        )
    for text in (str(caught.value), log.read_text(), echoed[0]):
        assert secret not in text
        assert MASK in text
    assert "exited 3" in str(caught.value)


def test_non_zero_exit_raises_with_the_tail_unless_check_is_false():
    with pytest.raises(CommandFailed, match="boom"):
        Runner().run([sys.executable, "-c", "import sys; print('boom'); sys.exit(2)"])
    result = Runner().run([sys.executable, "-c", "raise SystemExit(2)"], check=False)
    assert result.returncode == 2


def test_missing_program_is_a_clear_error():
    with pytest.raises(CommandFailed, match="no-such-tool-kiln: command not found"):
        Runner().run(["no-such-tool-kiln", "--help"])


def test_timeout_stops_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out after 1"):
        Runner().run([sys.executable, "-c", script], timeout=1)
    assert time.monotonic() - started < 15
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the grandchild outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_dry_run_prints_the_exact_command_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    echoed: list[str] = []
    result = Runner(dry_run=True, echo=echoed.append).run(
        ["touch", str(marker)], cwd=tmp_path, env={"DIB_RELEASE": "bookworm"}
    )
    assert result.dry_run and not marker.exists()
    assert echoed == [f"cd {tmp_path} && env DIB_RELEASE=bookworm touch {marker}"]


def test_environment_overrides_reach_the_program():
    result = Runner().run(
        [sys.executable, "-c", "import os; print(os.environ['KILN_TEST_VALUE'])"],
        env={"KILN_TEST_VALUE": "a b $c"},
    )
    assert result.tail == ("a b $c",)
    assert "KILN_TEST_VALUE" not in os.environ


def test_wait_for_exit_times_out_and_leaves_the_process_to_the_caller():
    proc = subprocess.Popen(["sleep", "5"])
    try:
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            wait_for_exit(proc, 0.2)
        assert 0.15 < time.monotonic() - started < 2
        assert proc.poll() is None  # still running: stopping it is the caller's decision
    finally:
        proc.kill()
        proc.wait()
    assert wait_for_exit(subprocess.Popen(["sh", "-c", "exit 3"]), 10) == 3


def test_a_timeout_too_large_for_poll_still_waits_for_the_exit():
    assert Runner().run([sys.executable, "-c", "pass"], timeout=float(10**12)).returncode == 0


# --- start: long-running processes ------------------------------------------------------------------

# A group leader that starts a child which ignores SIGTERM, writes both pids, then sleeps.
STUBBORN_FAMILY = (
    "import os, signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    '\'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ready", flush=True); '
    "time.sleep(60)'], stdout=subprocess.PIPE)\n"
    "child.stdout.readline()\n"
    "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}')\n"
    "time.sleep(60)\n"
)


def _family(pidfile) -> list[int]:
    assert _wait(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2), "never started"
    return [int(pid) for pid in pidfile.read_text().split()]


def _wait(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_started_stop_ends_a_group_whose_child_ignores_sigterm(tmp_path):
    pidfile = tmp_path / "pids"
    started = Runner().start(
        [sys.executable, "-c", STUBBORN_FAMILY, str(pidfile)], log_path=tmp_path / "x.log"
    )
    leader, child = _family(pidfile)
    assert started.pid == leader and os.getpgid(child) == leader
    assert started.poll() is None
    began = time.monotonic()
    assert started.stop(grace_s=0.5) is True
    assert time.monotonic() - began < 5
    assert not _alive(leader) and not _alive(child), "the child that ignores SIGTERM survived"
    assert started.poll() is not None
    assert started.stop() is False  # nothing left to stop


def test_stop_process_group_by_pid_stops_a_detached_group(tmp_path):
    """``kiln site down`` has only a pid file: the same function stops the group by its leader's pid."""
    pidfile = tmp_path / "pids"
    started = Runner().start([sys.executable, "-c", STUBBORN_FAMILY, str(pidfile)], detach=True)
    leader, child = _family(pidfile)
    assert stop_process_group(leader, grace_s=0.5) is True
    assert not _alive(leader) and not _alive(child)
    assert started.poll() is not None
    assert stop_process_group(leader) is False


def test_stop_process_group_refuses_our_own_group():
    with pytest.raises(ValueError):
        stop_process_group(os.getpgrp())


def test_start_logs_the_masked_command_line_and_the_output(tmp_path):
    secret = "hunter2-token"
    echoed: list[str] = []
    log = tmp_path / "logs" / "svc.log"
    runner = Runner(secrets=[secret], echo=echoed.append)
    started = runner.start(
        [sys.executable, "-c", "print('hello', flush=True)", f"--password={secret}"], log_path=log
    )
    assert started.wait(timeout=10) == 0
    text = log.read_text()
    assert text.startswith("$ ") and "hello\n" in text
    for line in (text, echoed[0]):
        assert secret not in line and f"--password={MASK}" in line


def test_dry_run_start_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    echoed: list[str] = []
    started = Runner(dry_run=True, echo=echoed.append).start(
        ["touch", str(marker)], log_path=tmp_path / "l.log"
    )
    assert started.dry_run and started.pid is None
    assert started.poll() == 0 and started.wait() == 0 and started.stop() is False
    assert echoed == [f"touch {marker}"]
    assert not marker.exists() and not (tmp_path / "l.log").exists()


def test_start_of_a_missing_program_is_a_clear_error():
    with pytest.raises(CommandFailed, match="no-such-tool-kiln: command not found"):
        Runner().start(["no-such-tool-kiln"])


def test_wait_on_a_started_process_times_out_and_leaves_it_running():
    started = Runner().start(["sleep", "30"])
    try:
        with pytest.raises(TimeoutExpired):
            started.wait(timeout=0.1)
        assert started.poll() is None
    finally:
        started.stop(grace_s=1)


def test_an_attached_process_does_not_outlive_the_python_process_that_started_it(tmp_path):
    pidfile = tmp_path / "pid"
    script = (
        "import sys\n"
        "from builder.host.run import Runner\n"
        "started = Runner().start(['sleep', '60'])\n"
        "open(sys.argv[1], 'w').write(str(started.pid))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(pidfile)], check=True, timeout=30)
    pid = int(pidfile.read_text())
    assert _wait(lambda: not _alive(pid)), "an attached process outlived its starter"


def test_stop_processes_stops_single_processes_that_lead_no_group(tmp_path):
    pidfile = tmp_path / "pids"
    started = Runner().start([sys.executable, "-c", STUBBORN_FAMILY, str(pidfile)])
    leader, child = _family(pidfile)
    try:
        done = stop_processes([child], grace_s=0.3)
        assert done == [f"kill -SIGTERM {child}", f"kill -SIGKILL {child}"]
        assert not _alive(child) and _alive(leader)
    finally:
        started.stop(grace_s=1)


def test_processes_matching_finds_a_process_by_its_arguments(tmp_path):
    argv = (sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path))
    started = Runner().start(argv)
    try:
        assert processes_matching(lambda found: str(tmp_path) in found) == {started.pid: argv}
    finally:
        started.stop(grace_s=1)
    assert processes_matching(lambda found: str(tmp_path) in found) == {}  # a zombie is no process


# --- capture: short questions -----------------------------------------------------------------------


def test_capture_returns_output_and_status_without_raising():
    done = Runner().capture(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    )
    assert (done.returncode, done.stdout, done.stderr, done.ok) == (3, "out\n", "err\n", False)


def test_capture_of_a_missing_program_has_no_status_and_says_why():
    done = Runner().capture(["no-such-tool-kiln", "--version"])
    assert done.returncode is None and not done.timed_out
    assert "no-such-tool-kiln" in done.error


def test_capture_timeout_stops_the_whole_group_and_returns_quickly(tmp_path):
    pidfile = tmp_path / "pids"
    began = time.monotonic()
    done = Runner().capture(
        [sys.executable, "-c", STUBBORN_FAMILY, str(pidfile)], timeout=1.5, kill_grace_s=0.3
    )
    assert time.monotonic() - began < 10
    assert done.timed_out and done.returncode is None and "timed out after 1.5s" in done.error
    leader, child = _family(pidfile)
    assert not _alive(leader) and not _alive(child)


def test_capture_masks_secrets_and_logs_when_asked(tmp_path):
    log = tmp_path / "q.log"
    done = Runner(secrets=["sekrit"]).capture(["echo", "token=sekrit"], log_path=log)
    assert done.stdout == f"token={MASK}\n"
    assert "sekrit" not in log.read_text() and "# exit 0" in log.read_text()


def test_capture_under_dry_run_runs_queries_but_not_actions(tmp_path):
    marker = tmp_path / "ran"
    echoed: list[str] = []
    runner = Runner(dry_run=True, echo=echoed.append)
    assert runner.capture(["echo", "version 1"]).stdout == "version 1\n"
    skipped = runner.capture(["touch", str(marker)], query=False)
    assert skipped.dry_run and skipped.returncode is None and not marker.exists()
    assert echoed == [f"touch {marker}"]  # the query ran, and is not shown as a step


def test_tool_version_is_the_first_line_or_unknown():
    assert tool_version([sys.executable, "--version"]).startswith("Python 3.")
    assert tool_version(["no-such-tool-kiln", "--version"]) == "unknown"
    assert tool_version(["sleep", "5"], timeout=0.2) == "unknown"
