"""``kiln site up``, ``kiln site down`` and ``kiln site status``: the embedded local site
(builder/site/local.py). They parse, call it and print.

Commands import their heavy modules inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import ExitCode
from .common import Commands, emit, site_of


def _local_site(args: argparse.Namespace) -> Any:
    from ..site.local import LocalSite

    workspace, site = site_of(args)
    return LocalSite(site.state_dir(workspace.root), site.local, no_auth=getattr(args, "no_auth", False))


def cmd_site_up(args: argparse.Namespace) -> int:
    local = _local_site(args)
    quiet = args.quiet or args.json
    started = time.monotonic()
    urls = local.up(
        on_step=(lambda _: None) if quiet else (lambda step: print(f"site: {step}", file=sys.stderr))
    )
    elapsed = time.monotonic() - started
    behind = "keystone" in local.components
    lines = [f"{name:9} {url}" for name, url in urls.as_json().items() if behind or name != "keystone"]
    if behind:
        clouds = local.endpoints.keystone_clouds_yaml
        lines.append(f"Glance is behind Keystone: OS_CLIENT_CONFIG_FILE={clouds} OS_CLOUD=kiln-local")
    else:
        lines.append("Glance runs without authentication (no Keystone in this site)")
    report = {
        "urls": urls.as_json(),
        "state_dir": str(local.state),
        "seconds": round(elapsed, 1),
        "auth": "keystone" if behind else "none",
    }
    if behind:
        report["clouds_yaml"] = str(local.endpoints.keystone_clouds_yaml)
    emit(args, report, "\n".join([*lines, f"local site up in {elapsed:.1f}s (state: {local.state})"]))
    return ExitCode.OK


def cmd_site_down(args: argparse.Namespace) -> int:
    stopped = _local_site(args).down()
    emit(args, {"stopped": stopped}, f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return ExitCode.OK


def cmd_site_status(args: argparse.Namespace) -> int:
    report = _local_site(args).status()
    healthy = all(entry["healthy"] for entry in report.values())
    lines = [
        f"{name:16} {'healthy' if e['healthy'] else 'DOWN':8} pid {e['pid'] or '-'}"
        for name, e in report.items()
    ]
    emit(args, {"healthy": healthy, "services": report}, "\n".join(lines))
    return ExitCode.OK if healthy else ExitCode.ENVIRONMENT


def register(commands: Commands) -> None:
    """``kiln site up``, ``site down`` and ``site status``."""
    site = commands.group(
        "site",
        "Start, stop or check the embedded local site (Keystone, Glance, registry, repo, S3).",
        ["kiln site up", "kiln site up --no-auth", "kiln site status --json", "kiln site down"],
        description="The embedded local site: real services on 127.0.0.1, state under local.state_dir.",
    )
    for action, func, text in (
        ("up", cmd_site_up, "Prepare and start every component, wait for health, print URLs."),
        ("down", cmd_site_down, "Stop the processes this site started (and nothing else)."),
        ("status", cmd_site_status, "Probe each service; exit 3 when one is down."),
    ):
        examples = [f"kiln site {action}", f"kiln site {action} --json"]
        parser = commands.add(action, func, text, examples, recipes=False, under=site)
        if action == "up":
            parser.add_argument(
                "--no-auth",
                action="store_true",
                help="Glance without Keystone (a fixed identity, any token or none): faster to start, "
                "but it accepts any credential, so it proves nothing about authentication",
            )
