"""Running the real `kiln` command for end-to-end tests: the repository's workspace, a site file,
its own ledger and build root (``KILN_BUILD_ROOT``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from builder.workspace import PACKAGE_ROOT

KILN = [sys.executable, "-m", "builder"]


def run_kiln(
    site_file: Path, ledger: Path, build_root: Path, *args: str, **kwargs: Any
) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_BUILD_ROOT": str(build_root)}
    return subprocess.run(
        [*KILN, "--root", str(PACKAGE_ROOT), "--site", str(site_file), "--ledger", str(ledger), *args],
        capture_output=True,
        text=True,
        env=env,
        **kwargs,
    )
