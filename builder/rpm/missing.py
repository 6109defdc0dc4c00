"""``kiln rpm missing``: source packages with binaries in one repo (say x86_64) but none, or only an
older version, in another (say ppc64le) — and a rebuild recipe for each (builder/rpm/written.py).

Both repos are read over HTTP through their ``repodata/repomd.xml``, inside limits
(builder/rpm/repometa.py), with the logins site.yaml lends them (builder/rpm/credentials.py).
Packages are grouped by their ``sourcerpm``, versions ordered by rpm's own ``labelCompare``
(builder/rpm/versions.py) and shown as ``epoch:version-release``.

- A source counts as present for the arch only if its arch-specific binaries are there: EL repos carry
  every noarch package in every arch's repo, so a noarch subpackage proves nothing.
- A source whose binaries (its newest build's) in the first repo are all ``noarch`` needs no rebuild:
  when the second repo lacks it (noarch there counts), it is reported apart as "noarch only".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import Arch
from .credentials import NO_LOGINS, RepoLogins
from .source import RepoPackage, repo_packages
from .versions import Evr, evr_cmp, evr_key, format_evr

NOARCH = "noarch"


@dataclass(frozen=True)
class Missing:
    source: str  # source package name
    version: str  # [epoch:]version-release of its newest build in the first repo
    have: str | None  # [epoch:]version-release of the newest in the second repo, None: nothing there
    binaries: tuple[str, ...]  # its newest build's binary packages in the first repo
    noarch_only: bool = False  # those are all noarch: no rebuild, the same packages serve every arch

    @property
    def status(self) -> str:
        """``missing`` (nothing there), ``older`` (an older build there) or ``noarch-only``."""
        if self.noarch_only:
            return "noarch-only"
        return "older" if self.have else "missing"

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "version": self.version,
            "have": self.have,
            "binaries": list(self.binaries),
            "status": self.status,
        }


class MissingReport(list[Missing]):
    """The sources to rebuild for the arch (the list itself: what ``write_recipes`` takes), and beside
    them ``noarch_only``: sources the second repo lacks whose binaries are all noarch (no rebuild)."""

    def __init__(self, rebuild: list[Missing], noarch_only: list[Missing]):
        super().__init__(rebuild)
        self.noarch_only: tuple[Missing, ...] = tuple(noarch_only)


def source_nvr(sourcerpm: str) -> tuple[str, str, str] | None:
    """``foo-1.2-3.el9.src.rpm`` -> (foo, 1.2, 3.el9)."""
    stem = sourcerpm.removesuffix(".rpm").removesuffix(".src")
    parts = stem.rsplit("-", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def _by_source(packages: list[RepoPackage]) -> dict[str, list[tuple[Evr, RepoPackage]]]:
    """Binary packages by source package name, each with its source's (epoch, version, release)."""
    out: dict[str, list[tuple[Evr, RepoPackage]]] = {}
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


def _newest(entries: list[tuple[Evr, RepoPackage]]) -> Evr | None:
    return max((evr for evr, _ in entries), key=evr_key) if entries else None


def find_missing(first: list[RepoPackage], second: list[RepoPackage], arch: Arch) -> MissingReport:
    """What ``second`` (the repo for ``arch``) lacks of ``first``, by source package."""
    built_for_arch = _by_source([p for p in second if p.arch == arch.rpm])
    served_to_arch = _by_source([p for p in second if p.arch in (arch.rpm, NOARCH)])
    rebuild: list[Missing] = []
    noarch_only: list[Missing] = []
    for source, entries in sorted(_by_source(first).items()):
        newest = max((evr for evr, _ in entries), key=evr_key)  # a source is listed with its entries
        build = [p for evr, p in entries if evr == newest]
        only_noarch = all(p.arch == NOARCH for p in build)
        best = _newest((served_to_arch if only_noarch else built_for_arch).get(source, []))
        if best is not None and evr_cmp(best, newest) >= 0:
            continue
        item = Missing(
            source,
            format_evr(newest),
            format_evr(best) if best is not None else None,
            tuple(sorted({p.name for p in build})),
            noarch_only=only_noarch,
        )
        (noarch_only if only_noarch else rebuild).append(item)
    return MissingReport(rebuild, noarch_only)


def missing_between(from_url: str, to_url: str, arch: Arch, logins: RepoLogins = NO_LOGINS) -> MissingReport:
    return find_missing(repo_packages(from_url, logins=logins), repo_packages(to_url, logins=logins), arch)
