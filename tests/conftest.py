"""Shared fixtures: a throwaway workspace, a recipe writer, and (session-wide, started once for
integration and e2e tests alike) the real local site on free loopback ports and the docker engine.

At the end of the run, after every fixture's teardown, no process the tests started may be left
(``pytest_sessionfinish`` below): a leftover fails the run, is named, and is stopped."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.host.net import free_port
from builder.host.run import stop_processes
from builder.site.local import LocalSite
from builder.siteconfig import LocalPorts, LocalSiteSettings, SiteConfig
from builder.workspace import PACKAGE_ROOT, Workspace
from tests.support import processes

REPO = PACKAGE_ROOT


# --- nothing the tests start outlives them -------------------------------------------------------------

_RUN: dict[str, object] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # Every process started from here on inherits the mark (daemons that leave their process group too).
    token = secrets.token_hex(8)
    os.environ[processes.RUN_MARK] = token
    _RUN.update(token=token, before=processes.pids())


def leftover_processes(session: pytest.Session) -> dict[int, tuple[str, ...]]:
    """Processes this run started that are still running: they carry the run's mark in their
    environment, or name a path under the run's temporary directory (sudo drops the environment)."""
    if "token" not in _RUN:
        return {}
    found = processes.marked(str(_RUN["token"]))
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)  # None: no test asked for a temporary directory
    if basetemp is not None:
        found.update(processes.naming(Path(basetemp)))
    before = _RUN["before"]
    assert isinstance(before, set)
    return {pid: argv for pid, argv in found.items() if pid not in before}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs after the session fixtures' teardown (``local_site`` is down by now)."""
    left = leftover_processes(session)
    if not left:
        return
    lines = [f"  {pid}: {' '.join(argv)[:300]}" for pid, argv in sorted(left.items())]
    report = "processes started by this test run outlived it:\n" + "\n".join(lines)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "LEFTOVER PROCESSES", red=True)
        reporter.write_line(report)
    else:
        print(report)
    stop_processes(left, grace_s=5)  # reported; now leave nothing behind for the next run either
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A fresh workspace: the repository's templates/ and elements/, an empty recipes/."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "elements", root / "elements")
    (root / "recipes").mkdir()
    return Workspace(root)


@pytest.fixture
def write(workspace: Workspace) -> Callable[[str, str], Path]:
    """write("recipes/x.yaml", text) -> the path; text is dedented."""

    def _write(relative: str, text: str) -> Path:
        path = workspace.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


# --- the real local site, once per test run ------------------------------------------------------------

NEEDED = (
    "glance-api",
    "docker-registry",
    "createrepo_c",
    "swift-proxy-server",
    "memcached",
    "gpg",
    "rpmsign",
)


def _missing() -> list[str]:
    return [tool for tool in NEEDED if shutil.which(tool) is None]


@pytest.fixture(scope="session")
def site_settings(tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    state = tmp_path_factory.mktemp("site")
    ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
    return SiteConfig(local=LocalSiteSettings(state_dir=str(state), ports=ports))


@pytest.fixture(scope="session")
def local_site(site_settings: SiteConfig) -> Iterator[LocalSite]:
    missing = _missing()
    if missing:
        pytest.skip(f"local site tools missing ({', '.join(missing)}): run `make test`, which installs them")
    site = LocalSite(Path(site_settings.local.state_dir), site_settings.local)
    started = time.monotonic()
    site.up()
    site.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    yield site
    site.down()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running docker engine: the one that is there, or dockerd started for this run."""
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        pytest.skip("docker is not installed: run `make test`, which installs docker.io")
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        yield
        return
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            pytest.fail(f"dockerd did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield
    proc.terminate()
    proc.wait(timeout=30)
