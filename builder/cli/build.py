"""``kiln build`` and ``kiln publish``: build targets (and publish them), publish what a build produced.
They parse, call builder/pipeline/ (build.py, publish.py) and print.

Commands import their heavy modules inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ExitCode
from .common import Commands, StepPrinter, emit, ledger_path, path_type, selected_targets, site_of


def cmd_build(args: argparse.Namespace) -> int:
    from ..ledger import Ledger
    from ..pipeline.build import BuildOptions, Pipeline, describe_plan

    workspace, targets = selected_targets(args, with_dependencies=True)  # a base image is built first
    _, site = site_of(args)
    options = BuildOptions(
        publish=site.publish_after_build if args.publish is None else args.publish,
        verify=not args.no_verify,
        dry_run=args.dry_run,
        candidate=args.candidate,
        gpu=args.gpu,
        force=getattr(args, "force", False),
    )
    if options.candidate is not None:
        site.candidates.suffixes(options.candidate)  # an unfit id is refused before anything runs
    quiet = args.quiet or args.json
    step = (lambda _: None) if quiet else StepPrinter("build")
    if options.dry_run:  # pure: no ledger (not even opened), nothing written, nothing probed
        outcomes = Pipeline(workspace, site, None, on_step=step).run(targets, options)
        text = "\n".join(
            line for o in outcomes for line in (describe_plan(o) if o.plan else [f"# {o.target}: {o.error}"])
        )
    else:
        with Ledger(ledger_path(args, workspace)) as ledger:
            outcomes = Pipeline(workspace, site, ledger, on_step=step).run(targets, options)
        text = "\n".join(
            f"{o.target:40} {o.status:8} {o.seconds:8.1f}s  "
            + (o.error or o.note or f"{o.manifest or ''}  verification {o.verification}")
            for o in outcomes
        )
    failed = [o for o in outcomes if o.status == "failed"]
    emit(args, {"targets": [o.as_json() for o in outcomes], "ok": not failed}, text)
    return ExitCode.FAILED if failed else ExitCode.OK


def cmd_publish(args: argparse.Namespace) -> int:
    from ..ledger import Ledger
    from ..manifest import read_manifest
    from ..pipeline.publish import check_publishable, publish_manifests
    from ..publishers.from_site import SitePublishers

    workspace, site = site_of(args)
    manifests = [read_manifest(Path(m)) for m in args.manifests]
    quiet = args.quiet or args.json
    step = (lambda _: None) if quiet else StepPrinter("publish")
    for manifest in manifests:
        step(f"{manifest.target}: verification {manifest.verification_summary}")
    check_publishable(manifests, allow_unverified=args.allow_unverified)
    publishers = SitePublishers(site, workspace.root, step)
    with Ledger(ledger_path(args, workspace)) as ledger:
        publications = publish_manifests(manifests, publishers, ledger, step)
    lines = [
        f"{p.target} {p.artifact} -> {p.publisher} {p.location}{' (already there)' if p.noop else ''}"
        for p in publications
    ]
    verification = {m.target: m.verification_summary for m in manifests}
    emit(
        args,
        {"published": [p.as_json() for p in publications], "verification": verification},
        "\n".join(lines) or "nothing to publish",
    )
    return ExitCode.OK


def register_build(commands: Commands) -> None:
    """``kiln build``."""
    p = commands.add(
        "build",
        cmd_build,
        "Render, build, boot-test and (with --publish) publish targets; unchanged targets are skipped.",
        [
            "kiln build debian-12 --arch x86_64",
            "kiln build debian-12 --publish --json",
            "kiln build debian-12 --dry-run",
        ],
    )
    p.add_argument("--arch", metavar="ARCH", help="only this architecture (any spelling)")
    p.add_argument(
        "--publish",
        dest="publish",
        action="store_true",
        default=None,
        help="publish after a successful build (default: site.yaml publish_after_build)",
    )
    p.add_argument("--no-publish", dest="publish", action="store_false", help="do not publish")
    p.add_argument(
        "--candidate",
        metavar="ID",
        help="publish under candidate names (site.yaml candidates:, e.g. '-mr42'), never production's",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="switch verification off (recorded as 'off' in the manifest and ledger; still publishable)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="build every selected target again even when its digest was built (a new build id; "
        "caches such as the DIB base tree are still used)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="container images with nvcc: also compile and run a CUDA vector add on this host's GPU "
        "(needs the NVIDIA container runtime; reported as skipped, by name, where there is none)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the exact commands, dependencies first; writes, records and probes nothing",
    )


def register_publish(commands: Commands) -> None:
    """``kiln publish``."""
    p = commands.add(
        "publish",
        cmd_publish,
        "Publish what a build produced (its manifest JSON) and record it in the ledger.",
        [
            "kiln publish build/debian-12_bookworm_x86_64/manifest.json",
            "kiln publish out/*/manifest.json --json",
        ],
        recipes=False,
    )
    p.add_argument(
        "manifests",
        nargs="+",
        metavar="MANIFEST",
        type=path_type("MANIFEST"),
        help="build manifest JSON files",
    )
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="publish even when a manifest's verification failed or never ran (the gate's override)",
    )
