"""`make test` runs on two workers (pytest-xdist, ``--dist loadgroup``): tests that share a resource
or an expensive fixture stay on one worker (tests/conftest.py WORKER_GROUPS). A group that is
silently split runs its module fixtures (a DIB build, an IPA build and boot) once per worker."""

from __future__ import annotations

import subprocess
import sys
import time

from builder.workspace import PACKAGE_ROOT
from tests.conftest import WORKER_GROUPS

GROUPED_TEST = """
import os
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("n", range(4))
def test_{name}(n):
    with open({out!r}, "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_every_grouped_module_exists():
    missing = [path for path in WORKER_GROUPS if not (PACKAGE_ROOT / path).is_file()]
    assert missing == [], f"WORKER_GROUPS names modules that are not there: {missing}"


def test_a_group_spread_over_two_modules_runs_on_one_worker(tmp_path):
    out = tmp_path / "workers.txt"
    for name in ("first", "second"):
        (tmp_path / f"test_{name}.py").write_text(GROUPED_TEST.format(name=name, out=str(out)))
    (tmp_path / "test_alone.py").write_text("def test_alone():\n    pass\n")
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
         f"--basetemp={tmp_path / 'inner'}", "-q", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert inner.returncode == 0, inner.stdout + inner.stderr
    workers = out.read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, workers


def test_every_worker_collects_the_same_tests_whenever_it_collects():
    """Each xdist worker collects on its own, at its own moment; a parameter that differs between two
    collections (gzip's mtime, a random or time-based value) stops the whole run before any test.
    Two collections of the suite a few seconds apart must name the same tests."""

    def collect() -> list[str]:
        listed = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only",
             "-q", "tests"],
            capture_output=True, text=True, timeout=300, cwd=PACKAGE_ROOT,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
        return [line for line in listed.stdout.splitlines() if "::" in line]

    first = collect()
    time.sleep(1.1)  # a second later: gzip headers and clocks differ
    second = collect()
    assert len(first) > 1000
    assert sorted(set(first) ^ set(second)) == []
