"""``kiln rpm missing``: source packages with binaries in one repo (say x86_64) but none, or only an
older version, in another (say ppc64le) — and a rebuild recipe for each.

Both repos are read over HTTP through their ``repodata/repomd.xml`` (builder/rpm/source.py).
Packages are grouped by their ``sourcerpm``; a source whose binaries in the first repo are all
``noarch`` needs no rebuild and is not listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..arch import Arch
from .source import RepoPackage, repo_packages
from .versions import evr_cmp


@dataclass(frozen=True)
class Missing:
    source: str  # source package name
    version: str  # version-release in the first repo
    have: str | None  # newest version-release in the second repo, None: nothing there
    binaries: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "version": self.version,
            "have": self.have,
            "binaries": list(self.binaries),
        }


def source_nvr(sourcerpm: str) -> tuple[str, str, str] | None:
    """``foo-1.2-3.el9.src.rpm`` -> (foo, 1.2, 3.el9)."""
    stem = sourcerpm.removesuffix(".rpm").removesuffix(".src")
    parts = stem.rsplit("-", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def _by_source(packages: list[RepoPackage]) -> dict[str, list[tuple[tuple[str, str, str], RepoPackage]]]:
    out: dict[str, list[tuple[tuple[str, str, str], RepoPackage]]] = {}
    for package in packages:
        if package.arch == "src":
            continue
        nvr = (
            source_nvr(package.sourcerpm)
            if package.sourcerpm
            else (package.name, package.version, package.release)
        )
        if nvr is None:
            continue
        out.setdefault(nvr[0], []).append(((package.epoch or "0", nvr[1], nvr[2]), package))
    return out


def find_missing(first: list[RepoPackage], second: list[RepoPackage], arch: Arch) -> list[Missing]:
    wanted_arches = {arch.rpm, "noarch"}
    have = _by_source([p for p in second if p.arch in wanted_arches])
    out = []
    for source, entries in sorted(_by_source(first).items()):
        if all(p.arch == "noarch" for _, p in entries):
            continue
        newest = max((evr for evr, _ in entries), key=_key)
        binaries = tuple(sorted({p.name for evr, p in entries if evr == newest}))
        there = [evr for evr, _ in have.get(source, [])]
        best = max(there, key=_key) if there else None
        if best is None or evr_cmp(best, newest) < 0:
            out.append(
                Missing(
                    source, f"{newest[1]}-{newest[2]}", f"{best[1]}-{best[2]}" if best else None, binaries
                )
            )
    return out


def _key(evr: tuple[str, str, str]) -> object:
    from functools import cmp_to_key

    return cmp_to_key(evr_cmp)(evr)


def missing_between(from_url: str, to_url: str, arch: Arch) -> list[Missing]:
    return find_missing(repo_packages(from_url), repo_packages(to_url), arch)


def default_source_repo(from_url: str) -> str:
    """Kiln's layout: ``<repo>/<distro>/<release>/<arch>/`` beside ``.../source/``."""
    return re.sub(r"/[^/]+/?$", "/source/", from_url.rstrip("/") + "/")


def recipe_name(source: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")
    return name or "package"


RECIPE = """\
# yaml-language-server: $schema=../../schemas/recipe.schema.json
# Written by `kiln rpm missing`: {source} {version} is in {from_url} but {reason} in {to_url}.
name: {name}
kind: rpm-rebuild
description: {source} rebuilt for {arch}
arches: [{arch}]
build:
  source:
    package: {source}
    repo: {source_repo}
  distro: {distro}
  release: "{release}"
"""


def write_recipes(
    found: list[Missing], directory: Path, *, from_url: str, to_url: str, source_repo: str, arch: Arch,
    distro: str = "el", release: str = "9",
) -> list[Path]:  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for item in found:
        path = directory / f"{recipe_name(item.source)}.yaml"
        path.write_text(
            RECIPE.format(
                source=item.source,
                version=item.version,
                from_url=from_url,
                to_url=to_url,
                reason=f"only {item.have}" if item.have else "nothing",
                name=recipe_name(item.source),
                arch=arch.value,
                source_repo=source_repo,
                distro=distro,
                release=release,
            )
        )
        written.append(path)
    return written
