"""Two real DIB builds of the example Debian 12 image, the second with one package more: each build
records an SPDX SBOM from DIB's own dpkg manifest, and `kiln sbom diff` by build id reports the added
package. Both builds skip the boot test (`--no-verify`), which the provenance records; `kiln verify`,
`kiln history` and `kiln report` then read the real build.

Slow: two warm DIB builds, ~4-5 min each on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.workspace import PACKAGE_ROOT

pytestmark = [pytest.mark.slow]

ADDED = "tree"  # depends on libc6 only, so it is the one package the second image adds


def _kiln(root: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_BUILD_ROOT": str(work / "build")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "--root",
            str(root),
            "--ledger",
            str(work / "ledger.sqlite"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def _build(root: Path, work: Path) -> dict:
    started = time.monotonic()
    result = _kiln(
        root, work, "build", "debian-12", "--arch", "x86_64", "--no-verify", "--no-publish", "--json"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    [outcome] = json.loads(result.stdout)["targets"]
    print(f"\n{outcome['target']}: {outcome['status']} in {time.monotonic() - started:.0f}s")
    return json.loads(Path(outcome["manifest"]).read_text())


def test_sbom_diff_of_two_real_dib_builds_reports_the_one_added_package(dib_ready, tmp_path):
    root = tmp_path / "ws"
    for part in ("recipes", "templates", "elements", "files"):
        shutil.copytree(PACKAGE_ROOT / part, root / part)
    recipe = root / "recipes" / "guest" / "debian-12.yaml"
    first = _build(root, tmp_path)
    assert first["sbom"], "the DIB build left no package list (dib-manifest-dpkg-*)"
    sbom = json.loads((tmp_path / "build" / "debian-12_bookworm_x86_64" / first["sbom"]).read_text())
    names = {p["name"] for p in sbom["packages"]}
    assert {"cloud-init", "qemu-guest-agent", "openssh-server"} <= names and ADDED not in names

    recipe.write_text(recipe.read_text().replace("isc-dhcp-client]", f"isc-dhcp-client, {ADDED}]"))
    second = _build(root, tmp_path)
    assert second["build_id"] != first["build_id"]
    result = _kiln(root, tmp_path, "sbom", "diff", str(first["build_id"]), str(second["build_id"]), "--json")
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout)
    assert ADDED in [p["name"] for p in diff["added"]] and diff["removed"] == []
    print(_kiln(root, tmp_path, "sbom", "diff", str(first["build_id"]), str(second["build_id"])).stdout)

    image = tmp_path / "build" / "debian-12_bookworm_x86_64" / second["artifacts"][0]["path"]
    verified = _kiln(root, tmp_path, "verify", str(image), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["verification"]["by"] == "kiln build --no-verify"
    history = json.loads(_kiln(root, tmp_path, "history", "debian-12", "--json").stdout)["builds"]
    assert [b["status"] for b in history] == ["succeeded", "succeeded"] and all(b["size"] for b in history)
    report = _kiln(root, tmp_path, "report", "--html", str(tmp_path / "report"))
    assert report.returncode == 0 and "1 built" in report.stdout, report.stdout + report.stderr
