"""Nothing outlives the command that started it: the gpg-agent that signing with Kiln's own keyring
starts is stopped when the last command using that keyring ends (a `kiln rpm rebuild --publish`
while no local site is up used to leave one behind, serving the site's gnupg/ forever)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from builder import cli, signing
from builder.cli import recipes

pytestmark = pytest.mark.needs_tool("gpg")


def _sign_something(home: Path) -> None:
    """What rpmsign and the provenance signer do: a detached signature, which starts the agent."""
    key = signing.ensure_key(home, home.parent / "RPM-GPG-KEY-kiln")
    data = home.parent / "data.txt"
    data.write_text("signed\n")
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--local-user", key.fingerprint,
         "--detach-sign", str(data)],
        check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture
def keyring(tmp_path) -> Path:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is not installed: run `make test`, which installs it")
    home = tmp_path / "site" / "gnupg"
    yield home
    signing.release_keyrings()
    signing.stop_daemons(home)


def test_the_command_that_signed_with_the_sites_keyring_stops_its_agent_when_it_ends(
    keyring, monkeypatch, tmp_path
):
    def signing_command(args) -> int:
        _sign_something(keyring)
        assert signing.daemon_pids(keyring), "signing started no agent: this test proves nothing"
        return 0

    monkeypatch.setattr(recipes, "cmd_validate", signing_command)
    assert cli.main(["--root", str(tmp_path), "--ledger", str(tmp_path / "l.sqlite"), "validate"]) == 0
    assert signing.daemon_pids(keyring) == []


def test_a_command_still_signing_keeps_the_agent_and_the_last_one_out_stops_it(keyring):
    _sign_something(keyring)  # this process holds the keyring now
    [agent, *_] = signing.daemon_pids(keyring)
    other = subprocess.Popen(
        ["flock", "--shared", str(keyring / signing.USERS_LOCK), "sh", "-c", "echo holding; sleep 30"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert other.stdout is not None and other.stdout.readline() == "holding\n"
        assert signing.release_keyrings() == []
        assert agent in signing.daemon_pids(keyring), "another command was still using the keyring"
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # flock, its shell and the sleep: all hold the lock
        other.wait()
    _wait_until_nobody_holds(keyring / signing.USERS_LOCK)  # the killed ones' locks go when they do
    signing.hold_keyring(keyring)
    assert agent in signing.release_keyrings()
    assert signing.daemon_pids(keyring) == []


def _wait_until_nobody_holds(lock: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    with lock.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{lock} is still held"
                time.sleep(0.05)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
            return
