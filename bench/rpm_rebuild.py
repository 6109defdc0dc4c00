"""rpm_rebuild: one small C SRPM (tests/support/srpms.py: a Makefile, a %check, one patch) rebuilt by
Kiln's rpm-rebuild backend, in one run:

* **native vs emulated**: the same SRPM rebuilt for x86_64 (natively) and for ppc64le (under
  qemu-user through binfmt_misc), both in warm (cached) build roots. The ratio is qemu-user's
  overhead on rpmbuild, %check included: the floor for any emulated rebuild on this host.
* **warm vs cold root**: the x86_64 rebuild again with an empty cache directory, so the build root
  is bootstrapped (debootstrap --variant=minbase with rpm, gcc, make, libc6-dev, patch) first.
  ``--skip-cold`` leaves it out (~1.5 min for amd64 on 2 cores).

Nothing is published (the build runs without a site) and verification is on (rpm -qp checks and
an ``rpm -i`` into an empty root). Each warm figure is the best of ``--repeats`` builds; a build of
an unchanged digest is skipped by Kiln, so each repeat uses a fresh ledger and build root.

    .venv/bin/python bench/rpm_rebuild.py              # human report + one JSON line
    .venv/bin/python bench/rpm_rebuild.py --json --skip-cold
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.ledger import Ledger  # noqa: E402
from builder.pipeline.build import BuildOptions, Pipeline  # noqa: E402
from builder.pipeline.graph import load_targets, select  # noqa: E402
from builder.siteconfig import SiteConfig  # noqa: E402
from builder.workspace import Workspace  # noqa: E402
from tests.support.srpms import greet_patch, make_srpm  # noqa: E402

RECIPE = """\
name: kiln-bench-greet
kind: rpm-rebuild
arches: [x86_64, ppc64le]
build:
  source: {path: ../files/kiln-bench-greet-1.0-1.src.rpm}
  release: "9"
  verify_signature: false
  patches: [../files/greet.patch]
"""


def workspace(tmp: Path) -> Workspace:
    root = tmp / "ws"
    shutil.copytree(ROOT / "templates", root / "templates")
    (root / "recipes").mkdir(parents=True)
    (root / "files").mkdir()
    srpm = make_srpm(tmp / "made", "kiln-bench-greet")
    shutil.copy(srpm, root / "files" / srpm.name)
    (root / "files" / "greet.patch").write_text(greet_patch("kiln-bench-greet"))
    (root / "recipes" / "greet.yaml").write_text(RECIPE)
    return Workspace(root)


def build_once(ws: Workspace, arch: str, work: Path, cache_dir: Path | None) -> float:
    targets, problems = load_targets([ws.recipes_dir], ws)
    assert not problems, problems
    [target] = select(targets, arch=arch)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with Ledger(work / "ledger.sqlite") as ledger:
        pipeline = Pipeline(ws, SiteConfig(), ledger, build_root=work / "build", cache_dir=cache_dir)
        started = time.monotonic()
        [outcome] = pipeline.run([target], BuildOptions(publish=False))
        seconds = time.monotonic() - started
    if outcome.status != "built":
        raise SystemExit(f"{target.id}: {outcome.status}: {outcome.error}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-cold", action="store_true", help="leave out the cold-root build")
    parser.add_argument("--json", action="store_true", help="print the JSON line only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-rpm-") as tmp_name:
        tmp = Path(tmp_name)
        ws = workspace(tmp)
        cache = Path.home() / ".cache" / "kiln"
        build_once(ws, "x86_64", tmp / "warmup-x86", cache)  # bootstraps a missing warm root once
        build_once(ws, "ppc64le", tmp / "warmup-ppc", cache)
        native = min(build_once(ws, "x86_64", tmp / f"n{i}", cache) for i in range(args.repeats))
        emulated = min(build_once(ws, "ppc64le", tmp / f"e{i}", cache) for i in range(args.repeats))
        cold = None if args.skip_cold else build_once(ws, "x86_64", tmp / "cold", tmp / "empty-cache")
    result = {
        "bench": "rpm_rebuild",
        "native_x86_64_s": round(native, 2),
        "emulated_ppc64le_s": round(emulated, 2),
        "emulated_over_native": round(emulated / native, 2),
        "cold_root_x86_64_s": round(cold, 2) if cold is not None else None,
        "cold_over_warm": round(cold / native, 2) if cold is not None else None,
        "repeats": args.repeats,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if not args.json:
        print(f"native x86_64 rebuild (warm root):     {native:7.1f} s")
        print(f"emulated ppc64le rebuild (warm root):  {emulated:7.1f} s  ({emulated / native:.2f}x native)")
        if cold is not None:
            print(f"x86_64 rebuild with a cold root:       {cold:7.1f} s  ({cold / native:.1f}x warm)")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
