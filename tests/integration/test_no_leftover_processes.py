"""Nothing Kiln or its tests start outlives them: `kiln site down` leaves no process behind (gpg's
agent included), and a test run that leaves one fails (tests/conftest.py's session-end check)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builder import signing
from builder.host.net import free_port
from builder.publishers.repo import RepoKey, RepoPublisher
from builder.site.local import REPO_KEY_FILE, LocalSite
from builder.siteconfig import LocalPorts, LocalSiteSettings
from builder.workspace import PACKAGE_ROOT
from tests.conftest import _missing
from tests.support import processes
from tests.support.rpms import build_noarch_rpm

KILN = [sys.executable, "-m", "builder.cli"]
needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg")


def _kiln(site_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process: what it starts is detached from it, as for a user."""
    return subprocess.run(
        [*KILN, "--root", str(PACKAGE_ROOT), "--site", str(site_file), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE_ROOT,
    )


@pytest.mark.site
def test_site_down_leaves_no_process_behind_gpg_agent_included(tmp_path):
    missing = _missing()
    if missing:
        pytest.skip(f"local site tools missing ({', '.join(missing)})")
    state = tmp_path / "site"
    ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump({"local": {"state_dir": str(state), "ports": ports.model_dump(mode="json")}})
    )
    before = processes.pids()
    up = _kiln(site_file, "site", "up")
    try:
        assert up.returncode == 0, up.stderr
        site = LocalSite(state, LocalSiteSettings(state_dir=str(state), ports=ports))
        services = {name: entry["pid"] for name, entry in site.status().items()}
        assert all(services.values()), services
        # Sign a package and the metadata as a publish does: rpmsign and gpg use the site's keyring.
        key = signing.ensure_key(site.gnupghome, site.repo_root / REPO_KEY_FILE)
        publisher = RepoPublisher(
            site.repo_root,
            RepoKey(key.gnupghome, key.fingerprint, f"{site.urls.repo}/{REPO_KEY_FILE}"),
            site.urls.repo,
        )
        publisher.publish(
            [build_noarch_rpm(tmp_path, "kiln-leftover")], repo="k", distro="el", release="9", arch="x86_64"
        )
        agents = signing.daemon_pids(site.gnupghome)
        assert agents, "gpg started no agent for the site's keyring: this test would prove nothing"
    finally:
        down = _kiln(site_file, "site", "down")
    assert down.returncode == 0, down.stderr
    left = processes.naming(state)
    assert not left, f"still running after `kiln site down`: {left}"
    assert not [pid for pid in [*services.values(), *agents] if processes.running(pid)]
    token = os.environ.get(processes.RUN_MARK)
    if token:  # memcached names no path: the run's mark finds everything this test started
        started_here = {pid: argv for pid, argv in processes.marked(token).items() if pid not in before}
        assert not started_here, f"still running after `kiln site down`: {started_here}"


@needs_gpg
def test_stop_daemons_reaches_an_agent_that_gpgconf_cannot(tmp_path):
    """gpgconf finds an agent by its socket, where the socket would be *now*: under
    ``/run/user/UID/gnupg/d.HASH`` when that directory exists, else in the homedir. An agent that
    started while that differed has its socket elsewhere; gpgconf misses it and still exits 0.
    Here the socket is renamed (deleting it would make the agent exit: it watches for that)."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg-connect-agent", "--homedir", str(home), "/bye"], capture_output=True, check=True)
    [agent] = signing.daemon_pids(home)
    socket = Path(
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--list-dirs", "agent-socket"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    try:
        socket.rename(socket.with_name("S.gpg-agent.elsewhere"))
        gpgconf = subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
        assert gpgconf.returncode == 0
        time.sleep(0.2)
        assert processes.running(agent), "gpgconf reached it after all: this test would prove nothing"
        assert signing.stop_daemons(home) == [agent]
        assert not processes.running(agent)
        assert signing.stop_daemons(home) == []
    finally:
        processes.stop_gpg_daemons_under(tmp_path)
        socket.with_name("S.gpg-agent.elsewhere").unlink(missing_ok=True)


LEAKY_TEST = """
import subprocess

def test_leaves_a_daemon_behind():
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    open({pidfile!r}, "w").write(str(proc.pid))
"""


def test_a_test_run_that_leaves_a_process_behind_fails_and_names_it(tmp_path):
    """The session-end check in tests/conftest.py, on a run of one test that leaks a process."""
    pidfile = tmp_path / "leaked.pid"
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(LEAKY_TEST.format(pidfile=str(pidfile)))
    inner = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            "-q",
            str(test_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE_ROOT,
    )
    leaked = int(pidfile.read_text())
    assert inner.returncode == pytest.ExitCode.TESTS_FAILED, inner.stdout + inner.stderr
    assert "LEFTOVER PROCESSES" in inner.stdout and f"{leaked}: sleep 120" in inner.stdout
    assert "1 passed" in inner.stdout
    assert not processes.running(leaked), "the check reported the leftover but left it running"
