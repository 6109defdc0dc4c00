"""The test session is hermetic: Kiln's defaults point at the session's ledger, build root and site,
never at the workspace's .kiln/ that `make demo` fills, and a test that opens .kiln/ anyway is caught
(the run fails, naming the path: tests/conftest.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from builder.pipeline.build import default_build_root
from builder.siteconfig import load_site
from builder.workspace import PACKAGE_ROOT, Workspace
from tests.conftest import GUARD
from tests.support import hermetic

KILN_DIR = PACKAGE_ROOT / ".kiln"


def test_kilns_defaults_point_at_the_sessions_ledger_build_root_and_site_not_the_workspace():
    workspace = Workspace(PACKAGE_ROOT)
    site = load_site(None, PACKAGE_ROOT)
    for path in (ledger_path_of(workspace), default_build_root(workspace), site.state_dir(PACKAGE_ROOT)):
        assert not Path(path).absolute().is_relative_to(KILN_DIR), path
    defaults = type(site.local.ports)()
    assert all(getattr(site.local.ports, n) != getattr(defaults, n) for n in type(defaults).model_fields)


def ledger_path_of(workspace: Workspace) -> Path:
    """Where `kiln` opens its ledger when neither --ledger nor anything else says."""
    from builder.cli.common import ledger_path

    return ledger_path(argparse.Namespace(ledger=None), workspace)


def test_a_subprocess_kiln_gets_the_same_session_paths():
    code = (
        "import os; print(os.environ['KILN_LEDGER']); print(os.environ['KILN_BUILD_ROOT']); "
        "print(os.environ['KILN_SITE'])"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(not Path(line).is_relative_to(KILN_DIR) for line in printed.split())


def test_opening_or_connecting_to_anything_under_the_workspaces_kiln_directory_is_caught():
    with GUARD.expecting() as caught:
        with contextlib.suppress(OSError):  # the audit event comes before the open: no file needed
            open(KILN_DIR / "ledger.sqlite", "rb").close()
        with contextlib.suppress(sqlite3.Error):
            sqlite3.connect(f"file:{KILN_DIR / 'ledger.sqlite'}?mode=ro", uri=True).close()
        with contextlib.suppress(OSError):
            os.listdir(KILN_DIR / "build")
    assert [line.split()[0] for line in caught] == ["open", "sqlite3.connect", "os.listdir"]
    assert GUARD.touched == [], f"tests touched the workspace's .kiln/: {GUARD.touched}"


def test_what_a_subprocess_writes_under_a_guarded_tree_is_found(tmp_path):
    tree = tmp_path / ".kiln"
    (tree / "build").mkdir(parents=True)
    (tree / "ledger.sqlite").write_bytes(b"old")
    before = hermetic.snapshot(tree)
    subprocess.run(["sh", "-c", f"echo new >> {tree}/ledger.sqlite; touch {tree}/build/x"], check=True)
    assert hermetic.changed(before, hermetic.snapshot(tree)) == [
        "added build/x", "modified build", "modified ledger.sqlite",
    ]  # fmt: skip


PEEKING_TEST = """
def test_peeks_at_the_workspace_ledger():
    try:
        open({path!r}, "rb").close()
    except OSError:
        pass  # the audit event comes first: the file need not exist
"""


def test_a_run_whose_test_opens_the_workspaces_ledger_fails_and_names_the_test(tmp_path):
    """The session-end check in tests/conftest.py, on a run of one test that peeks at .kiln/."""
    test_file = tmp_path / "test_peeking.py"
    test_file.write_text(PEEKING_TEST.format(path=str(KILN_DIR / "ledger.sqlite")))
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'inner'}", "-q", str(test_file)],
        capture_output=True, text=True, timeout=120, cwd=PACKAGE_ROOT,
    )  # fmt: skip
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "NOT HERMETIC" in inner.stdout and "1 passed" in inner.stdout
    assert f"test_peeks_at_the_workspace_ledger: open {KILN_DIR / 'ledger.sqlite'}" in inner.stdout


def test_connecting_to_the_demo_sites_ports_is_caught_and_other_ports_are_not():
    with GUARD.expecting() as caught:
        # the event socket.connect raises before connecting (no packet sent: the demo may be up)
        for port in (19292, 18080):  # make demo's Glance and repo
            sys.audit("socket.connect", None, ("127.0.0.1", port))
    assert caught == [
        "socket.connect 127.0.0.1:19292 (the demo site's glance port)",
        "socket.connect 127.0.0.1:18080 (the demo site's repo port)",
    ]
    assert hermetic.Guard.demo_port_of("socket.connect", (None, ("127.0.0.1", 40123))) is None
    assert hermetic.Guard.demo_port_of("socket.connect", (None, ("10.0.0.1", 19292))) is None
    assert GUARD.touched == []


def test_a_site_yaml_a_test_writes_without_ports_gets_the_sessions(workspace, write):
    path = write("site.yaml", "candidates: {image_suffix: '.c-{id}'}\n")
    site = load_site(path, workspace.root)
    assert site.candidates.image_suffix == ".c-{id}" and path.read_text().startswith("candidates:")
    assert all(port not in hermetic.DEMO_PORTS for port in site.local.ports.model_dump().values())
    kept = write("site.yaml", "local: {ports: {glance: 19999}}\n")  # a test that names its ports
    assert load_site(kept, workspace.root).local.ports.glance == 19999
