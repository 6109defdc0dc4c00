"""Two real DIB builds of the example Debian 12 image, the second with one package more: each build
records an SPDX SBOM from DIB's own dpkg manifest, and `kiln sbom diff` by build id reports the added
package. The first is the session's debian-12 build (tests/e2e/conftest.py); the second is a recipe
of its own (debian-12-tree, the same recipe with one package more) built into the same ledger and
build root with `--no-verify`, which its provenance records; `kiln verify`, `kiln history` and
`kiln report` then read the real builds.

Slow: one warm DIB build, ~1-2 min on a 2-core machine.
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


def _kiln(root: Path, debian12: dict, *args: str) -> subprocess.CompletedProcess:
    """kiln on ``root`` with the session build's site, ledger and build root."""
    env = {**os.environ, "KILN_BUILD_ROOT": str(debian12["build_root"])}
    return subprocess.run(
        [sys.executable, "-m", "builder", "--root", str(root), "--site", str(debian12["site_file"]),
         "--ledger", str(debian12["ledger"]), *args],
        capture_output=True, text=True, env=env,
    )  # fmt: skip


def test_sbom_diff_of_two_real_dib_builds_reports_the_one_added_package(debian12, tmp_path):
    first = debian12["warm"]["manifest"]
    assert first["sbom"], "the DIB build left no package list (dib-manifest-dpkg-*)"
    sbom = json.loads((Path(debian12["warm"]["outcome"]["manifest"]).parent / first["sbom"]).read_text())
    names = {p["name"] for p in sbom["packages"]}
    assert {"cloud-init", "qemu-guest-agent", "openssh-server"} <= names and ADDED not in names

    root = tmp_path / "ws"
    for part in ("recipes", "templates", "elements", "files"):
        shutil.copytree(PACKAGE_ROOT / part, root / part)
    recipe = (root / "recipes" / "guest" / "debian-12.yaml").read_text()
    assert "name: debian-12\n" in recipe and "isc-dhcp-client]" in recipe
    more = recipe.replace("name: debian-12\n", "name: debian-12-tree\n")
    (root / "recipes" / "guest" / "debian-12-tree.yaml").write_text(
        more.replace("isc-dhcp-client]", f"isc-dhcp-client, {ADDED}]")
    )
    started = time.monotonic()
    result = _kiln(
        root, debian12, "build", "debian-12-tree", "--arch", "x86_64", "--no-verify", "--no-publish", "--json"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    [outcome] = json.loads(result.stdout)["targets"]
    print(f"\n{outcome['target']}: {outcome['status']} in {time.monotonic() - started:.0f}s")
    second = json.loads(Path(outcome["manifest"]).read_text())

    diff_args = ("sbom", "diff", str(first["build_id"]), str(second["build_id"]))
    result = _kiln(root, debian12, *diff_args, "--json")
    assert result.returncode == 0, result.stderr
    diff = json.loads(result.stdout)
    assert ADDED in [p["name"] for p in diff["added"]] and diff["removed"] == []
    print(_kiln(root, debian12, *diff_args).stdout)

    image = Path(outcome["manifest"]).parent / second["artifacts"][0]["path"]
    verified = _kiln(root, debian12, "verify", str(image), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["verification"]["by"] == "kiln build --no-verify"
    history = json.loads(_kiln(root, debian12, "history", "debian-12-tree", "--json").stdout)["builds"]
    assert [b["status"] for b in history] == ["succeeded"] and all(b["size"] for b in history)
    report = _kiln(root, debian12, "report", "--html", str(tmp_path / "report"), "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["states"].get("built", 0) >= 1  # debian-12-tree: built, unpublished
    assert 'data-state="built"' in (tmp_path / "report" / "index.html").read_text()
