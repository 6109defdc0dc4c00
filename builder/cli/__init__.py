"""The ``kiln`` command: a thin layer that parses arguments, calls the modules and reports.

Exit codes: 0 ok; 1 invalid input (recipes, arguments' values); 2 usage; 3 missing tool or
service; 4 a build, verification or publish failed. ``--json`` prints one JSON document on stdout
and nothing else there; human messages and progress go to stderr.

This module holds the parser (``build_parser``) and ``main``: start-up, signals, the masking of
what is printed, and how an error or a crash is reported. The commands are in one module per
group, each adding its own (``register``); what they share is builder/cli/common.py:

- recipes.py: validate, schema, plan, render
- build.py: build, publish
- pipeline.py: pipeline
- records.py: verify, sbom diff, history, show, report
- rpm.py: rpm missing, rpm rebuild
- site.py: site up, site down, site status
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ExitCode, InvalidInput, KilnError
from ..masking import MaskingStream
from . import build, pipeline, recipes, records, rpm, site
from .common import Commands, add_common_options, examples

__all__ = ["build_parser", "main", "tune_gc"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description=textwrap.dedent(
            """\
            Kiln builds guest images, IPA ramdisks, ppc64le RPM rebuilds and CUDA containers from
            YAML recipes, per architecture, and records what it built in a ledger."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("kiln validate", "kiln plan --json", "kiln render debian-12 --arch ppc64le -o out/"),
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    add_common_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, argparse.SUPPRESS)  # so a sub-command's absent flag keeps the global value
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), common)
    # In the order `kiln --help` lists them.
    recipes.register(commands)  # validate, schema, plan, render
    build.register_build(commands)
    pipeline.register(commands)
    build.register_publish(commands)
    records.register(commands)  # verify, sbom, history, show, report
    rpm.register(commands)  # rpm missing, rpm rebuild
    site.register(commands)  # site up, site down, site status
    return parser


def tune_gc() -> None:
    """Fewer cyclic-GC passes: a kiln run allocates many small, short-lived objects (YAML nodes,
    located data, models) and little cyclic garbage; the default thresholds spent ~40% of
    `kiln plan` on collection (bench/plan_scale.py)."""
    gc.freeze()  # what is imported is alive for the whole run
    gc.set_threshold(100_000, 50, 100)


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (CI cancelling a job) becomes an exception, so that the runner stops the build's
    # process group and cleanups (mounts, loop devices) run on the way out.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except InvalidInput as exc:  # a value a type= check refused (common.path_type): exit 1, as later
        given = list(sys.argv[1:] if argv is None else argv)
        if "--json" in given:
            problems = [p.as_json() for p in exc.problems]
            sys.stdout.write(json.dumps({"ok": False, "problems": problems}, indent=2) + "\n")
        print(f"kiln: error: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    tune_gc()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    # Everything this command prints passes the one masking layer (builder/masking.py).
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskingStream(sys.stdout), MaskingStream(sys.stderr)  # type: ignore[assignment]
    try:
        return _run_command(args)
    finally:
        from ..signing import release_keyrings  # here, not at the top: start-up time

        release_keyrings()  # nothing this command started (a gpg-agent) outlives it
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader that left (`kiln plan --json | head`)
                stream.flush()
        sys.stdout, sys.stderr = streams


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except KilnError as exc:
        if getattr(args, "json", False) and isinstance(exc, InvalidInput):
            problems = [p.as_json() for p in exc.problems]
            sys.stdout.write(json.dumps({"ok": False, "problems": problems}, indent=2) + "\n")
        print(f"kiln {args.command}: error: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kiln plan --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception as exc:  # a Kiln bug: never reported as "invalid input"
        where = _save_traceback(args)
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        if getattr(args, "json", False):
            json.dump({"ok": False, "internal_error": message, "traceback": where}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        print(
            f"kiln {args.command}: internal error (a Kiln bug, please report it): {message}; "
            f"traceback: {where}",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL


def _save_traceback(args: argparse.Namespace) -> str:
    """The traceback of the exception being handled, in a file under ~/.cache/kiln/crashes/."""
    import traceback

    text = f"kiln {__version__}: {' '.join(sys.argv)}\n{traceback.format_exc()}"
    try:
        directory = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln" / "crashes"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"kiln-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}.txt"
        path.write_text(text)
        return str(path)
    except OSError:
        sys.stderr.write(text)
        return "printed above"
