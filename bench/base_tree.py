"""base_tree: what the cached base tree (builder/backends/dib_base.py) saves a changed recipe.

The story of the issue: a maintainer adds one package to the example ``debian-12`` guest image.
Timed in one run, x86_64, ``kiln build ... --no-verify --no-publish`` as a subprocess, each in its
own ledger and build root, all with Kiln's warm DIB cache (apt archives, debootstrap tarball), so
that only the base tree differs:

1. **before**: ``debian-12-curl`` (``debian-12`` plus ``curl``) with the base cache switched off
   (site.yaml ``dib.base_cache.enabled: false``): what every build cost before.
2. **cold**: ``debian-12`` with the base cache on and an empty store: the base is recorded in this
   build (its cost included).
3. **warm**: ``debian-12-curl``, same store: the base recorded by 2 is reused; only ``curl`` (and
   the rest of the build) remains. The figure the issue sets a target for: warm <= 0.5x cold.
4. **force**: ``debian-12-curl --force`` again, unchanged: the no-change rebuild.

Each build's DIB phase times (from its manifest's ``build_facts``) are printed side by side.

    .venv/bin/python bench/base_tree.py            # report + one JSON line (~6 min here)
    .venv/bin/python bench/base_tree.py --check    # exit 1 when warm > 0.5x cold
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
MAX_WARM_RATIO = 0.5
ARCH = "x86_64"


def workspace_with_curl(work: Path) -> Path:
    """A copy of the workspace whose recipes also hold ``debian-12-curl``."""
    root = work / "workspace"
    for part in ("recipes", "templates", "elements", "files", "schemas"):
        if (REPO / part).exists():
            shutil.copytree(REPO / part, root / part)
    recipe = yaml.safe_load((REPO / "recipes" / "guest" / "debian-12.yaml").read_text())
    recipe["name"] = "debian-12-curl"
    recipe["build"]["packages"] = [*recipe["build"]["packages"], "curl"]
    (root / "recipes" / "guest" / "debian-12-curl.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return root


def site_file(work: Path, name: str, enabled: bool, store: Path) -> Path:
    path = work / f"site-{name}.yaml"
    path.write_text(yaml.safe_dump({"dib": {"base_cache": {"enabled": enabled, "store": str(store)}}}))
    return path


def build(workspace: Path, site: Path, work: Path, name: str, recipe: str, *extra: str) -> dict[str, Any]:
    run_dir = work / name
    run_dir.mkdir(exist_ok=True)
    argv = [
        sys.executable, "-m", "builder", "--root", str(workspace), "--site", str(site),
        "--ledger", str(run_dir / "ledger.sqlite"), "build", recipe, "--arch", ARCH,
        "--no-verify", "--no-publish", "--json", *extra,
    ]  # fmt: skip
    env = {**os.environ, "KILN_BUILD_ROOT": str(run_dir / "build")}
    subprocess.run(["sync"], check=False)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{name}: kiln build failed ({result.returncode}):\n{result.stderr[-3000:]}")
    [outcome] = [o for o in json.loads(result.stdout)["targets"] if o["target"].startswith(recipe + ":")]
    manifest = json.loads(Path(outcome["manifest"]).read_text())
    facts = manifest.get("build_facts") or {}
    return {
        "seconds": round(seconds, 1),
        "status": outcome["status"],
        "base": (facts.get("base") or {}).get("state"),
        "phases": facts.get("phases") or {},
        "run_dir": run_dir,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when warm > {MAX_WARM_RATIO}x cold")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-base-") as tmp:
        work = Path(tmp)
        workspace = workspace_with_curl(work)
        store = work / "store"
        off, on = site_file(work, "off", False, store), site_file(work, "on", True, store)
        runs = {
            "before": build(workspace, off, work, "before", "debian-12-curl"),
            "cold": build(workspace, on, work, "cold", "debian-12"),
        }
        runs["warm"] = build(workspace, on, work, "warm", "debian-12-curl")
        runs["force"] = build(workspace, on, work, "warm", "debian-12-curl", "--force")
        for run in runs.values():
            run.pop("run_dir")
    expected = {"before": "off", "cold": "recorded", "warm": "reused", "force": "reused"}
    wrong = {k: v["base"] for k, v in runs.items() if v["base"] != expected[k]}
    ratio = runs["warm"]["seconds"] / runs["cold"]["seconds"]
    report = {
        "bench": "base_tree",
        "arch": ARCH,
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "warm_over_cold": round(ratio, 3),
        # The DIB run alone (the sum of its phases): no interpreter start-up, and no wait for the
        # per-arch DIB cache lock when another build of the arch runs on this host.
        "dib_seconds": {k: round(sum(v["phases"].values()), 1) for k, v in runs.items()},
        "warm_over_before": round(runs["warm"]["seconds"] / runs["before"]["seconds"], 3),
        "force_over_cold": round(runs["force"]["seconds"] / runs["cold"]["seconds"], 3),
        "phases": {k: v["phases"] for k, v in runs.items()},
        "base": {k: v["base"] for k, v in runs.items()},
        "target_met": ratio <= MAX_WARM_RATIO and not wrong,
    }
    if not args.json:
        phases = list(dict.fromkeys(p for run in runs.values() for p in run["phases"]))
        print(f"{'phase':18}" + "".join(f"{k:>10}" for k in runs))
        for phase in phases:
            print(f"{phase:18}" + "".join(f"{runs[k]['phases'].get(phase, 0):>10.1f}" for k in runs))
        print(f"{'DIB (phase sum)':18}" + "".join(f"{report['dib_seconds'][k]:>10.1f}" for k in runs))
        print(f"{'whole kiln build':18}" + "".join(f"{runs[k]['seconds']:>10.1f}" for k in runs))
        print(f"{'base tree':18}" + "".join(f"{runs[k]['base']!s:>10}" for k in runs))
        print(
            f"warm/cold {ratio:.2f} (target <= {MAX_WARM_RATIO}), warm/before "
            f"{report['warm_over_before']:.2f}, force/cold {report['force_over_cold']:.2f}; DIB alone: "
            f"warm/cold {report['dib_seconds']['warm'] / report['dib_seconds']['cold']:.2f}"
        )
        if wrong:
            print(f"unexpected base states: {wrong}")
    print(json.dumps(report, sort_keys=True))
    return 1 if args.check and not report["target_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
