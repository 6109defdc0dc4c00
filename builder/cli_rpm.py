"""``kiln rpm missing`` and ``kiln rpm rebuild``. Registered by builder/cli.py (``register``); they
parse, call builder/rpm/ and the build pipeline, and print."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .arch import Arch
from .errors import ExitCode, InvalidInput, Problem


def _cli() -> Any:
    from . import cli

    return cli


def _arch(value: str) -> Arch:
    try:
        return Arch.parse(value)
    except ValueError as exc:
        raise InvalidInput(Problem(f"--arch: {exc}")) from None


def cmd_rpm_missing(args: argparse.Namespace) -> int:
    from .rpm.missing import default_source_repo, missing_between, write_recipes

    arch = _arch(args.arch)
    found = missing_between(args.from_url, args.to_url, arch)
    written: list[Path] = []
    if args.write_recipes:
        written = write_recipes(
            found,
            Path(args.write_recipes),
            from_url=args.from_url,
            to_url=args.to_url,
            source_repo=args.source_repo or default_source_repo(args.from_url),
            arch=arch,
            distro=args.distro,
            release=args.release,
        )
    lines = [
        f"{m.source:30} {m.version:20} {('only ' + m.have) if m.have else 'missing'}  "
        f"({', '.join(m.binaries)})"
        for m in found
    ]
    lines += [f"wrote {p}" for p in written]
    lines.append(f"{len(found)} source package(s) to rebuild for {arch.value}")
    _cli()._emit(
        args,
        {"arch": arch.value, "missing": [m.as_json() for m in found], "recipes": [str(p) for p in written]},
        "\n".join(lines),
    )
    return ExitCode.OK


ADHOC_RECIPE = """\
# Written by `kiln rpm rebuild` for an ad hoc rebuild.
name: {name}
kind: rpm-rebuild
arches: [{arch}]
build:
  source: {source}
  release: "{release}"
  verify_signature: {verify}
  trusted_keys: [{keys}]
"""


def cmd_rpm_rebuild(args: argparse.Namespace) -> int:
    """Write a recipe under ROOT/.kiln/adhoc/<name>/ (the SRPM copied beside it) and build it."""
    from .rpm.missing import recipe_name

    cli = _cli()
    workspace = cli._workspace(args)
    arch = _arch(args.arch)
    given = Path(args.srpm)
    if given.is_file():
        from .rpm.source import read_header

        name = recipe_name(read_header(given).name)
        where = workspace.root / ".kiln" / "adhoc" / name
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy2(given, where / given.name)
        source = f"{{path: {given.name}}}"
    else:
        if not args.repo:
            raise InvalidInput(Problem(f"{args.srpm}: not a file; a package name needs --repo URL"))
        name = recipe_name(args.srpm)
        where = workspace.root / ".kiln" / "adhoc" / name
        where.mkdir(parents=True, exist_ok=True)
        source = f"{{package: {args.srpm}, repo: '{args.repo}'}}"
    keys = []
    for key in args.trusted_key or []:
        shutil.copy2(key, where / Path(key).name)
        keys.append(Path(key).name)
    recipe = where / f"{name}.yaml"
    recipe.write_text(
        ADHOC_RECIPE.format(
            name=name,
            arch=arch.value,
            source=source,
            release=args.release,
            verify="false" if args.no_verify_signature else "true",
            keys=", ".join(keys),
        )
    )
    args.recipes = [str(recipe)]
    args.candidate, args.gpu = None, False  # kiln build's options that `rpm rebuild` does not offer
    return int(cli.cmd_build(args))


def register(add: Callable[..., argparse.ArgumentParser], group: Callable[..., Any]) -> None:
    """``kiln rpm missing`` and ``kiln rpm rebuild`` (``add``/``group``: cli.build_parser's)."""
    rpm = group(
        "rpm",
        "RPM rebuilds: find what a repo lacks, rebuild one SRPM ad hoc.",
        [
            "kiln rpm missing --from http://repo/el/9/x86_64/ --to http://repo/el/9/ppc64le/",
            "kiln rpm rebuild files/srpms/kiln-hello-1.0-1.src.rpm --arch ppc64le --no-verify-signature",
        ],
        description="RPM rebuilds: find what a repo lacks for an arch, rebuild one SRPM ad hoc.",
    )
    p = add(
        "missing",
        cmd_rpm_missing,
        "Source packages with binaries in --from but none, or only older ones, in --to.",
        [
            "kiln rpm missing --from http://repo/el/9/x86_64/ --to http://repo/el/9/ppc64le/ --json",
            "kiln rpm missing --from URL --to URL --write-recipes recipes/rebuilds/",
        ],
        recipes=False,
        under=rpm,
    )
    p.add_argument("--from", dest="from_url", required=True, metavar="URL", help="the repo that has them")
    p.add_argument("--to", dest="to_url", required=True, metavar="URL", help="the repo that may lack them")
    p.add_argument("--arch", default="ppc64le", help="the arch --to is for (default: ppc64le)")
    p.add_argument("--write-recipes", metavar="DIR", help="write a rebuild recipe for each into DIR")
    p.add_argument("--source-repo", metavar="URL", help="where the SRPMs are (default: --from's source/)")
    p.add_argument("--distro", default="el", choices=["el", "fedora"], help="written recipes' build.distro")
    p.add_argument("--release", default="9", help="written recipes' build.release (default: 9)")

    p = add(
        "rebuild",
        cmd_rpm_rebuild,
        "Rebuild one SRPM (a file, or a package name in --repo) for --arch.",
        [
            "kiln rpm rebuild foo-1.0-1.src.rpm --arch ppc64le --trusted-key RPM-GPG-KEY-upstream",
            "kiln rpm rebuild foo --repo http://repo/el/9/source/ --arch ppc64le --publish",
        ],
        recipes=False,
        under=rpm,
        description="Write an ad hoc recipe under .kiln/adhoc/ and build it like `kiln build`.",
    )
    p.add_argument(
        "srpm", metavar="SRPM-OR-NAME", help="a .src.rpm file, or a source package name (with --repo)"
    )
    p.add_argument("--arch", default="ppc64le", help="target arch (default: ppc64le)")
    p.add_argument("--repo", metavar="URL", help="source repo to find a package name in")
    p.add_argument("--release", default="9", help="build.release (default: 9)")
    p.add_argument(
        "--trusted-key", action="append", metavar="PUBKEY", help="a key the SRPM may be signed with"
    )
    p.add_argument("--no-verify-signature", action="store_true", help="rebuild an unsigned SRPM anyway")
    p.add_argument(
        "--publish", action=argparse.BooleanOptionalAction, default=None, help="publish (default: site.yaml)"
    )
    p.add_argument("--no-verify", action="store_true", help="skip verification (recorded as off)")
    p.add_argument("--dry-run", action="store_true", help="print the commands; build nothing")
