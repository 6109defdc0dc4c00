"""Where a rebuild's SRPM comes from, and what its header says.

- ``path``: a file in the workspace; ``url`` + ``sha256``: downloaded, and the sha256 checked
  before anything else runs (a mismatch is refused); ``package`` + ``repo``: the newest source
  package of that name in the repo's metadata (``repodata/repomd.xml`` → primary), downloaded over
  HTTP and checked against the checksum the metadata gives.
- Headers (name, epoch, version, release, BuildRequires) come from createrepo_c's bindings;
  ExclusiveArch/ExcludeArch (which createrepo_c does not expose) from the header's tag index
  (``publishers/rpmheader.py`` reads the layout), never from text.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..errors import CommandFailed, InvalidInput, Problem
from ..publishers.rpmheader import LEAD_MAGIC, LEAD_SIZE, _header_at

TAG_EXCLUDEARCH = 1059
TAG_EXCLUSIVEARCH = 1061
TYPE_STRING_ARRAY = 8
TYPE_STRING = 6
HTTP_TIMEOUT_S = 120
_REPO = "{http://linux.duke.edu/metadata/repo}"
_COMMON = "{http://linux.duke.edu/metadata/common}"
_RPM = "{http://linux.duke.edu/metadata/rpm}"


@dataclass(frozen=True)
class SrpmHeader:
    name: str
    epoch: str
    version: str
    release: str
    build_requires: tuple[str, ...]
    exclusive_arch: tuple[str, ...]
    exclude_arch: tuple[str, ...]

    @property
    def nevr(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch not in ("", "0", None) else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}"


def read_header(path: Path) -> SrpmHeader:
    import createrepo_c as cr

    try:
        package = cr.package_from_rpm(str(path))
    except Exception as exc:  # createrepo_c raises its own error type with the reason
        raise InvalidInput(Problem(f"{path}: not a source RPM ({exc})")) from exc
    if package.arch != "src" and package.rpm_sourcerpm:
        raise InvalidInput(Problem(f"{path}: a binary RPM ({package.arch}), not a source RPM"))
    exclusive, exclude = _arch_tags(path)
    requires = tuple(sorted({r[0] for r in package.requires if not r[0].startswith("rpmlib(")}))
    return SrpmHeader(
        package.name,
        str(package.epoch or "0"),
        package.version,
        package.release,
        requires,
        exclusive,
        exclude,
    )


def _arch_tags(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    with path.open("rb") as handle:
        if handle.read(4) != LEAD_MAGIC:
            raise InvalidInput(Problem(f"{path}: not an RPM (no RPM lead)"))
        signature_size, _, _ = _header_at(handle, LEAD_SIZE, path)
        _, index, data = _header_at(handle, LEAD_SIZE + (signature_size + 7) // 8 * 8, path)
    found: dict[int, tuple[str, ...]] = {}
    for position in range(0, len(index), 16):
        tag, kind, offset, count = struct.unpack(">iiii", index[position : position + 16])
        if tag in (TAG_EXCLUDEARCH, TAG_EXCLUSIVEARCH) and kind in (TYPE_STRING, TYPE_STRING_ARRAY):
            values = data[offset:].split(b"\0")[:count]
            found[tag] = tuple(v.decode("utf-8", "replace") for v in values)
    return found.get(TAG_EXCLUSIVEARCH, ()), found.get(TAG_EXCLUDEARCH, ())


def arch_refusal(header: SrpmHeader, arch: Arch) -> str | None:
    """Why the SRPM cannot be built for ``arch`` (its ExclusiveArch/ExcludeArch), or None."""
    names = {arch.rpm, arch.value}
    if (
        header.exclusive_arch
        and not names & set(header.exclusive_arch)
        and "noarch" not in header.exclusive_arch
    ):
        return f"{header.name}: ExclusiveArch: {' '.join(header.exclusive_arch)} rules out {arch.rpm}"
    if names & set(header.exclude_arch):
        return f"{header.name}: ExcludeArch: {' '.join(header.exclude_arch)} rules out {arch.rpm}"
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str, into: Path, *, sha256: str | None = None, checksum: tuple[str, str] | None = None
) -> Path:
    """``url`` saved as ``into``; refused (and removed) when its checksum is not the one given."""
    import requests

    into.parent.mkdir(parents=True, exist_ok=True)
    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT_S) as response:
            response.raise_for_status()
            with into.open("wb") as handle:
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)
    except requests.RequestException as exc:
        raise CommandFailed(f"{url}: download failed ({exc})") from exc
    expected = ("sha256", sha256) if sha256 else checksum
    if expected is not None:
        algorithm, value = expected
        got = hashlib.new(algorithm, into.read_bytes()).hexdigest()
        if got != value:
            into.unlink(missing_ok=True)
            raise InvalidInput(
                Problem(f"{url}: {algorithm} mismatch: expected {value}, downloaded {got}; nothing was built")
            )
    return into


@dataclass(frozen=True)
class RepoPackage:
    name: str
    arch: str
    epoch: str
    version: str
    release: str
    href: str
    checksum: tuple[str, str]
    sourcerpm: str
    requires: tuple[str, ...]
    provides: tuple[str, ...]

    @property
    def evr(self) -> tuple[str, str, str]:
        return (self.epoch or "0", self.version, self.release)


def _get(url: str) -> bytes:
    import requests

    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise CommandFailed(f"{url}: cannot read it ({exc})") from exc
    return response.content


def _decompress(name: str, blob: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.decompress(blob)
    if name.endswith(".xz"):
        return lzma.decompress(blob)
    if name.endswith(".zst"):
        import zstandard  # type: ignore[import-not-found]

        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def repo_packages(base_url: str) -> list[RepoPackage]:
    """Every package in a repo's primary metadata (read over HTTP through repomd.xml)."""
    base = base_url.rstrip("/") + "/"
    repomd = ET.fromstring(_get(base + "repodata/repomd.xml"))
    primary = next((d for d in repomd.iter(f"{_REPO}data") if d.get("type") == "primary"), None)
    location = primary.find(f"{_REPO}location") if primary is not None else None
    if location is None:
        raise CommandFailed(f"{base}repodata/repomd.xml: no primary metadata")
    href = location.get("href", "")
    root = ET.fromstring(_decompress(href, _get(base + href)))
    out = []
    for pkg in root.iter(f"{_COMMON}package"):
        version = pkg.find(f"{_COMMON}version")
        checksum = pkg.find(f"{_COMMON}checksum")
        fmt = pkg.find(f"{_COMMON}format")
        assert version is not None and checksum is not None
        out.append(
            RepoPackage(
                name=_text(pkg, f"{_COMMON}name"),
                arch=_text(pkg, f"{_COMMON}arch"),
                epoch=version.get("epoch", "0"),
                version=version.get("ver", ""),
                release=version.get("rel", ""),
                href=_href(pkg),
                checksum=(checksum.get("type", "sha256"), checksum.text or ""),
                sourcerpm=_text(fmt, f"{_RPM}sourcerpm") if fmt is not None else "",
                requires=_entries(fmt, "requires"),
                provides=_entries(fmt, "provides"),
            )
        )
    return out


def _href(pkg: Any) -> str:
    location = pkg.find(f"{_COMMON}location")  # an Element without children is falsy: compare to None
    return location.get("href", "") if location is not None else ""


def _text(node: Any, tag: str) -> str:
    found = node.find(tag)
    return (found.text or "") if found is not None else ""


def _entries(fmt: Any, what: str) -> tuple[str, ...]:
    if fmt is None:
        return ()
    node = fmt.find(f"{_RPM}{what}")
    return tuple(e.get("name", "") for e in node.iter(f"{_RPM}entry")) if node is not None else ()


def resolve_package(name: str, repo_url: str, into: Path) -> Path:
    """The newest source package ``name`` in the repo at ``repo_url``, downloaded and checked."""
    from .versions import newest

    candidates = [p for p in repo_packages(repo_url) if p.name == name and p.arch == "src"]
    if not candidates:
        raise InvalidInput(Problem(f"{repo_url}: has no source package {name}"))
    best = newest(candidates)
    url = repo_url.rstrip("/") + "/" + best.href
    return download(url, into / Path(best.href).name, checksum=best.checksum)


def fetch_source(source: Any, workspace_root: Path, into: Path) -> Path:
    """The SRPM a recipe's ``build.source`` names, on local disk (downloads checked first)."""
    if source.path is not None:
        return workspace_root / str(source.path)  # FileRef: workspace-relative, escapes refused
    if source.url is not None:
        name = str(source.url).rstrip("/").rsplit("/", 1)[-1] or "source.src.rpm"
        return download(str(source.url), into / name, sha256=source.sha256)
    return resolve_package(str(source.package), str(source.repo), into)
