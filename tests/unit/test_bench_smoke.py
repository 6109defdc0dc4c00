"""The benchmark scripts still run against today's interfaces (their numbers are measured by hand and
written in docs/benchmarks.md; here only that they run and say what they counted)."""

from __future__ import annotations

import json
import subprocess
import sys

from builder.workspace import PACKAGE_ROOT


def test_pipeline_scale_asking_the_destinations_runs_on_a_small_tree():
    said = subprocess.run(
        [sys.executable, str(PACKAGE_ROOT / "bench" / "pipeline_scale.py"), "--ask", "--recipes", "10",
         "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert said.returncode == 0, said.stdout[-2000:] + said.stderr[-2000:]
    asking = json.loads(said.stdout.strip().splitlines()[-1])["asking"]
    # every x86_64 target (one per recipe) is published at its destination: only the others get jobs
    assert asking["published"] == 10 and asking["jobs"] == 20
    assert asking["http_requests"] > 0 and asking["glance_calls"] > 0 and asking["registry_calls"] > 0
