"""Publish IPA ramdisks to an HTTP directory laid out as Bifrost expects, replaced atomically.

``<root>/<directory>/`` holds ``ipa.kernel``, ``ipa.initramfs`` (and ``ipa.iso`` when one was built),
each with ``<file>.sha256`` in sha256sum's format naming the Bifrost file (``HEX  ipa.kernel``).
Bifrost's ``ipa_kernel_upstream_url``/``ipa_ramdisk_upstream_url`` (and their checksum URLs) point
there.

- ``<root>/<directory>`` is a symlink to a sibling *version* directory, ``.<directory>.<key>``, whose
  key is a digest of the files' names and sha256s: the same content is the same version.
- A publish copies every file (hashing while copying: bytes that no longer match the build's manifest
  are refused) and writes its ``.sha256`` into a fresh ``.<directory>.tmp-<id>``, renames that to
  its version name once complete, then switches the symlink with one ``rename(2)``. A reader (an
  HTTP server resolving the link per request) finds the old set or the new one, never a mix; a
  failure at any step before the switch leaves the old set served.
- The version the link pointed at before is kept, for clients mid-download; older ones are removed
  (2 versions in all). Publishing the version already served is a no-op.
- Publishes into one directory are serialized by a lock file (``.<directory>.lock``).
- Nothing is followed out of ``root``: entries are opened relative to the root's descriptor with
  ``O_NOFOLLOW``; a ``<directory>`` symlink Kiln did not make (one not pointing at a version beside
  it) is refused, not replaced; a real directory there (laid out by hand before Kiln) is moved aside
  as a version once and then removed like any older version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.route import NO_FACTS, Candidate, Facts, Found, Publication, Publishers, Routed, Step, TargetLike
from ..errors import CommandFailed, EnvironmentProblem, InvalidInput, Problem
from ..manifest import BuildManifest
from ..outdir import prepare_root
from .glance import GlanceRoute, default_image_name
from .publication_record import PublicationRecord, fetch_record

# Bifrost's file names, by the manifest's artifact type.
BIFROST_NAMES = {"kernel": "ipa.kernel", "ramdisk": "ipa.initramfs", "iso": "ipa.iso"}
RECORD_NAME = "kiln-published.json"  # the publication record (publishers/publication_record.py)
DIRECTORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # one name, never '.' or '..'

CHUNK = 4 << 20


@dataclass(frozen=True)
class HttpFile:
    name: str  # the Bifrost name: ipa.kernel
    source: Path
    sha256: str  # what the build's manifest says the bytes are
    artifact: str = ""  # the manifest's artifact name, for the ledger


@dataclass(frozen=True)
class HttpDirResult:
    directory: Path  # <root>/<directory>, the symlink
    version: str  # the version directory it points at
    url: str  # the directory's URL, with a trailing '/'
    files: tuple[str, ...]  # Bifrost names, checksums included
    noop: bool
    removed: tuple[str, ...]  # older versions deleted now


def bifrost_files(manifest: BuildManifest) -> list[HttpFile]:
    """The manifest's kernel, initramfs and ISO under their Bifrost names (pure)."""
    out = []
    for artifact in manifest.artifacts:
        name = BIFROST_NAMES.get(artifact.type)
        if name is not None:
            out.append(HttpFile(name, manifest.path_of(artifact), artifact.sha256, artifact.name))
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise InvalidInput(Problem(f"{manifest.target}: two artifacts for one Bifrost file name ({names})"))
    return out


def check_directory(directory: str) -> str:
    """``directory`` if it is one plain path component Kiln may create under the root."""
    if not DIRECTORY.match(directory):
        raise InvalidInput(
            Problem(
                f"HTTP directory {directory!r}: one name of letters, digits, '.', '_' and '-' "
                "(no '/', no leading '.'), at most 128 characters"
            )
        )
    return directory


def version_key(files: Sequence[HttpFile], record: PublicationRecord | None = None) -> str:
    """The version's name part: a digest over the files' names and sha256s (and the target and input
    digest the record names: the same bytes built from other inputs are published as such)."""
    listing = "".join(f"{f.name} {f.sha256}\n" for f in sorted(files, key=lambda f: f.name))
    if record is not None:
        listing += f"{RECORD_NAME} {record.target} {record.digest}\n"
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


class HttpDirPublisher:
    def __init__(self, root: Path, base_url: str):
        self.root = root
        self.base_url = base_url.rstrip("/")

    def url_of(self, directory: str, name: str = "") -> str:
        return f"{self.base_url}/{directory}/{name}"

    def publish(
        self,
        directory: str,
        files: Sequence[HttpFile],
        on_step: Callable[[str], None] = lambda _: None,
        record: PublicationRecord | None = None,
    ) -> HttpDirResult:
        """``files`` (and ``record``, as ``kiln-published.json``: what :meth:`published` reads) as
        ``directory``'s new version, switched in at once."""
        check_directory(directory)
        if not files:
            raise InvalidInput(Problem(f"HTTP directory {directory}: nothing to publish"))
        root = prepare_root(self.root, what="HTTP directory root")
        version = f".{directory}.{version_key(files, record)}"
        served = tuple(n for f in files for n in (f.name, f"{f.name}.sha256"))
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with _locked(root_fd, f".{directory}.lock"):
                current, legacy = _current(root_fd, directory, root)
                if current == version:
                    return HttpDirResult(root / directory, version, self.url_of(directory), served, True, ())
                _clean_leftovers(root_fd, directory)
                if _entry_kind(root_fd, version) != "dir":
                    on_step(f"http: writing {root / version}")
                    self._write_version(root_fd, root, version, files, record)
                previous = current
                if legacy:  # a directory laid out by hand: kept one round as the previous version
                    previous = f".{directory}.legacy-{uuid.uuid4().hex[:8]}"
                    os.rename(directory, previous, src_dir_fd=root_fd, dst_dir_fd=root_fd)
                _switch(root_fd, directory, version)
                removed = _prune(root_fd, directory, {version, *([previous] if previous else [])})
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise CommandFailed(f"publishing {root / directory}{where}: {exc.strerror or exc}") from exc
        finally:
            os.close(root_fd)
        return HttpDirResult(root / directory, version, self.url_of(directory), served, False, removed)

    def _write_version(
        self,
        root_fd: int,
        root: Path,
        version: str,
        files: Sequence[HttpFile],
        record: PublicationRecord | None = None,
    ) -> None:
        """Every file and its checksum (and the record) into a temporary directory, renamed to
        ``version`` once complete."""
        tmp = f"{version.rsplit('.', 1)[0]}.tmp-{uuid.uuid4().hex[:12]}"
        os.mkdir(tmp, 0o755, dir_fd=root_fd)
        try:
            tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
            try:
                for item in files:
                    digest = _copy(item.source, tmp_fd, item.name)
                    if digest != item.sha256:
                        raise CommandFailed(
                            f"{item.source}: sha256 {digest}, the build's manifest says {item.sha256}: "
                            "the artifact changed after it was built; nothing published"
                        )
                    _write(tmp_fd, f"{item.name}.sha256", f"{digest}  {item.name}\n".encode())
                if record is not None:
                    _write(tmp_fd, RECORD_NAME, record.to_bytes())
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            os.rename(tmp, version, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except BaseException:
            _remove(root_fd, tmp)
            raise

    def published(self, directory: str) -> tuple[str, PublicationRecord | None]:
        """(URL, the publication record served in ``directory``, None when there is none)."""
        url = self.url_of(check_directory(directory), RECORD_NAME)
        return url, fetch_record(url)


# --- helpers: every path below is one name relative to the root's descriptor ------------------------


@contextlib.contextmanager
def _locked(root_fd: int, name: str) -> Iterator[None]:
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=root_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entry_kind(root_fd: int, name: str) -> str | None:
    try:
        mode = os.lstat(name, dir_fd=root_fd).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "other"


def _is_version(directory: str, name: str) -> bool:
    return (
        re.fullmatch(rf"\.{re.escape(directory)}\.(?:[0-9a-f]{{16}}|legacy-[0-9a-f]{{8}})", name) is not None
    )


def _current(root_fd: int, directory: str, root: Path) -> tuple[str | None, bool]:
    """(the version ``<directory>`` points at, whether it is a real directory to move aside)."""
    kind = _entry_kind(root_fd, directory)
    if kind is None:
        return None, False
    if kind == "dir":
        return None, True
    if kind == "link":
        target = os.readlink(directory, dir_fd=root_fd)
        if _is_version(directory, target) and _entry_kind(root_fd, target) == "dir":
            return target, False
        raise EnvironmentProblem(
            f"{root / directory}: a symlink to {target!r}, which Kiln did not make: not replaced "
            "(remove it, or publish to another directory)"
        )
    raise EnvironmentProblem(f"{root / directory}: exists and is not a directory: not replaced")


def _copy(source: Path, dir_fd: int, name: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _write(dir_fd: int, name: str, content: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _switch(root_fd: int, directory: str, version: str) -> None:
    """The one atomic step readers see: a new symlink renamed over ``<directory>``."""
    link = f".{directory}.link-{uuid.uuid4().hex[:12]}"
    os.symlink(version, link, dir_fd=root_fd)
    try:
        os.replace(link, directory, src_dir_fd=root_fd, dst_dir_fd=root_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(link, dir_fd=root_fd)
        raise
    os.fsync(root_fd)


def _remove(root_fd: int, name: str) -> None:
    """Remove one entry below the root: a directory's tree (never through a symlink), or a link."""
    kind = _entry_kind(root_fd, name)
    if kind == "dir":
        shutil.rmtree(name, dir_fd=root_fd, ignore_errors=True)
    elif kind is not None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=root_fd)


def _clean_leftovers(root_fd: int, directory: str) -> None:
    """Temporary directories and links of a publish that died (the lock is held: none is live)."""
    pattern = re.compile(rf"\.{re.escape(directory)}\.(?:tmp|link)-[0-9a-f]{{12}}")
    for name in os.listdir(root_fd):
        if pattern.fullmatch(name):
            _remove(root_fd, name)


def _prune(root_fd: int, directory: str, kept: set[str]) -> tuple[str, ...]:
    """Remove every version but the served one and the one before it."""
    doomed = sorted(n for n in os.listdir(root_fd) if _is_version(directory, n) and n not in kept)
    for name in doomed:
        try:
            _remove(root_fd, name)
        except OSError as exc:  # a reader's open files do not stop this; anything else is reported
            if exc.errno != errno.ENOENT:
                raise
    return tuple(doomed)


# --- the route ------------------------------------------------------------------------------------


class IpaRoute(GlanceRoute):
    """IPA ramdisks: Glance (kernel ``aki``, ramdisk ``ari``, ISO) and the Bifrost HTTP directory."""

    name = "ipa"
    destination = "Glance and the Bifrost directory"

    def publish(self, items: list[Routed], publishers: Publishers, on_step: Step) -> list[Publication]:
        out = super().publish(items, publishers, on_step)
        for item in items:
            manifest, http = item.manifest, getattr(item.settings, "http", None)
            if http is None:
                continue
            files = bifrost_files(manifest)
            directory = http.directory or default_http_directory(manifest)
            publisher = publishers.http_dir()
            on_step(f"http: {manifest.target} -> {publisher.url_of(directory)}")
            record = PublicationRecord.now(manifest.target, manifest.digest, [f.name for f in files])
            result = publisher.publish(directory, files, on_step, record)
            out += [
                Publication(
                    manifest.target, f.artifact, "http", publisher.url_of(directory, f.name), result.noop
                )
                for f in files
            ]
        return out

    def rename_for_candidate(self, identity: Any, data: dict[str, Any], candidate: Candidate) -> None:
        super().rename_for_candidate(identity, data, candidate)
        if data.get("http") is not None:
            directory = data["http"].get("directory") or default_http_directory(identity)
            data["http"]["directory"] = directory + candidate.image_suffix

    def published_at(
        self,
        target: TargetLike,
        publishers: Publishers,
        candidate: Candidate | None = None,
        facts: Facts = NO_FACTS,
    ) -> Found | None:
        """Found only where each destination the target publishes to holds all of it: in Glance every
        boot image of the build (:meth:`GlanceRoute.boot_images_at`), in the Bifrost directory the
        publication record naming the target's digest (written with the files, in one switch)."""
        settings = self.settings_for(target, target.publish, candidate)
        found: list[Found] = []
        if settings.glance is not None:
            in_glance = self.boot_images_at(target, settings, publishers)
            if in_glance is None:
                return None
            found.append(in_glance)
        http = getattr(settings, "http", None)
        if http is not None:
            url, record = publishers.http_dir().published(http.directory or default_http_directory(target))
            if record is None or not record.names(target.id, target.digest):
                return None
            found.append(Found(url, record.published_at))
        if not found:
            return None
        times = [f.at for f in found if f.at is not None]
        return Found("; ".join(f.where for f in found), max(times) if times else None)


def default_http_directory(identity: Any) -> str:
    """``publish.http.directory`` by omission: the default Glance name, one word (``ipa-bookworm-x86_64``),
    so the targets of one recipe (arches, releases, variants) never share a directory."""
    return default_image_name(identity).replace(" ", "-")


IPA = IpaRoute()
