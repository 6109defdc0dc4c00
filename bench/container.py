"""container: cold vs warm build + push of the example CUDA runtime image, for x86_64 and ppc64le.

In one run, against a local registry this bench starts (authentication on, as `kiln site up` sets it):

* **cold**: ``kiln build cuda-runtime --publish`` (cuda-base and cuda-runtime, both arches) with an
  empty Kiln cache (``HOME`` pointed at an empty directory: no cached debootstrap rootfs) and none of
  the targets' images in the docker engine (they are removed first, so the engine's layer cache does
  not help either), in a fresh build root and ledger;
* **warm**: the same command again, unchanged: nothing is built and nothing is pushed;
* **emulated/native**: the cold per-target seconds of ppc64le (binfmt emulation) over x86_64 (native),
  base and runtime together, from the same cold run.

Removing the images touches the engine this bench runs against (only Kiln's own tags). The cold
run downloads the Debian packages again (the mirror's speed is part of it).

    .venv/bin/python bench/container.py            # report + one JSON line (~6 min on 2 cores)
    .venv/bin/python bench/container.py --json     # the JSON line only
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
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.host.net import free_port  # noqa: E402
from builder.site.local import LocalSite  # noqa: E402
from builder.siteconfig import LocalPorts, LocalSiteSettings, SiteConfig  # noqa: E402

RECIPE = "cuda-runtime"
KILN = [sys.executable, "-m", "builder", "--root", str(REPO)]


def kiln(site_file: Path, work: Path, home: Path, *args: str) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "HOME": str(home), "KILN_BUILD_ROOT": str(work / "build")}
    started = time.monotonic()
    result = subprocess.run(
        [*KILN, "--site", str(site_file), "--ledger", str(work / "ledger.sqlite"), *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=7200,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(
            f"kiln {' '.join(args)} failed ({result.returncode}):\n"
            + result.stdout[-3000:]
            + result.stderr[-3000:]
        )
    return seconds, json.loads(result.stdout)


def remove_kiln_images() -> int:
    """Remove every image tagged kiln-build/* or kiln-base/* (and the tags sharing them)."""
    listed = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}} {{.ID}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    ids = sorted({line.split()[1] for line in listed if line.startswith(("kiln-build/", "kiln-base/"))})
    if ids:
        subprocess.run(["docker", "image", "rm", "-f", *ids], capture_output=True, check=False)
    subprocess.run(["docker", "image", "prune", "-f"], capture_output=True, check=False)
    return len(ids)


def per_arch_seconds(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for outcome in outcomes:
        arch = outcome["target"].rsplit(":", 1)[-1]
        out[arch] = round(out.get(arch, 0.0) + float(outcome["seconds"]), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    say = (lambda _: None) if args.json else (lambda text: print(text, flush=True))

    with tempfile.TemporaryDirectory(prefix="kiln-bench-container-") as tmp:
        tmp_path = Path(tmp)
        ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
        settings = LocalSiteSettings(state_dir=str(tmp_path / "site"), ports=ports, components=["registry"])
        site = LocalSite(tmp_path / "site", settings)
        site.up()
        try:
            site_file = tmp_path / "site.yaml"
            site_file.write_text(
                yaml.safe_dump(SiteConfig(local=settings).model_dump(mode="json", exclude_none=True))
            )
            work, home = tmp_path / "work", tmp_path / "home"
            work.mkdir()
            home.mkdir()
            say(f"removed {remove_kiln_images()} Kiln images from the engine; empty cache in {home}")
            say(f"cold: kiln build {RECIPE} --publish (base + runtime, x86_64 + ppc64le) ...")
            cold, cold_report = kiln(site_file, work, home, "build", RECIPE, "--publish")
            by_arch = per_arch_seconds(cold_report["targets"])
            say(f"  {cold:.1f} s  (per arch: {by_arch})")
            say("warm: the same command, unchanged ...")
            warm, warm_report = kiln(site_file, work, home, "build", RECIPE, "--publish")
            statuses = sorted({o["status"] for o in warm_report["targets"]})
            pushed = sum(len(o["published"]) for o in warm_report["targets"])
            say(f"  {warm:.1f} s  (statuses: {', '.join(statuses)}; publications: {pushed})")
        finally:
            site.down()
    result = {
        "bench": "container",
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "warm_over_cold": round(warm / cold, 4),
        "cold_per_arch_s": by_arch,
        "emulated_over_native": round(by_arch.get("ppc64le", 0.0) / max(by_arch.get("x86_64", 0.0), 0.1), 2),
        "warm_statuses": statuses,
        "warm_publications": pushed,
    }
    say(
        f"warm/cold: {result['warm_over_cold']:.4f}x; ppc64le (emulated) / x86_64 (native), cold: "
        f"{result['emulated_over_native']:.2f}x"
    )
    print(json.dumps(result, sort_keys=True))
    return 0 if statuses == ["skipped"] and pushed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
