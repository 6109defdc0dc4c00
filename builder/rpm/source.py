"""Where a rebuild's SRPM comes from, and what its header says.

- ``path``: a file in the workspace; ``url`` + ``sha256``: downloaded, and the sha256 checked
  before anything else runs (a mismatch is refused); ``package`` + ``repo``: the newest source
  package of that name in the repo's metadata (``repodata/repomd.xml`` → primary, read inside limits
  by ``repometa.py``), downloaded over HTTP and checked against the checksum the metadata gives.
- HTTP, for every download and for repo metadata: builder/host/http.py's ``http_body`` (bytes capped,
  a deadline for the whole download, redirects bounded), hashed as it arrives. ``repo_packages``
  streams the primary metadata through repometa.py's pure reader.
- Logins: a URL's own userinfo, else the one site.yaml lends it (``RepoLogins``,
  builder/rpm/credentials.py); the URL is named everywhere without its userinfo.
- Headers (name, epoch, version, release, BuildRequires) come from createrepo_c's bindings;
  ExclusiveArch/ExcludeArch (which createrepo_c does not expose) from the header's tag index
  (``publishers/rpmheader.py`` reads the layout), never from text.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..errors import InvalidInput, Problem
from ..host.http import Auth, Deadline, http_body, read_all
from ..limits import HTTP_READ_TIMEOUT_S, MAX_PACKAGE_DOWNLOAD_BYTES, PACKAGE_DOWNLOAD_DEADLINE_S
from .credentials import NO_LOGINS, RepoLogins, without_userinfo
from .header import LEAD_MAGIC, LEAD_SIZE, header_at
from .repometa import (
    DEADLINE_VARIABLE,
    Decompressor,
    MetadataLimits,
    PrimaryReader,
    PrimaryRef,
    RemoteDataError,
    RepoPackage,
    parse_repomd,
)
from .versions import newest

__all__ = [  # the repo metadata reader lives in repometa.py, HTTP in host/http.py; others import these here
    "Deadline",
    "RemoteDataError",
    "RepoNotFound",
    "RepoPackage",
    "SrpmHeader",
    "arch_refusal",
    "download",
    "fetch_source",
    "http_body",
    "read_all",
    "read_header",
    "repo_packages",
    "resolve_package",
    "sha256_of",
]

TAG_EXCLUDEARCH = 1059
TAG_EXCLUSIVEARCH = 1061
TYPE_STRING_ARRAY = 8
TYPE_STRING = 6


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
    import createrepo_c as cr  # on first use, not at start-up: a heavy import

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
        signature_size, _, _ = header_at(handle, LEAD_SIZE, path)
        _, index, data = header_at(handle, LEAD_SIZE + (signature_size + 7) // 8 * 8, path)
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
    url: str,
    into: Path,
    *,
    sha256: str | None = None,
    checksum: tuple[str, str] | None = None,
    max_bytes: int = MAX_PACKAGE_DOWNLOAD_BYTES,
    deadline_s: float = PACKAGE_DOWNLOAD_DEADLINE_S,
    logins: RepoLogins = NO_LOGINS,
) -> Path:
    """``url`` saved as ``into``, hashed as it arrives; refused (and removed) over ``max_bytes``, past
    the deadline, on an HTTP error (exit 4), or when its checksum is not the one given (exit 1)."""
    url, auth = logins.for_url(url)  # named without its userinfo from here on
    expected = ("sha256", sha256) if sha256 else checksum
    digest = hashlib.new(expected[0]) if expected else None
    into.parent.mkdir(parents=True, exist_ok=True)
    deadline = Deadline.start(deadline_s)
    try:
        with (
            http_body(
                url, max_bytes=max_bytes, deadline=deadline, read_timeout_s=HTTP_READ_TIMEOUT_S, auth=auth
            ) as chunks,
            into.open("wb") as handle,
        ):
            for chunk in chunks:
                handle.write(chunk)
                if digest is not None:
                    digest.update(chunk)
    except BaseException:
        into.unlink(missing_ok=True)  # nothing half-downloaded is left to be mistaken for the file
        raise
    if expected is not None and digest is not None:
        algorithm, value = expected
        got = digest.hexdigest()
        if got != value.lower():
            into.unlink(missing_ok=True)
            raise InvalidInput(
                Problem(f"{url}: {algorithm} mismatch: expected {value}, downloaded {got}; nothing was built")
            )
    return into


class RepoNotFound(RemoteDataError):
    """The repo's ``repodata/repomd.xml`` answered HTTP 404: there is no repo there (yet). Anything
    else wrong with a repo is a plain RemoteDataError."""


def repo_packages(
    base_url: str, *, limit: MetadataLimits | None = None, logins: RepoLogins = NO_LOGINS
) -> list[RepoPackage]:
    """Every package in a repo's primary metadata, read over HTTP through repomd.xml, inside the limits
    (``limit``: builder/limits.py's, the deadline from the environment); RepoNotFound when it has no
    repomd.xml (HTTP 404)."""
    limit = limit or MetadataLimits.from_environment(os.environ)
    base = base_url.rstrip("/") + "/"
    # One deadline for the repo: repomd.xml and primary.
    deadline = Deadline.start(limit.deadline_s, f"${DEADLINE_VARIABLE} changes it for repo metadata")
    repomd_url, auth = logins.for_url(base + "repodata/repomd.xml")
    try:
        data = read_all(
            repomd_url, max_bytes=limit.repomd_bytes, deadline=deadline,
            read_timeout_s=limit.read_timeout_s, auth=auth,
        )  # fmt: skip
    except RemoteDataError as exc:
        if exc.http_status == HTTPStatus.NOT_FOUND:
            raise RepoNotFound(exc.what, exc.url, http_status=exc.http_status) from None
        raise
    try:
        ref = parse_repomd(data)
    except RemoteDataError as exc:
        raise exc.at(repomd_url) from None
    primary_url, auth = logins.for_url(base + ref.href)
    max_bytes = min(limit.download_bytes, ref.size) if ref.size is not None else limit.download_bytes
    try:
        return read_primary(primary_url, ref, limit, deadline, max_bytes, auth)
    except RemoteDataError as exc:
        raise exc.at(primary_url) from None


def read_primary(
    url: str, ref: PrimaryRef, limit: MetadataLimits, deadline: Deadline, max_bytes: int,
    auth: Auth | None = None,
) -> list[RepoPackage]:  # fmt: skip
    """Download, decompress and parse the primary metadata at once, chunk by chunk; its checksums
    (of the file and of the XML) checked against repomd.xml's at the end."""
    decompressor = Decompressor.for_href(ref.href, limit, ref.open_size)
    reader = PrimaryReader(limit)
    served = hashlib.new(ref.checksum[0]) if ref.checksum else None
    opened = hashlib.new(ref.open_checksum[0]) if ref.open_checksum else None

    def consume(pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            if opened is not None:
                opened.update(piece)
            reader.feed(piece)

    with http_body(
        url, max_bytes=max_bytes, deadline=deadline, read_timeout_s=limit.read_timeout_s, auth=auth
    ) as chunks:
        for chunk in chunks:
            if served is not None:
                served.update(chunk)
            consume(decompressor.feed(chunk))
    consume(decompressor.finish())
    packages = reader.close()
    for what, expected, digest in (
        ("file", ref.checksum, served),
        ("decompressed XML", ref.open_checksum, opened),
    ):
        if expected is not None and digest is not None and digest.hexdigest() != expected[1]:
            raise RemoteDataError(
                f"{expected[0]} of the {what} is {digest.hexdigest()}, repomd.xml says {expected[1]}"
            )
    return packages


def resolve_package(name: str, repo_url: str, into: Path, logins: RepoLogins = NO_LOGINS) -> Path:
    """The newest source package ``name`` in the repo at ``repo_url``, downloaded and checked."""

    packages = repo_packages(repo_url, logins=logins)
    candidates = [p for p in packages if p.name == name and p.arch == "src"]
    if not candidates:
        raise InvalidInput(Problem(f"{without_userinfo(repo_url)}: has no source package {name}"))
    best = newest(candidates)
    url = repo_url.rstrip("/") + "/" + best.href
    return download(url, into / Path(best.href).name, checksum=best.checksum, logins=logins)


def fetch_source(source: Any, workspace_root: Path, into: Path, logins: RepoLogins = NO_LOGINS) -> Path:
    """The SRPM a recipe's ``build.source`` names, on local disk (downloads checked first; a login
    from ``logins``: site.yaml's)."""
    if source.path is not None:
        return workspace_root / str(source.path)  # FileRef: workspace-relative, escapes refused
    if source.url is not None:
        name = str(source.url).rstrip("/").rsplit("/", 1)[-1] or "source.src.rpm"
        return download(str(source.url), into / name, sha256=source.sha256, logins=logins)
    return resolve_package(str(source.package), str(source.repo), into, logins)
