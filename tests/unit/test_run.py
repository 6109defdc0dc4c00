"""The subprocess runner: argument lists only, streamed logs, masking, timeouts that leave nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from builder.errors import CommandFailed
from builder.run import MASK, Runner, wait_for_exit


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
