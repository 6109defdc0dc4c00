"""ipa: a cold vs a warm build of the example IPA ramdisk (x86_64, ``--no-verify --no-publish``).

* **cold**: ``kiln build ipa-bookworm --arch x86_64`` with an empty Kiln cache (``HOME`` pointed at
  an empty directory: no DIB image cache or debootstrap tarball, no local git repos of the IPA
  sources), in a fresh build root and ledger;
* **warm**: the same recipe built again from scratch (a new build root and
  ledger) on the cache the cold build filled: the git repos and DIB's cache are reused.

Both download Debian packages and PyPI wheels inside the chroot (the mirror's speed is part of it).

    .venv/bin/python bench/ipa.py            # report + one JSON line (~12 min on 2 cores)
    .venv/bin/python bench/ipa.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KILN = [sys.executable, "-m", "builder", "--root", str(REPO)]


def build(work: Path, home: Path) -> float:
    work.mkdir(parents=True)
    env = {**os.environ, "HOME": str(home), "KILN_BUILD_ROOT": str(work / "build")}
    subprocess.run(["sync"], check=False)
    started = time.monotonic()
    result = subprocess.run(
        [
            *KILN,
            *("--ledger", str(work / "l.sqlite"), "build", "ipa-bookworm", "--arch", "x86_64"),
            *("--no-verify", "--no-publish", "--json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=7200,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(
            f"kiln build failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    [outcome] = json.loads(result.stdout)["targets"]
    if outcome["status"] != "built":
        raise SystemExit(f"expected a build, got {outcome['status']}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    say = (lambda _: None) if args.json else (lambda text: print(text, flush=True))
    with tempfile.TemporaryDirectory(prefix="kiln-bench-ipa-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        say("cold: empty Kiln cache (DIB cache, debootstrap tarball, IPA source repos) ...")
        cold = build(Path(tmp) / "cold", home)
        say(f"  {cold:.1f} s")
        say("warm: the same recipe, new build root and ledger, the cache the cold build filled ...")
        warm = build(Path(tmp) / "warm", home)
        say(f"  {warm:.1f} s")
    result = {
        "bench": "ipa",
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "warm_over_cold": round(warm / cold, 3),
    }
    say(f"warm/cold: {result['warm_over_cold']:.3f}x")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
