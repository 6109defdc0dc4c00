"""``kiln pipeline``: write a GitLab child pipeline, one ``kiln build TARGET --publish`` job per stale
target. It parses, calls builder/pipeline/gitlab.py (and destinations.py) and prints.

Commands import their heavy modules inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import ExitCode
from .common import Commands, emit, ledger_path, path_type, selected_targets, site_of, stderr_step


def cmd_pipeline(args: argparse.Namespace) -> int:
    from ..core.kind import slug_of
    from ..ledger import Ledger
    from ..pipeline import gitlab

    workspace, targets = selected_targets(args)
    _, site = site_of(args)
    with Ledger(ledger_path(args, workspace)) as ledger:
        published = ledger.published_digests()
    answers = None
    # Build jobs on other runners publish without writing this ledger: in CI (GitLab sets CI=true)
    # the destinations are asked unless --no-ask-destinations says otherwise.
    ask = args.ask_destinations if args.ask_destinations is not None else os.environ.get("CI") == "true"
    if ask:
        from ..pipeline import destinations
        from ..publishers.from_site import SitePublishers

        warn = stderr_step("kiln pipeline")
        answers = destinations.ask(targets, published, SitePublishers(site, workspace.root), warn)
        published = answers.published(published, time.time())
    changed = gitlab.changed_since(workspace.root, args.changed_since) if args.changed_since else None
    older = time.time() - args.older_than_days * 86400 if args.older_than_days is not None else None
    stale = gitlab.select_stale(
        targets, published, changed_files=changed, changed_ref=args.changed_since or "", older_than=older
    )
    if args.candidate is not None:
        site.candidates.suffixes(args.candidate)  # refused here, never written into a job's script
    files = gitlab.generate(
        stale, site.gitlab, publish=args.publish, max_bytes=args.max_bytes, candidate=args.candidate
    )
    out = Path(args.output)
    prefix = out.with_suffix("")
    written = []
    if len(files) == 1:
        written.append((out, files[0]))
    else:
        written += [(prefix.with_name(f"{prefix.name}-{f.name}.yml"), f) for f in files]
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, f in written:
        path.write_text(f.text)
    if len(files) > 1:
        downstream = gitlab.downstream_jobs(site.gitlab, args.publish, args.candidate)
        top = gitlab.dispatcher(files, prefix.name, args.generate_job, downstream)
        out.write_text(gitlab.render_yaml(top))
    report = {
        "output": str(out),
        "split": len(files) > 1,
        "files": [{"path": str(p), "bytes": len(f.text), "targets": f.targets} for p, f in written],
        "jobs": [{"target": s.target.id, "job": slug_of(s.target.id), "why": list(s.reasons)} for s in stale],
    }
    lines = [gitlab.explain(stale, files)] if args.explain else []
    if answers is not None:
        report["destinations"] = answers.as_json()
        if args.explain:
            lines += answers.explain({s.target.id for s in stale})
    if len(files) > 1:
        lines.append(
            f"over GitLab's {args.max_bytes}-byte limit for one generated config: split into {len(files)} "
            f"child pipelines ({', '.join(str(p) for p, _ in written)}), triggered by {out}"
        )
    lines.append(f"{len(stale) or 'no'} jobs -> {out}" + ("" if stale else " (one no-op job)"))
    emit(args, report, "\n".join(lines))
    return ExitCode.OK


def register(commands: Commands) -> None:
    """``kiln pipeline``."""
    p = commands.add(
        "pipeline",
        cmd_pipeline,
        "Write a GitLab child pipeline: one `kiln build TARGET --publish` job per stale target.",
        [
            "kiln pipeline -o child.yml",
            "kiln pipeline --changed-since origin/main --explain -o child.yml",
            "kiln pipeline --candidate 42 -o child.yml    # merge request 42: publish as candidates",
            "kiln pipeline --no-publish -o child.yml      # build and verify only",
            "kiln pipeline --older-than-days 30 -o child.yml --json",
            "kiln pipeline --ask-destinations --explain -o child.yml   # ask the destinations (CI: default)",
        ],
    )
    p.add_argument("--arch", metavar="ARCH", help="only this architecture (any spelling)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="child.yml",
        type=path_type("--output"),
        help="default: child.yml",
    )
    p.add_argument(
        "--changed-since",
        metavar="REF",
        help="also rebuild targets whose input files changed since this git ref (git diff --name-only)",
    )
    p.add_argument(
        "--older-than-days",
        metavar="N",
        type=float,
        help="also rebuild targets published more than N days ago (scheduled pipelines)",
    )
    p.add_argument(
        "--no-publish",
        dest="publish",
        action="store_false",
        help="jobs build and verify, and publish nothing",
    )
    p.add_argument(
        "--candidate",
        metavar="ID",
        help="jobs publish under candidate names: kiln build TARGET --publish --candidate ID "
        "(merge requests: $CI_MERGE_REQUEST_IID)",
    )
    p.add_argument("--explain", action="store_true", help="print every job: tags, needs, why it runs")
    p.add_argument(
        "--ask-destinations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also ask each target's destination (Glance, the registry, the RPM repo, the Bifrost "
        "directory) whether a target the ledger lists as unpublished is published there at its digest "
        "(production names, with --candidate too), as build jobs on other runners publish without "
        "writing this ledger; needs the build jobs' credentials. A destination that does not answer is "
        "named on stderr and its targets get jobs. Default: on where $CI is 'true' (GitLab), else off",
    )
    p.add_argument(
        "--generate-job",
        metavar="NAME",
        default="kiln-generate",
        help="the parent's job that runs this command (a split pipeline takes its files from it)",
    )
    p.add_argument("--max-bytes", metavar="N", type=int, default=5_000_000 - 4096, help=argparse.SUPPRESS)
