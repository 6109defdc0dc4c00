"""``kiln rpm missing`` and ``kiln rpm rebuild``. They parse, call builder/rpm/ and (``rpm rebuild``)
``kiln build``'s command, and print.

Commands import their heavy modules inside the function: start-up time (``kiln --help`` stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path

from ..arch import Arch
from ..errors import ExitCode, InvalidInput, Problem
from .build import cmd_build  # `rpm rebuild` writes a recipe, then builds it as `kiln build` does
from .common import Commands, emit, path_type, site_of, workspace_of


def _arch(value: str) -> Arch:
    try:
        return Arch.parse(value)
    except ValueError as exc:
        raise InvalidInput(Problem(f"--arch: {exc}")) from None


def cmd_rpm_missing(args: argparse.Namespace) -> int:
    from .. import masking
    from ..rpm.credentials import RepoLogins, login_secrets
    from ..rpm.missing import missing_between
    from ..rpm.written import default_source_repo, write_recipes

    arch = _arch(args.arch)
    _, site = site_of(args)  # its logins' secrets registered with the masker there
    for secret in login_secrets([args.from_url, args.to_url]):  # a login given on the command line
        masking.register(secret)
    found = missing_between(args.from_url, args.to_url, arch, RepoLogins(tuple(site.login_urls())))
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
    # [epoch:]version-release on both sides; noarch-only sources apart: listed, never rebuilt.
    lines = [
        f"{m.source:30} {m.version:20} {('only ' + m.have) if m.have else 'missing'}  "
        f"({', '.join(m.binaries)})"
        for m in found
    ]
    lines += [
        f"{m.source:30} {m.version:20} noarch only, {('only ' + m.have) if m.have else 'missing'}: "
        f"no rebuild  ({', '.join(m.binaries)})"
        for m in found.noarch_only
    ]
    lines += [f"wrote {p}" for p in written]
    lines.append(f"{len(found)} source package(s) to rebuild for {arch.value}")
    if found.noarch_only:
        lines.append(f"{len(found.noarch_only)} noarch-only source package(s) missing there (no rebuild)")
    emit(
        args,
        {
            "arch": arch.value,
            "missing": [m.as_json() for m in found],
            "noarch_only": [m.as_json() for m in found.noarch_only],
            "recipes": [str(p) for p in written],
        },
        "\n".join(lines),
    )
    return ExitCode.OK


def cmd_rpm_rebuild(args: argparse.Namespace) -> int:
    """Write a recipe under ROOT/.kiln/adhoc/<name>/ (the SRPM and keys copied beside it) and build it.

    The recipe is data written by the YAML emitter and validated before it is written
    (builder/rpm/written.py): a package name must be an rpm name, and ``--repo`` carries no
    credentials (a login for it comes from site.yaml)."""
    from ..outdir import write_below
    from ..rpm.credentials import has_userinfo
    from ..rpm.written import adhoc_recipe, is_rpm_name, recipe_name

    workspace = workspace_of(args)
    arch = _arch(args.arch)
    given = Path(args.srpm)
    copies: list[tuple[Path, str]] = []  # (file, its name beside the recipe)
    if given.is_file():
        from ..rpm.source import read_header

        package = read_header(given).name
        if not is_rpm_name(package):
            raise InvalidInput(
                Problem(f"{args.srpm}: its Name {package[:80]!r} is not an rpm package name; refused")
            )
        source = {"path": given.name}
        copies.append((given, given.name))
    else:
        if not args.repo:
            raise InvalidInput(Problem(f"{args.srpm}: not a file; a package name needs --repo URL"))
        if not is_rpm_name(args.srpm):
            raise InvalidInput(
                Problem(
                    f"{args.srpm[:80]!r}: neither a file nor an rpm package name "
                    "(letters, digits and . _ + -, starting with a letter or digit)"
                )
            )
        if has_userinfo(args.repo):
            raise InvalidInput(
                Problem(
                    "--repo: credentials (user:password@) are not written into a recipe; give the URL "
                    "without them, and the URL with its credentials in site.yaml "
                    "(README, kind: rpm-rebuild, Credentials)"
                )
            )
        package = args.srpm
        source = {"package": package, "repo": args.repo}
    keys: list[str] = []
    for key in args.trusted_key or []:
        key_path = Path(key)
        if not key_path.is_file():
            raise InvalidInput(Problem(f"--trusted-key {key}: no such file"))
        if key_path.name in keys or key_path.name == given.name:
            raise InvalidInput(Problem(f"--trusted-key {key}: another file of that name is given too"))
        keys.append(key_path.name)
        copies.append((key_path, key_path.name))
    name = recipe_name(package)
    recipe = adhoc_recipe(
        name,
        arch=arch,
        source=source,
        release=args.release,
        verify_signature=not args.no_verify_signature,
        trusted_keys=keys,
    )
    where = workspace.root / ".kiln" / "adhoc" / name
    [recipe_path] = write_below(where, [(recipe.file_name, recipe.text.encode(), 0o644)])
    for file, copy_name in copies:
        copy = where / copy_name
        if copy.is_symlink():  # copied over, never through
            copy.unlink()
        with contextlib.suppress(shutil.SameFileError):  # rebuilt from its own copy
            shutil.copy2(file, copy)
    args.recipes = [str(recipe_path)]
    args.candidate, args.gpu = None, False  # kiln build's options that `rpm rebuild` does not offer
    return int(cmd_build(args))


def register(commands: Commands) -> None:
    """``kiln rpm missing`` and ``kiln rpm rebuild``."""
    rpm = commands.group(
        "rpm",
        "RPM rebuilds: find what a repo lacks, rebuild one SRPM ad hoc.",
        [
            "kiln rpm missing --from http://repo/el/9/x86_64/ --to http://repo/el/9/ppc64le/",
            "kiln rpm rebuild files/srpms/kiln-hello-1.0-1.src.rpm --arch ppc64le --no-verify-signature",
        ],
        description="RPM rebuilds: find what a repo lacks for an arch, rebuild one SRPM ad hoc.",
    )
    p = commands.add(
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
    p.add_argument(
        "--write-recipes",
        metavar="DIR",
        type=path_type("--write-recipes"),
        help="write a rebuild recipe for each into DIR",
    )
    p.add_argument("--source-repo", metavar="URL", help="where the SRPMs are (default: --from's source/)")
    p.add_argument("--distro", default="el", choices=["el", "fedora"], help="written recipes' build.distro")
    p.add_argument("--release", default="9", help="written recipes' build.release (default: 9)")

    p = commands.add(
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
        "srpm",
        metavar="SRPM-OR-NAME",
        type=path_type("SRPM-OR-NAME"),
        help="a .src.rpm file, or a source package name (with --repo)",
    )
    p.add_argument("--arch", default="ppc64le", help="target arch (default: ppc64le)")
    p.add_argument("--repo", metavar="URL", help="source repo to find a package name in")
    p.add_argument("--release", default="9", help="build.release (default: 9)")
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="PUBKEY",
        type=path_type("--trusted-key"),
        help="a key the SRPM may be signed with",
    )
    p.add_argument("--no-verify-signature", action="store_true", help="rebuild an unsigned SRPM anyway")
    p.add_argument(
        "--publish", action=argparse.BooleanOptionalAction, default=None, help="publish (default: site.yaml)"
    )
    p.add_argument("--no-verify", action="store_true", help="skip verification (recorded as off)")
    p.add_argument("--dry-run", action="store_true", help="print the commands; build nothing")
