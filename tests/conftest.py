"""Shared fixtures: a throwaway workspace, a recipe writer, and (session-wide, started once for
integration and e2e tests alike) the real local site on free loopback ports and the docker engine.

At the end of the run, after every fixture's teardown, no process the tests started may be left
(``pytest_sessionfinish`` below): a leftover fails the run, is named, and is stopped."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from builder.arch import Arch
from builder.host.compat import host_apt_mirror
from builder.host.net import free_port
from builder.host.run import Runner, stop_processes
from builder.rpm.buildroot import RootSpec, ensure_root
from builder.site.local import LocalSite
from builder.siteconfig import LocalPorts, LocalSiteSettings, SiteConfig
from builder.workspace import PACKAGE_ROOT, Workspace
from tests.support import hermetic, processes

REPO = PACKAGE_ROOT


# --- nothing the tests start outlives them -------------------------------------------------------------

_RUN: dict[str, object] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # Every process started from here on inherits the mark (daemons that leave their process group too).
    token = secrets.token_hex(8)
    os.environ[processes.RUN_MARK] = token
    _RUN.update(token=token, before=processes.pids())
    _hermetic_session(session.config)


# --- two workers (pytest-xdist, `make test`): what must stay together --------------------------------

# `make test` runs on two workers (``-n 2 --dist loadgroup``). The long builds are mostly
# single-threaded (dpkg, debootstrap, rpmbuild), so a second worker runs the rest beside them. Tests
# that share something outside their own directories stay on one worker, in file order:
# - "dib": the DIB guest builds (one session-wide build feeds several modules), and the SIGTERM test
#   that checks no loop device was left;
# - "gitlab": gitlab-ci-local (its file variables land in one /tmp glob the tests clean up);
# - "docker": the docker engine (started for the run when it is not running, stopped after);
# - "ipa", "rpm": one long module each, kept whole so that its module fixtures are built once.
# Everything else is spread over both workers.
WORKER_GROUPS = {
    "tests/e2e/test_base_tree.py": "dib",
    "tests/e2e/test_guest_dib.py": "dib",
    "tests/e2e/test_sbom_dib.py": "dib",
    "tests/e2e/test_guest_ppc64le.py": "dib",
    "tests/e2e/test_gitlab_pipeline_site.py": "gitlab",
    "tests/integration/test_keystone_site.py": "gitlab",  # the session's keystone_site, started once
    "tests/integration/test_gitlab_ci_local.py": "gitlab",
    "tests/integration/test_gitlab_split.py": "gitlab",
    "tests/integration/test_gitlab_candidates.py": "gitlab",
    "tests/e2e/test_container_cuda.py": "docker",
    "tests/integration/test_container_verify_real.py": "docker",
    "tests/integration/test_registry_publish.py": "docker",
    "tests/e2e/test_ipa.py": "ipa",
    "tests/e2e/test_rpm_rebuild.py": "rpm",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):  # `-p no:xdist`: one process, nothing to group
        return
    for item in items:
        group = WORKER_GROUPS.get(item.nodeid.split("::", 1)[0])
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


# --- hermetic: the session's own ledger, build root and site, never the workspace's .kiln/ -------------

GUARD = hermetic.Guard(REPO / ".kiln")


CI_ENV = ("CI", "GITLAB_CI")  # set by GitLab (and most CI systems) in every job


def _hermetic_session(config: pytest.Config) -> None:
    """Kiln's defaults point at the workspace (``.kiln/ledger.sqlite``, ``.kiln/build``, the local
    site's ``.kiln/site`` on its default ports: what ``make demo`` leaves running). Every Kiln the
    tests run, in-process or as a subprocess, gets the session's instead, through the environment
    variables Kiln reads; download caches (``~/.cache/kiln``: debootstrap roots, DIB's caches, IPA
    sources, all keyed by content) are shared."""
    session_dir = config._tmp_path_factory.mktemp("session")  # type: ignore[attr-defined]
    # The session's real site (the ``local_site`` fixture starts it when a test asks), and the site
    # Kiln gets when a test names none: a state directory and ports where nothing ever runs, as on a
    # machine without a site (never the demo's default ports).
    _RUN["site"] = _site_settings(session_dir / "site")
    unstarted = _site_settings(session_dir / "no-site")
    site_file = session_dir / "no-site.yaml"
    site_file.write_text(yaml.safe_dump(unstarted.model_dump(mode="json", exclude_none=True)))
    _RUN["no_site"] = site_file
    # A CI runner's environment changes Kiln's defaults (in CI, `kiln pipeline` asks the destinations):
    # the suite gets a developer's defaults everywhere, and a test of CI behaviour sets CI itself.
    for name in CI_ENV:
        os.environ.pop(name, None)
    os.environ.update(
        KILN_LEDGER=str(session_dir / "ledger.sqlite"),
        KILN_BUILD_ROOT=str(session_dir / "build"),
        KILN_SITE=str(site_file),
    )
    _RUN["kiln_dir"] = hermetic.snapshot(REPO / ".kiln")
    sys.addaudithook(GUARD.hook)


# The session's site runs Glance without Keystone (kiln site up --no-auth): the suite's Glance tests
# read Glance as its publisher does, and Keystone's part (tokens, application credentials, refusals)
# is proven by tests/integration/test_keystone_site.py on a site of its own, as `make demo` runs it.
SESSION_COMPONENTS = ["glance", "registry", "repo", "s3"]


def _site_settings(state: Path) -> SiteConfig:
    ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
    return SiteConfig(
        local=LocalSiteSettings(state_dir=str(state), ports=ports, components=SESSION_COMPONENTS)
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    GUARD.current = item.nodeid  # a touch of .kiln/ names the test that made it
    yield
    GUARD.current = ""


def workspace_kiln_touches() -> list[str]:
    """What this run did to the workspace's .kiln/: opened from this process, or changed by any."""
    before = _RUN.get("kiln_dir")
    with GUARD.paused():
        after = hermetic.snapshot(REPO / ".kiln")
    written = hermetic.changed(before, after) if isinstance(before, dict) else []
    return sorted(set(GUARD.touched)) + written


def _distributes_to_workers(config: pytest.Config) -> bool:
    """The pytest-xdist controller of a ``-n N`` run (not a worker, not a plain run)."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


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
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    touched = workspace_kiln_touches()
    if touched:
        report = "tests touched the workspace's .kiln/ (make demo's state):\n" + "\n".join(
            f"  {line}" for line in touched[:50]
        )
        if reporter is not None:
            reporter.write_sep("=", "NOT HERMETIC", red=True)
            reporter.write_line(report)
        else:
            print(report)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _distributes_to_workers(session.config):
        return  # each worker checks what it started; its processes carry the worker's own mark
    left = leftover_processes(session)
    if not left:
        return
    lines = [f"  {pid}: {' '.join(argv)[:300]}" for pid, argv in sorted(left.items())]
    report = "processes started by this test run outlived it:\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_sep("=", "LEFTOVER PROCESSES", red=True)
        reporter.write_line(report)
    else:
        print(report)
    stop_processes(left, grace_s=5)  # reported; now leave nothing behind for the next run either
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A fresh workspace: the repository's templates/ and elements/, an empty recipes/. Kiln's
    defaults are this workspace's own (``.kiln/ledger.sqlite``, ``.kiln/build``), and its site.yaml
    names the session's site where nothing runs (a test may write its own)."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "elements", root / "elements")
    (root / "recipes").mkdir()
    shutil.copy(os.environ["KILN_SITE"], root / "site.yaml")
    for name in hermetic.SESSION_ENV:
        monkeypatch.delenv(name, raising=False)
    return Workspace(root)


@pytest.fixture
def write(workspace: Workspace) -> Callable[[str, str], Path]:
    """write("recipes/x.yaml", text) -> the path; text is dedented. A ``site.yaml`` that says nothing
    of the local site gets the session's (its ports: where nothing runs), appended as one line, so
    that its defaults are never the demo's ports and the lines a test wrote keep their numbers."""

    def _write(relative: str, text: str) -> Path:
        path = workspace.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text).lstrip("\n")
        if relative == "site.yaml":
            text = _with_session_ports(text)
        path.write_text(text)
        return path

    return _write


def _with_session_ports(text: str) -> str:
    try:
        written = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # a test of a broken site.yaml: as written
    if not isinstance(written, dict) or "local" in written:
        return text
    session = yaml.safe_load(Path(_RUN["no_site"]).read_text())["local"]
    return text.rstrip("\n") + "\n" + "local: " + json.dumps(session) + "\n"


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
def site_settings() -> SiteConfig:
    """The session's site (what $KILN_SITE names): its own state directory and free loopback ports."""
    settings = _RUN["site"]
    assert isinstance(settings, SiteConfig)
    return settings


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
def keystone_site(
    local_site: LocalSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """A site with Keystone in front of Glance (Keystone and Glance only), as ``make demo`` runs it:
    the Keystone tests and the GitLab pipeline's jobs authenticate there (one worker: xdist group
    "gitlab"). ``local_site`` first: its tools are checked there."""
    work = tmp_path_factory.mktemp("keystone-site")
    ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
    settings = SiteConfig(
        local=LocalSiteSettings(state_dir=str(work / "state"), ports=ports, components=["keystone", "glance"])
    )
    site_file = work / "site.yaml"
    site_file.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    site = LocalSite(work / "state", settings.local)
    site.up()
    try:
        yield {"site": site, "site_file": site_file, "work": work}
    finally:
        site.down()


@pytest.fixture(scope="session")
def rpm_build_root(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Arch], Path]:
    """``rpm_build_root(arch)``: Kiln's cached rpm build root for ``arch`` (Debian minbase with rpm
    and a toolchain), bootstrapped now when the cache has none (once, under the cache's lock: the
    rpm-rebuild tests on another worker wait for the same one). A test that needs a root asks for
    it here instead of skipping on a fresh cache."""

    def ensure(arch: Arch) -> Path:
        log = tmp_path_factory.mktemp("rpm-root") / "bootstrap.log"
        mirror = host_apt_mirror() or "http://deb.debian.org/debian"
        root, _ = ensure_root(RootSpec(arch), Path.home() / ".cache" / "kiln", mirror, Runner(), log)
        return root

    return ensure


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
