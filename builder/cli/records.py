"""The commands that read what Kiln recorded: ``kiln verify``, ``kiln sbom diff``, ``kiln history``,
``kiln show`` and ``kiln report``. They parse, call builder/provenance.py, builder/sbom.py,
builder/report/ and the ledger's queries, and print.

Commands import their heavy modules inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

from ..errors import ExitCode, InvalidInput, Problem
from ..workspace import Workspace
from .common import Commands, emit, ledger_path, path_type, site_of, workspace_of

# A build id as `kiln history` shows it: ASCII digits that fit sqlite's 64-bit integer.
BUILD_ID = re.compile(r"[0-9]{1,18}")
SHOWN_LOG_BYTES = 1 << 20  # `kiln show` reads the tail of a log: its last MiB at most


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch else "-"


def _build_root(workspace: Workspace) -> Path:
    """Kiln's build root (builder/pipeline/build.py): the one tree whose files a ledger row may name
    for Kiln to read (logs, statements, SBOMs); a path elsewhere is data, never read."""
    from ..pipeline.build import default_build_root

    return default_build_root(workspace)


def _below(root: Path, recorded: str) -> bool:
    try:
        return Path(recorded).resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except (OSError, RuntimeError, ValueError):
        return False


# --- kiln verify -----------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from ..pipeline.attest import site_signer
    from ..provenance import check_artifact

    keyring = None
    if not args.key:
        workspace, site = site_of(args)
        signer = site_signer(site, workspace.root)
        keyring = signer.gnupghome if signer else None
    # An artifact is a file or an OCI layout directory, named by its own name: "." or "/" names none
    # (the statement is <name>.intoto.json beside it), so "." is taken as the directory it stands for.
    artifact = Path(os.path.abspath(args.artifact))
    if not artifact.name:
        raise InvalidInput(Problem(f"{args.artifact}: not an artifact (a file, or an OCI layout directory)"))
    report = check_artifact(
        artifact,
        Path(args.provenance) if args.provenance else None,
        keyring=keyring,
        public_keys=[Path(k) for k in args.key or []],
        require_signature=args.require_signature,
    )
    lines = [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.message}" for c in report.checks]
    if report.verification:
        v = report.verification
        lines.append(
            f"     gate: verification {v.get('status')}{' (' + str(v['by']) + ')' if v.get('by') else ''}"
        )
    lines.append(f"{args.artifact}: {'verified' if report.ok else 'NOT verified'}")
    emit(args, report.as_json(), "\n".join(lines))
    return ExitCode.OK if report.ok else ExitCode.FAILED


# --- kiln sbom diff --------------------------------------------------------------------------------------


def _sbom_path(given: str, args: argparse.Namespace) -> Path:
    """An SBOM file, a build manifest (its ``sbom``), or a build id (the ledger's record)."""
    import json

    path = Path(given)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise InvalidInput(Problem(f"{given}: not JSON ({exc})")) from None
        if isinstance(data, dict) and "spdxVersion" in data:
            return path
        if isinstance(data, dict) and "artifacts" in data:
            if not data.get("sbom"):
                raise InvalidInput(Problem(f"{given}: this build's manifest lists no SBOM"))
            return path.parent / data["sbom"]
        raise InvalidInput(Problem(f"{given}: neither an SPDX document nor a build manifest"))
    if BUILD_ID.fullmatch(given):
        from ..ledger import Ledger

        workspace = workspace_of(args)
        with Ledger(ledger_path(args, workspace)) as ledger:
            if ledger.build(int(given)) is None:
                raise InvalidInput(Problem(f"build {given}: no such build in the ledger"))
            found = [a for a in ledger.attestations(int(given)) if a["type"] == "sbom"]
        if not found:
            raise InvalidInput(Problem(f"build {given}: no SBOM recorded (its builder left no package list)"))
        recorded = str(found[-1]["path"])
        if not _below(_build_root(workspace), recorded):
            raise InvalidInput(
                Problem(f"build {given}: its SBOM {recorded} is not below Kiln's build root; not read")
            )
        return Path(recorded)
    raise InvalidInput(Problem(f"{given}: no such file, and not a build id"))


def cmd_sbom_diff(args: argparse.Namespace) -> int:
    from ..sbom import diff, packages_of, read_sbom

    documents = []
    for given in (args.old, args.new):
        path = _sbom_path(given, args)
        try:
            documents.append(packages_of(read_sbom(path)))
        except (ValueError, OSError) as exc:
            raise InvalidInput(Problem(f"{path}: not a readable SPDX SBOM ({exc})")) from None
    result = diff(*documents)
    emit(args, {"old": args.old, "new": args.new, **result.as_json()}, "\n".join(result.lines()))
    return ExitCode.OK


# --- kiln history, kiln show -----------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    from ..arch import Arch
    from ..ledger import Ledger
    from ..report import size_text

    workspace = workspace_of(args)
    arch = None
    if args.arch:
        try:
            arch = Arch.parse(args.arch).value
        except ValueError as exc:
            raise InvalidInput(Problem(f"--arch: {exc}")) from None
    if args.limit is not None and not 0 <= args.limit <= 10**9:
        raise InvalidInput(Problem(f"--limit {args.limit}: give a number of builds from 0 to 1000000000"))
    with Ledger(ledger_path(args, workspace)) as ledger:
        builds = ledger.history(args.recipe, arch, args.limit)
    lines = [
        f"{'BUILD':>6}  {'TARGET':40} {'STATUS':9} {'STARTED (UTC)':19} {'TIME':>8} {'SIZE':>9}  PUBLISHED"
    ]
    for b in builds:
        where = ", ".join(f"{p['publisher']} {p['location']}" for p in b["publications"]) or "-"
        seconds = f"{b['duration_s']:.0f}s" if b["duration_s"] is not None else "-"
        lines.append(
            f"{b['id']:>6}  {b['target_id']:40} {b['status']:9} {_when(b['started_at']):19} {seconds:>8} "
            f"{size_text(b['size']) if b['size'] else '-':>9}  {where}"
        )
    if not builds:
        lines = ["no builds recorded" + (f" for {args.recipe}" if args.recipe else "")]
    emit(args, {"builds": builds}, "\n".join(lines))
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    from ..ledger import Ledger
    from ..outdir import read_below

    workspace = workspace_of(args)
    if not BUILD_ID.fullmatch(args.build):
        raise InvalidInput(Problem(f"{args.build[:80]!r}: a build id is a number (see `kiln history`)"))
    with Ledger(ledger_path(args, workspace)) as ledger:
        record = ledger.build(int(args.build))
        if record is None:
            raise InvalidInput(Problem(f"build {args.build}: no such build in the ledger"))
        [summary] = [b for b in ledger.history() if b["id"] == record.id] or [None]
        artifacts = [
            {**a.__dict__, "publications": ledger.publications(a.id)} for a in ledger.artifacts(record.id)
        ]
        attestations = ledger.attestations(record.id)
    log_tail: list[str] = []
    log = None
    if record.log_path:  # a path from the ledger is data: read only from below the build root
        log = read_below(_build_root(workspace), record.log_path, tail=SHOWN_LOG_BYTES)
    if log is not None and args.log_lines > 0:
        log_tail = log.decode(errors="replace").splitlines()[-args.log_lines :]
    data = {
        **(summary or record.__dict__),
        "artifacts": artifacts,
        "attestations": attestations,
        "log_tail": log_tail,
    }
    verification = (summary or {}).get("verification") or {}
    lines = [
        f"build {record.id}: {record.target_id} {record.status}",
        f"  digest        {record.digest}",
        f"  started       {_when(record.started_at)} UTC, finished {_when(record.finished_at)} UTC",
        f"  tools         {', '.join(f'{k} {v}' for k, v in sorted(record.tool_versions.items())) or '-'}",
        f"  verification  {verification.get('status', 'never verified')}"
        + (f" ({verification['detail']})" if verification.get("detail") else ""),
        f"  log           {record.log_path or '-'}"
        + (" (not available: not a file below Kiln's build root)" if record.log_path and log is None else ""),
    ]
    if record.error:
        lines.append(f"  error         {record.error[:500]}")
    for a in artifacts:
        lines.append(
            f"  artifact      {a['name']}: {a['path']} ({a['size']} bytes, sha256 {a['sha256'][:16]}...)"
        )
        lines += [
            f"    published   {p['publisher']} {p['location']} at {_when(p['published_at'])} UTC"
            for p in a["publications"]
        ]
    lines += [
        f"  {a['type']:13} {a['artifact'] + ': ' if a['artifact'] else ''}{a['path']}" for a in attestations
    ]
    if log_tail:
        lines += ["  log tail:", *(f"    {line}" for line in log_tail)]
    emit(args, data, "\n".join(lines))
    return ExitCode.OK


# --- kiln report -----------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from ..ledger import Ledger
    from ..pipeline.graph import load_targets
    from ..report import matrix
    from ..report.html import write_report

    workspace = workspace_of(args)
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    current = {t.id: (t.recipe, t.kind, t.digest) for t in targets}
    with Ledger(ledger_path(args, workspace)) as ledger:
        history = ledger.history()
        attestations = {b["id"]: ledger.attestations(b["id"]) for b in history if b["status"] == "succeeded"}
    rows = matrix(history, current, attestations)
    page = write_report(rows, Path(args.html), workspace.templates_dir, build_root=_build_root(workspace))
    states: dict[str, int] = {}
    for row in rows:
        for cell in row.cells.values():
            states[cell.state] = states.get(cell.state, 0) + 1
    text = [f"{page} ({len(rows)} rows; " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"]
    text += [f"note: {p}" for p in problems[:5]]  # recipes that do not load are left out of the matrix
    emit(
        args,
        {"page": str(page), "rows": len(rows), "states": states, "builds": len(history)},
        "\n".join(text),
    )
    return ExitCode.OK


# --- parsers -----------------------------------------------------------------------------------------------


def register(commands: Commands) -> None:
    """``kiln verify``, ``sbom diff``, ``history``, ``show`` and ``report``."""
    p = commands.add(
        "verify",
        cmd_verify,
        "Check an artifact's bytes against its provenance (<artifact>.intoto.json) and its signature.",
        [
            "kiln verify .kiln/build/debian-12_bookworm_x86_64/out/image/debian-12_bookworm_x86_64.qcow2",
            "kiln verify image.qcow2 --key RPM-GPG-KEY-kiln --require-signature --json",
        ],
        recipes=False,
    )
    p.add_argument(
        "artifact",
        metavar="ARTIFACT",
        type=path_type("ARTIFACT"),
        help="the artifact file (an OCI layout: its directory)",
    )
    p.add_argument(
        "--provenance",
        metavar="FILE",
        type=path_type("--provenance"),
        help="the statement (default: ARTIFACT.intoto.json)",
    )
    p.add_argument(
        "--key",
        metavar="PUBKEY",
        action="append",
        type=path_type("--key"),
        help="armoured public key(s) to check with (default: the site key)",
    )
    p.add_argument("--require-signature", action="store_true", help="fail when the statement is not signed")

    sbom = commands.group(
        "sbom",
        "Software bills of materials (SPDX 2.3 JSON) of builds.",
        ["kiln sbom diff 12 15", "kiln sbom diff old.spdx.json new.spdx.json --json"],
        description="Software bills of materials (SPDX 2.3 JSON), taken during each build.",
    )
    p = commands.add(
        "diff",
        cmd_sbom_diff,
        "Packages added, removed, upgraded (and downgraded) between two builds.",
        ["kiln sbom diff 12 15", "kiln sbom diff a/manifest.json b/manifest.json --json"],
        recipes=False,
        under=sbom,
    )
    for name in ("old", "new"):
        p.add_argument(
            name,
            metavar=name.upper(),
            type=path_type(name.upper()),
            help="a build id, a build manifest or an SPDX JSON file",
        )

    p = commands.add(
        "history",
        cmd_history,
        "Builds, newest first: status, duration, size, where published.",
        ["kiln history", "kiln history debian-12 --arch ppc64le", "kiln history --json --limit 20"],
        recipes=False,
    )
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="only this recipe (its name)")
    p.add_argument("--arch", metavar="ARCH", help="only this architecture (any spelling)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N builds")

    p = commands.add(
        "show",
        cmd_show,
        "One build: its log, artifacts, publications, verification and attestations.",
        ["kiln show 12", "kiln show 12 --json"],
        recipes=False,
    )
    p.add_argument("build", metavar="BUILD", help="a build id (see kiln history)")
    p.add_argument(
        "--log-lines", type=int, default=20, metavar="N", help="lines of the log's tail (default 20)"
    )

    p = commands.add(
        "report",
        cmd_report,
        "Write the build matrix (recipes x arches, latest state, trends, filter) as a static page.",
        ["kiln report --html public/", "kiln report --html out/report --json"],
        recipes=False,
    )
    p.add_argument(
        "--html",
        metavar="DIR",
        required=True,
        type=path_type("--html"),
        help="directory for index.html, logs/ and provenance/",
    )
