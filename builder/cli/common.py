"""What every ``kiln`` command group shares: the parser's pieces (``Commands``, the common options,
``path_type``, ``examples``), finding the workspace, site, ledger and targets a command names, progress
on stderr, and ``emit`` (one JSON document, or text).

The command groups (builder/cli/recipes.py, build.py, ...) import this module; it imports none of them.
Its helpers import what they run inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, Problem
from ..workspace import Workspace

EPILOG = """\
exit codes: 0 ok, 1 invalid input, 2 usage error, 3 missing tool or service, 4 build/verify/publish failed,
            70 internal error (a Kiln bug)
docs: README.md (quickstart, recipe reference), docs/architecture.md"""


def examples(*lines: str) -> str:
    """A help page's epilog: the examples, then the exit codes and where the docs are."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EPILOG


# --- argument values -------------------------------------------------------------------------------------
# Checks of command-line values that argparse applies as they are parsed (``type=``): a value that cannot
# be what it stands for is invalid input (exit 1, as for every wrong argument value) naming the argument,
# before any command runs. ``kiln``'s ``main`` reports it (builder/cli/__init__.py).

PATH_MAX_BYTES = 4095  # Linux PATH_MAX (4096) less the terminating NUL
NAME_MAX_BYTES = 255  # one path component
# C0 and C1 controls, DEL, U+2028/U+2029: a path holding one is a pasting accident (or an attack on
# whoever reads the logs), never a file a user means.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a path Kiln reads or writes, or None. Pure."""
    if not value:
        return "an empty path (give a file or directory, e.g. '.')"
    control = _CONTROL.search(value)
    if control is not None:
        return f"a path with a control character (U+{ord(control.group()):04X}) is not accepted"
    encoded = os.fsencode(value)
    if len(encoded) > PATH_MAX_BYTES:
        return f"a path of {len(encoded)} bytes; at most {PATH_MAX_BYTES} are possible"
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > NAME_MAX_BYTES:
        return f"a path with a {longest}-byte name in it; at most {NAME_MAX_BYTES} are possible"
    return None


def path_type(argument: str) -> Callable[[str], str]:
    """argparse ``type`` for the path ``argument`` (``--html``, ``ARTIFACT``): the value unchanged, or
    InvalidInput naming the argument and what is wrong (not argparse's own error: exit 1, not 2)."""

    def checked(value: str) -> str:
        problem = path_problem(value)
        if problem is not None:
            shown = f"{value[:60]!r}{'...' if len(value) > 60 else ''}"
            raise InvalidInput(Problem(f"{argument}: {problem} (got {shown})"))
        return value

    return checked


# --- the parser ------------------------------------------------------------------------------------------


def add_common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """Options accepted before or after the command name (``kiln -q render`` = ``kiln render -q``)."""
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=default,
        type=path_type("--root"),
        help="workspace root (default: $KILN_ROOT, else the nearest dir with recipes/ and templates/)",
    )
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        default=default,
        type=path_type("--ledger"),
        help="sqlite ledger (default: $KILN_LEDGER, else ROOT/.kiln/ledger.sqlite)",
    )
    parser.add_argument(
        "--site",
        metavar="FILE",
        default=default,
        type=path_type("--site"),
        help="site settings (default: $KILN_SITE, else ROOT/site.yaml, else the local site)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress output")


class Commands:
    """Where a command group adds its commands (each group module's ``register(commands)``): every
    command gets the common options, its help, examples, the exit codes and (unless told) --json."""

    def __init__(self, subparsers: Any, common: argparse.ArgumentParser):
        self.subparsers = subparsers  # ``kiln``'s COMMAND
        self.common = common  # the common options, as a parent parser

    def add(
        self,
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_: str,
        examples_: list[str],
        recipes: bool = True,
        json_flag: bool = True,
        *,
        under: Any = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        """A command (or, ``under`` a group, one of its actions) with help, examples and --json."""
        p = (under or self.subparsers).add_parser(
            name,
            parents=[self.common],
            help=help_,
            description=description or help_,
            epilog=examples(*examples_),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        if recipes:
            p.add_argument(
                "recipes",
                nargs="*",
                metavar="RECIPE",
                type=path_type("RECIPE"),  # names and target ids pass too
                help="recipe files, directories or recipe names (default: every recipe)",
            )
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return p

    def group(self, name: str, help_: str, examples_: list[str], *, description: str | None = None) -> Any:
        """A command whose actions are sub-commands (``kiln site up``); returns their subparsers."""
        p = self.subparsers.add_parser(
            name,
            parents=[self.common],
            help=help_,
            description=description or help_,
            epilog=examples(*examples_),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


# --- what a command names: workspace, recipes, targets, ledger, site ---------------------------------------


def workspace_of(args: argparse.Namespace) -> Workspace:
    """The workspace: --root, else discovered ($KILN_ROOT, else the nearest dir with recipes/)."""
    if not args.root:
        return Workspace.discover()
    try:
        return Workspace(Path(args.root).resolve(strict=True))
    except (OSError, RuntimeError) as exc:  # missing, a symlink loop, a name too long
        raise InvalidInput(Problem(f"--root {args.root}: {getattr(exc, 'strerror', None) or exc}")) from None


def recipe_paths(args: argparse.Namespace, workspace: Workspace) -> list[Path]:
    """RECIPE arguments may be files, directories or recipe names; none means every recipe."""
    if not args.recipes:
        return [workspace.recipes_dir]
    paths: list[Path] = []
    by_name: dict[str, Path] | None = None
    for given in args.recipes:
        path = Path(given)
        try:
            exists = path.exists()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise InvalidInput(Problem(f"{given[:80]}: {getattr(exc, 'strerror', None) or exc}")) from None
        if exists:
            paths.append(path)
            continue
        if by_name is None:
            by_name = _recipe_names(workspace)
        if given in by_name:
            paths.append(by_name[given])
        elif ":" in given and given.split(":")[0] in by_name:  # a target id (kiln pipeline's jobs)
            paths.append(by_name[given.split(":")[0]])
        else:
            raise InvalidInput(
                Problem(f"{given}: no such file, directory or recipe name in {workspace.recipes_dir}")
            )
    return paths


def _recipe_names(workspace: Workspace) -> dict[str, Path]:
    from ..recipes import discover  # here, not at the top: start-up time
    from ..yamlsource import load_file

    names: dict[str, Path] = {}
    for path in discover([workspace.recipes_dir]):
        try:
            data = load_file(path).data
        except InvalidInput:
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            names.setdefault(data["name"], path)
    return names


def selected_targets(
    args: argparse.Namespace, with_dependencies: bool = False
) -> tuple[Workspace, list[Any]]:
    """The workspace and the targets RECIPE arguments (and --arch) select; InvalidInput when a recipe
    does not load."""
    from ..pipeline.graph import load_targets, select  # here, not at the top: start-up time

    workspace = workspace_of(args)
    targets, problems = load_targets(
        recipe_paths(args, workspace), workspace, with_dependencies=with_dependencies
    )
    if problems:
        raise InvalidInput(problems)
    try:
        targets = select(targets, arch=getattr(args, "arch", None))
    except ValueError as exc:
        raise InvalidInput(Problem(f"--arch: {exc}")) from None
    ids = [g for g in (getattr(args, "recipes", None) or []) if ":" in g and not Path(g).exists()]
    if ids:
        from ..pipeline.build import default_build_root
        from ..pipeline.gitlab import select_ids

        def built_here(target: Any) -> bool:  # a GitLab job's needs: brought its manifest
            path = default_build_root(workspace) / target.slug / "manifest.json"
            try:
                return json.loads(path.read_text()).get("digest") == target.digest
            except (OSError, ValueError, AttributeError):
                return False

        targets = select_ids(targets, ids, with_dependencies, built_here)
    return workspace, targets


def ledger_path(args: argparse.Namespace, workspace: Workspace) -> Path:
    """--ledger, else $KILN_LEDGER, else ROOT/.kiln/ledger.sqlite."""
    if args.ledger:
        return Path(args.ledger)
    env = os.environ.get("KILN_LEDGER")
    return Path(env) if env else workspace.root / ".kiln" / "ledger.sqlite"


def site_of(args: argparse.Namespace) -> tuple[Workspace, Any]:
    """The workspace and its site settings (--site), their secrets registered with the masker."""
    from ..masking import register, secrets_in  # here, not at the top: start-up time
    from ..rpm.credentials import login_secrets
    from ..siteconfig import load_site

    workspace = workspace_of(args)
    site = load_site(Path(args.site) if args.site else None, workspace.root)
    # Values under keys named like secrets, and the passwords of its URLs (as written and decoded).
    for secret in [*secrets_in(site.model_dump(mode="json")), *login_secrets(site.login_urls())]:
        register(secret)
    return workspace, site


# --- output ----------------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """With --json, ``data`` as one JSON document on stdout; else ``text`` (when there is any)."""
    if args.json:  # one write: the masking layer sees whole lines, and fast
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif text:
        print(text)


def stderr_step(prefix: str) -> Callable[[str], None]:
    """A step callback that prints each step as a line on stderr, after ``prefix: ``."""
    return lambda step: print(f"{prefix}: {step}", file=sys.stderr)


class Progress:
    """Progress on stderr for people; silent when stderr is not a terminal or with --quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def step(self, done: int, total: int, what: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K[{done}/{total}] {what}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()


class StepPrinter:
    """A long build's steps on stderr. Frequent steps (a tool's phase lines, e.g. ``dib: ...``)
    rewrite one live line on a terminal; elsewhere (CI logs) every step is a plain line."""

    LIVE_PREFIXES = ("dib: ", "packer: ")

    def __init__(self, prefix: str, stream: Any = None):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.live = False

    def __call__(self, step: str) -> None:
        text = f"{self.prefix}: {step}"
        if self.tty and step.startswith(self.LIVE_PREFIXES):
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write(f"\r\x1b[K{text[:width]}")
            self.live = True
        else:
            self.stream.write(("\r\x1b[K" if self.live else "") + text + "\n")
            self.live = False
        self.stream.flush()
