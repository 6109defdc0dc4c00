"""pipeline_scale: `kiln pipeline` on a synthetic 1,000-recipe x 3-arch tree, against loading it.

The tree is bench/plan_scale.py's generator (same recipe shapes) over three arches, every recipe
targeting x86_64, ppc64le and aarch64: 1,000 recipes -> 3,000 targets. Guest images cannot be in it:
no firmware boots all three (POWER guests refuse UEFI, aarch64 guests BIOS: the kinds' capability
rules), so the mix is the kinds that build for every arch -- containers (some CUDA, gpu-tagged),
RPM rebuilds and IPA ramdisks (:data:`MIX`). ``needs:`` chains (Packer on DIB) are covered by
tests/unit/test_gitlab_pipeline.py on the example recipes. Then, in one process, it times:

* baseline: loading the same recipes into targets (``load_targets``: parse, merge, validate,
  expand, digest) -- what any Kiln command pays first;
* kiln pipeline: the same load, plus an empty ledger's ``published_digests()``, ``select_stale``,
  ``generate`` and writing every file, as ``kiln pipeline -o`` does.

Each is the best of ``--repeats`` runs (Kiln's caches cleared before each). Every file written must
stay under GitLab's 5 MB limit for a generated config; ``--validate`` also checks each file against
GitLab's CI JSON schema (check-jsonschema, offline; not timed).

    .venv/bin/python bench/pipeline_scale.py             # report + one JSON line
    .venv/bin/python bench/pipeline_scale.py --check     # exit 1 unless under 3 s and every file < 5 MB
    .venv/bin/python bench/pipeline_scale.py --ask       # + asking the destinations (under 5 s; requests)

``--ask`` times ``kiln pipeline --ask-destinations`` too, with every x86_64 target (1,000) published
at its destination and an empty ledger, and counts the lookups (bench/destinations_standin.py: the
repo's and Bifrost's records over real HTTP; Glance and the registry as stand-ins at the client).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import plan_scale  # noqa: E402
from destinations_standin import BenchPublishers, RecordServer, publish_x86_64  # noqa: E402

from builder import render as render_mod  # noqa: E402
from builder.cli import tune_gc  # noqa: E402
from builder.ledger import Ledger  # noqa: E402
from builder.pipeline import destinations, gitlab  # noqa: E402
from builder.pipeline.graph import load_targets  # noqa: E402
from builder.siteconfig import GitLabSite  # noqa: E402
from builder.workspace import Workspace  # noqa: E402

MAX_SECONDS = 3.0
MAX_ASKING_SECONDS = 5.0  # issue 25: 1,000 recipes x 3 arches, destinations asked
LIMIT = 5_000_000
THREE = "[x86_64, ppc64le, aarch64]"
MIX = (("container", 650), ("rpm", 100), ("ipa", 250))  # every one of them builds for all three arches


def three_arch_tree(root: Path, recipes: int) -> list[Path]:
    """plan_scale's generator with :data:`MIX`, every recipe rewritten for three arches."""
    saved, plan_scale.MIX = plan_scale.MIX, MIX
    try:
        paths = plan_scale.make_workspace(root, recipes)
    finally:
        plan_scale.MIX = saved
    for path in paths:
        path.write_text(path.read_text().replace(f"arches: {plan_scale.ARCHES}", f"arches: {THREE}"))
    return paths


def load(workspace: Workspace) -> list:
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    if problems:
        raise SystemExit("generated recipes are invalid:\n" + "\n".join(str(p) for p in problems[:20]))
    return targets


def pipeline(
    workspace: Workspace, ledger_path: Path, out: Path, publishers: Any = None
) -> tuple[int, list[Path]]:
    """What ``kiln pipeline -o`` does (``--ask-destinations`` with ``publishers``)."""
    targets = load(workspace)
    with Ledger(ledger_path) as ledger:
        published = ledger.published_digests()
    if publishers is not None:
        answers = destinations.ask(targets, published, publishers, warn=_refuse)
        published = answers.published(published, time.time())
    stale = gitlab.select_stale(targets, published)
    files = gitlab.generate(stale, GitLabSite())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        written.append(out / (f"child-{f.name}.yml" if len(files) > 1 else "child.yml"))
        written[-1].write_text(f.text)
    if len(files) > 1:
        (out / "child.yml").write_text(gitlab.render_yaml(gitlab.dispatcher(files, "child", "kiln-generate")))
        written.append(out / "child.yml")
    return len(stale), written


def _refuse(warning: str) -> None:
    raise SystemExit(f"a destination did not answer: {warning}")


def asking(workspace: Workspace, root: Path, repeats: int) -> dict[str, Any]:
    """``kiln pipeline --ask-destinations`` with every x86_64 target published (destinations_standin)."""
    targets = load(workspace)
    server = RecordServer(root / "served")
    try:
        publishers = BenchPublishers(root / "served", server.url)
        placed = publish_x86_64(targets, publishers)
        counts: dict[str, int] = {}

        def run(i: int) -> tuple[int, list[Path]]:
            render_mod.clear_caches()
            server.requests = publishers._glance.calls = publishers._registry.calls = 0
            result = pipeline(workspace, root / f"ask-ledger-{i}.sqlite", root / f"ask-out-{i}", publishers)
            counts.update(publishers.counts(server))
            return result

        seconds, runs, (jobs, _) = plan_scale.best_of(repeats, run)
    finally:
        server.close()
    return {"published": placed, "seconds": seconds, "runs": runs, "jobs": jobs, **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--validate", action="store_true", help="check-jsonschema every file (not timed)")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless under {MAX_SECONDS:g} s (asking: {MAX_ASKING_SECONDS:g} s), every file < 5 MB",
    )
    parser.add_argument(
        "--ask",
        action="store_true",
        help="also time it asking the destinations, every x86_64 target published there "
        "(bench/destinations_standin.py), and count the requests",
    )
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.json else print
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="kiln-pipeline-scale-") as tmp:
        root = Path(tmp).resolve()
        paths = three_arch_tree(root, args.recipes)
        workspace = Workspace(root)

        def fresh(run):
            def go(i: int):
                render_mod.clear_caches()
                return run(i)

            return go

        load_s, _, targets = plan_scale.best_of(args.repeats, fresh(lambda i: load(workspace)))
        say(f"baseline: load {len(paths)} recipes -> {len(targets)} targets: best {load_s:.3f} s")
        kiln_s, kiln_all, (jobs, written) = plan_scale.best_of(
            args.repeats,
            fresh(lambda i: pipeline(workspace, root / f"ledger-{i}.sqlite", root / f"out-{i}")),
        )
        sizes = {p.name: p.stat().st_size for p in written}
        say(f"kiln pipeline: {jobs} jobs, {len(written)} file(s): best {kiln_s:.3f} s  (runs {kiln_all})")
        for name, size in sizes.items():
            say(f"  {name}: {size / 1e6:.2f} MB")
        asked = None
        if args.ask:
            asked = asking(workspace, root, args.repeats)
            say(
                f"kiln pipeline --ask-destinations: {asked['published']} targets published, "
                f"{asked['jobs']} jobs: "
                f"best {asked['seconds']:.3f} s (runs {asked['runs']}); asked with "
                f"{asked['http_requests']} HTTP requests (repo, Bifrost), {asked['glance_calls']} Glance "
                f"and {asked['registry_calls']} registry lookups"
            )
        valid = None
        if args.validate:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "check_jsonschema",
                    "--builtin-schema",
                    "vendor.gitlab-ci",
                    *map(str, written),
                ],
                capture_output=True,
                text=True,
            )
            valid = result.returncode == 0
            say(f"GitLab CI schema: {'valid' if valid else 'INVALID'} {result.stdout.strip()[:400]}")
    ratio = kiln_s / load_s
    ok = kiln_s < MAX_SECONDS and all(s < LIMIT for s in sizes.values()) and valid is not False
    if asked is not None:
        ok = (
            ok
            and asked["seconds"] < MAX_ASKING_SECONDS
            and asked["jobs"] == len(targets) - asked["published"]
        )
    result_json = {
        "benchmark": "pipeline_scale",
        "recipes": len(paths),
        "targets": len(targets),
        "jobs": jobs,
        "files": sizes,
        "load_s": round(load_s, 4),
        "kiln_pipeline_s": round(kiln_s, 4),
        "ratio": round(ratio, 2),
        "schema_valid": valid,
        "asking": None if asked is None else {k: v for k, v in asked.items() if k != "runs"},
        "targets_met": ok,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    say(
        f"kiln pipeline / load = {ratio:.2f}x; under {MAX_SECONDS:g} s and 5 MB -> "
        + ("met" if ok else "MISSED")
    )
    print(json.dumps(result_json, sort_keys=True))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
