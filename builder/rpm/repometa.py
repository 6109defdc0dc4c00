"""A repo's metadata (``repodata/repomd.xml`` -> primary) read as hostile input, without I/O: fed
chunk by chunk as it arrives (builder/rpm/source.py ``repo_packages`` downloads it), inside the
limits of builder/limits.py, and refused (``RemoteDataError``: exit 4, naming the URL and what was
wrong) on any breach or malformed document.

- ``Decompressor``: gzip, xz, bz2, zstd or plain; decompressed bytes, the ratio and the xz and zstd
  decoders' memory capped.
- ``PrimaryReader``: expat with a handler per element; only the package being read is held, every
  field's length and characters checked (rpm's own character sets), counts capped.
- ``parse_repomd``: where primary is, its sizes and checksums (verified by the caller).

XML: expat with DOCTYPEs, entity declarations and external references refused, as defusedxml does
(its parsers run their handlers through pure-Python ElementTree or SAX layers: 2-3x slower here on a
53 MB primary); repo metadata never has any of them. One format's reader in one module (~600 lines):
split, its element names and limits would be spread over files.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import pyexpat
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import zstandard

from .. import limits
from ..errors import InvalidInput, Problem, RemoteDataError

DEADLINE_VARIABLE = "KILN_REPO_METADATA_DEADLINE_S"  # overrides limits.REPO_METADATA_DEADLINE_S
_COMMON = "http://linux.duke.edu/metadata/common"
_RPM = "http://linux.duke.edu/metadata/rpm"
_REPO = "http://linux.duke.edu/metadata/repo"
# expat names an element "<namespace> <local name>" (namespace_separator=" ").
METADATA, PACKAGE = f"{_COMMON} metadata", f"{_COMMON} package"
NAME, ARCH, VERSION = f"{_COMMON} name", f"{_COMMON} arch", f"{_COMMON} version"
CHECKSUM, LOCATION, FORMAT = f"{_COMMON} checksum", f"{_COMMON} location", f"{_COMMON} format"
SOURCERPM, PROVIDES, REQUIRES = f"{_RPM} sourcerpm", f"{_RPM} provides", f"{_RPM} requires"
ENTRY = f"{_RPM} entry"
REPOMD, REPOMD_DATA = f"{_REPO} repomd", f"{_REPO} data"
REPOMD_LOCATION, REPOMD_CHECKSUM = f"{_REPO} location", f"{_REPO} checksum"
REPOMD_OPEN_CHECKSUM, REPOMD_SIZE, REPOMD_OPEN_SIZE = (
    f"{_REPO} open-checksum",
    f"{_REPO} size",
    f"{_REPO} open-size",
)

# rpm's own character sets (rpmbuild's ALLOWED_CHARS_NAME / _VERREL): anything else in a name,
# version or release is not from rpm, and could not be written into a recipe or a path safely.
RPM_NAME = re.compile(r"[A-Za-z0-9._+%{}-]+")
RPM_VERSION = re.compile(r"[A-Za-z0-9._+%{}~^]+")
RPM_ARCH = re.compile(r"[A-Za-z0-9_]+")
EPOCH = re.compile(r"[0-9]+")
SOURCERPM_NAME = re.compile(r"[A-Za-z0-9._+%{}~^-]+")
# Checksum types hashlib knows, by the names createrepo writes ("sha" is sha1); md5 is not trusted.
CHECKSUM_TYPES = {"sha": "sha1", "sha1": "sha1", "sha224": "sha224", "sha256": "sha256",
                  "sha384": "sha384", "sha512": "sha512"}  # fmt: skip
HEX = re.compile(r"[0-9a-fA-F]+")
HEX_DIGITS = {algorithm: hashlib.new(algorithm).digest_size * 2 for algorithm in set(CHECKSUM_TYPES.values())}
# A scheme ("http:"), an absolute path or an empty first segment: not a path below the repo.
_NOT_A_RELATIVE_PATH = re.compile(r"[A-Za-z][\w+.-]*:|/")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

PIECE_BYTES = 256 << 10  # decompressed bytes handed on at once; below MAX_XML_TOKEN_BYTES (see _TokenRuns)
# Compressed bytes given to the zstd decoder at once. Its decompressobj has no output cap (zlib, lzma
# and bz2 take max_length), and one zstd byte can stand for ~32 KiB (an RLE block: 4 bytes, 128 KiB
# out), so the input is cut small: at most ~16 MiB comes out of one call before the limits see it.
ZSTD_INPUT_BYTES = 512


@dataclass(frozen=True)
class MetadataLimits:
    """The byte and time limits of one repo's metadata read (defaults: builder/limits.py)."""

    repomd_bytes: int = limits.MAX_REPOMD_BYTES
    download_bytes: int = limits.MAX_PRIMARY_DOWNLOAD_BYTES
    xml_bytes: int = limits.MAX_PRIMARY_XML_BYTES
    ratio: int = limits.MAX_DECOMPRESSION_RATIO
    ratio_floor_bytes: int = limits.DECOMPRESSION_RATIO_FLOOR_BYTES
    token_bytes: int = limits.MAX_XML_TOKEN_BYTES
    deadline_s: float = limits.REPO_METADATA_DEADLINE_S
    read_timeout_s: float = limits.HTTP_READ_TIMEOUT_S
    packages: int = limits.MAX_REPO_PACKAGES

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> MetadataLimits:
        """The defaults, with the deadline from ``$KILN_REPO_METADATA_DEADLINE_S`` when it is set."""
        given = environ.get(DEADLINE_VARIABLE, "").strip()
        if not given:
            return cls()
        try:
            seconds = float(given)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 86_400:
            raise InvalidInput(
                Problem(f"${DEADLINE_VARIABLE}: a number of seconds, 0 < s <= 86400 (got {given!r})")
            )
        return cls(deadline_s=seconds, read_timeout_s=min(limits.HTTP_READ_TIMEOUT_S, seconds))


@dataclass(frozen=True)
class RepoPackage:
    name: str
    arch: str
    epoch: str
    version: str
    release: str
    href: str
    checksum: tuple[str, str]  # (hashlib's name for the type, hex digest)
    sourcerpm: str
    requires: tuple[str, ...]
    provides: tuple[str, ...]

    @property
    def evr(self) -> tuple[str, str, str]:
        return (self.epoch or "0", self.version, self.release)


# --- decompression (pure) ---------------------------------------------------------------------------


def _gzip() -> Any:
    return zlib.decompressobj(wbits=31)  # gzip only: one member; the next member gets a new one


def _xz() -> Any:
    return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=limits.MAX_XZ_DECODER_BYTES)


def _zstd() -> Any:
    # One frame: the next frame gets a new one (as gzip members do), so a frame cut short is seen.
    return zstandard.ZstdDecompressor(max_window_size=limits.MAX_ZSTD_WINDOW_BYTES).decompressobj()


_ZLIB_DECOMPRESS = type(zlib.decompressobj())
_ZSTD_DECOMPRESS = type(_zstd())
COMPRESSIONS: dict[str, Callable[[], Any] | None] = {
    ".gz": _gzip,
    ".xz": _xz,
    ".bz2": bz2.BZ2Decompressor,
    ".zst": _zstd,
    ".xml": None,  # plain
}


def _step(engine: Any, data: bytes) -> tuple[bytes, bytes, bool, bool]:
    """One call of a decoder: (its output, the input it left for the next call, whether it holds
    output back, whether it made progress)."""
    if isinstance(engine, _ZSTD_DECOMPRESS):  # no max_length: all it can of a slice (ZSTD_INPUT_BYTES)
        out = engine.decompress(data)
        return out, b"", False, bool(out)
    out = engine.decompress(data, PIECE_BYTES)
    if isinstance(engine, _ZLIB_DECOMPRESS):
        rest = engine.unconsumed_tail
        more = bool(rest) or len(out) == PIECE_BYTES  # zlib may hold output back
        return out, rest, more, bool(out) or len(rest) < len(data)
    return out, b"", not engine.needs_input and not engine.eof, bool(out)


class Decompressor:
    """Compressed chunks in, decompressed pieces (at most PIECE_BYTES each) out, inside the limits:
    decompressed bytes, the ratio to the bytes fed so far, and the size repomd.xml declared.
    Concatenated gzip members, xz or bz2 streams or zstd frames are read one after the other, as their
    tools do."""

    def __init__(self, suffix: str, limit: MetadataLimits, declared_size: int | None = None):
        if suffix not in COMPRESSIONS:
            raise RemoteDataError(
                f"unknown metadata compression {suffix!r} (Kiln reads .gz, .xz, .bz2, .zst, .xml)"
            )
        self._factory = COMPRESSIONS[suffix]
        self._engine = self._factory() if self._factory else None
        self._engine_fed = False  # the current member/stream has had input (so must reach its end)
        self._limit = limit
        self._declared = declared_size
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    def for_href(cls, href: str, limit: MetadataLimits, declared_size: int | None = None) -> Decompressor:
        suffix = "." + href.rsplit(".", 1)[-1].lower() if "." in href.rsplit("/", 1)[-1] else ""
        return cls(suffix, limit, declared_size)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.bytes_in += len(data)
        if self._engine is None:
            for start in range(0, len(data), PIECE_BYTES):
                yield self._counted(data[start : start + PIECE_BYTES])
            return
        # zstd's input in small slices (ZSTD_INPUT_BYTES: its decoder has no output cap); b"" once
        # (finish) all the same.
        step = ZSTD_INPUT_BYTES if self._factory is _zstd else max(len(data), 1)
        try:
            for start in range(0, max(len(data), 1), step):
                yield from self._inflate(data[start : start + step])
        except (zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError, EOFError, ValueError) as exc:
            raise RemoteDataError(f"not valid compressed data ({exc})") from None

    def finish(self) -> Iterator[bytes]:
        if self._engine is not None:
            yield from self.feed(b"")
            if self._engine_fed:
                raise RemoteDataError("compressed data ends early (truncated)")
        if self.bytes_in == 0:
            raise RemoteDataError("empty file")

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        stalled = False
        while True:
            engine = self._engine
            if data:
                self._engine_fed = True
            out, data, more, progress = _step(engine, data)
            for start in range(0, len(out), PIECE_BYTES):  # zstd's may be longer than a piece
                yield self._counted(out[start : start + PIECE_BYTES])
            if more and not progress and not engine.eof:
                if stalled:  # twice in a row: never loop on a decompressor that makes no progress
                    raise RemoteDataError("compressed data makes no progress")
                stalled = True
            else:
                stalled = False
            if engine.eof:  # the next member/stream/frame, if any, starts with what is left
                data = engine.unused_data  # (zlib leaves a copy of it in unconsumed_tail too)
                self._engine, self._engine_fed = self._factory(), False  # type: ignore[misc]
                if not data:
                    return
                continue
            if not more and not data:
                return

    def _counted(self, piece: bytes) -> bytes:
        self.bytes_out += len(piece)
        limit = self._limit
        if self.bytes_out > limit.xml_bytes:
            raise RemoteDataError(f"decompresses to more than {limit.xml_bytes:,} bytes (the limit)")
        if self._declared is not None and self.bytes_out > self._declared:
            raise RemoteDataError(f"decompresses to more than the {self._declared:,} bytes repomd.xml says")
        if (
            self._engine is not None
            and self.bytes_out > limit.ratio_floor_bytes
            and self.bytes_out > limit.ratio * self.bytes_in
        ):
            raise RemoteDataError(
                f"decompresses more than {limit.ratio}x ({self.bytes_in:,} bytes to {self.bytes_out:,} "
                "so far): a decompression bomb"
            )
        return piece


# --- XML (pure) ---------------------------------------------------------------------------------------


def _refuse_doctype(*_: Any) -> None:
    raise RemoteDataError("has a DOCTYPE: refused (no DTDs or entities in repo metadata)")


def _refuse_entity(*_: Any) -> None:
    raise RemoteDataError("declares an XML entity: refused (no DTDs or entities in repo metadata)")


def _refuse_external(*_: Any) -> int:
    raise RemoteDataError("refers to an external entity: refused (no DTDs or entities in repo metadata)")


def defused_parser() -> Any:
    """An expat parser that reads UTF-8 only and refuses DOCTYPEs, entity declarations and external
    references (defusedxml's forbid_dtd, forbid_entities, forbid_external), and interns no names
    (its intern dict would grow with every distinct name a hostile document invents)."""
    parser = pyexpat.ParserCreate("UTF-8", " ", intern=None)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.UnparsedEntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = _refuse_external
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    return parser


def _parse_step(parser: Any, data: bytes, final: bool) -> None:
    try:
        parser.Parse(data, final)
    except pyexpat.ExpatError as exc:
        raise RemoteDataError(f"not well-formed XML ({exc})") from None


class _TokenRuns:
    """The longest run of bytes between two angle brackets (one tag, attribute value or text), which
    expat holds whole in memory, checked across chunks. Pieces are at most PIECE_BYTES, below the
    limit, so a run wholly inside one piece cannot break it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.run = 0

    def check(self, piece: bytes) -> None:
        first = min((i for i in (piece.find(b"<"), piece.find(b">")) if i >= 0), default=-1)
        if first < 0:
            self.run += len(piece)
        else:
            if self.run + first > self.limit:
                self._refuse()
            self.run = len(piece) - 1 - max(piece.rfind(b"<"), piece.rfind(b">"))
        if self.run > self.limit:
            self._refuse()

    def _refuse(self) -> None:
        raise RemoteDataError(f"has an XML token (tag, value or text) over {self.limit:,} bytes")


Where = Callable[[], str]  # names the place of a refusal; called only for one


def _shown(value: str) -> str:
    return repr(value[:60] + ("..." if len(value) > 60 else ""))


def _field(value: str | None, what: str, pattern: re.Pattern[str], max_chars: int, where: Where) -> str:
    """``value`` when it is there, short enough and in rpm's characters; ``where()`` names the place
    (computed only for a refusal)."""
    if value and len(value) <= max_chars and pattern.fullmatch(value):
        return value
    if not value:
        raise RemoteDataError(f"{where()}: no {what}")
    if len(value) > max_chars:
        raise RemoteDataError(f"{where()}: {what} {_shown(value)} is longer than {max_chars:,} characters")
    raise RemoteDataError(f"{where()}: {what} {_shown(value)} has characters rpm does not allow")


def checked_href(href: str | None, where: Where) -> str:
    """A location relative to the repo: no scheme, no absolute path, no ``..``, no control characters."""
    if not href:
        raise RemoteDataError(f"{where()}: no location href")
    if len(href) > limits.MAX_HREF_CHARS:
        raise RemoteDataError(
            f"{where()}: href {_shown(href)} is longer than {limits.MAX_HREF_CHARS:,} characters"
        )
    if _NOT_A_RELATIVE_PATH.match(href) or _CONTROL.search(href) or "\\" in href:
        raise RemoteDataError(f"{where()}: href {_shown(href)} is not a path inside the repo")
    if ".." in href and ".." in href.split("/"):
        raise RemoteDataError(f"{where()}: href {_shown(href)} leaves the repo (..)")
    return href


def checked_checksum(kind: str | None, value: str, where: Where) -> tuple[str, str]:
    algorithm = CHECKSUM_TYPES.get(kind or "")
    if algorithm is None:
        raise RemoteDataError(
            f"{where()}: checksum type {_shown(kind or '')} is not one of {sorted(CHECKSUM_TYPES)}"
        )
    if len(value) != HEX_DIGITS[algorithm] or not HEX.fullmatch(value):
        raise RemoteDataError(f"{where()}: checksum {_shown(value)} is not a {algorithm} hex digest")
    return algorithm, value.lower()


@dataclass
class _Draft:
    """One <package> as it is read: only its fields Kiln uses."""

    index: int
    name: str | None = None
    arch: str | None = None
    version: dict[str, str] | None = None
    checksum_type: str | None = None
    checksum: str | None = None
    href: str | None = None
    sourcerpm: str | None = None
    provides: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"package #{self.index}" + (f" {_shown(self.name)}" if self.name else "")

    def build(self) -> RepoPackage:
        where, version = self.where, self.version
        name = _field(self.name, "<name>", RPM_NAME, limits.MAX_PACKAGE_NAME_CHARS, where)
        arch = _field(self.arch, "<arch>", RPM_ARCH, limits.MAX_PACKAGE_ARCH_CHARS, where)
        if version is None:
            raise RemoteDataError(f"{where()}: no <version>")
        epoch = _field(version.get("epoch") or "0", "epoch", EPOCH, limits.MAX_EPOCH_DIGITS, where)
        ver = _field(version.get("ver"), "version", RPM_VERSION, limits.MAX_VERSION_CHARS, where)
        release = _field(version.get("rel"), "release", RPM_VERSION, limits.MAX_RELEASE_CHARS, where)
        if self.checksum is None:
            raise RemoteDataError(f"{where()}: no <checksum>")
        checksum = checked_checksum(self.checksum_type, self.checksum, where)
        sourcerpm = self.sourcerpm or ""
        if sourcerpm:
            _field(sourcerpm, "<rpm:sourcerpm>", SOURCERPM_NAME, limits.MAX_SOURCERPM_CHARS, where)
        return RepoPackage(
            name, arch, epoch, ver, release, checked_href(self.href, where), checksum, sourcerpm,
            tuple(self.requires), tuple(self.provides),
        )  # fmt: skip


class PrimaryReader:
    """primary.xml, fed in pieces, to a list of RepoPackage; holds only the package being read.

    Refuses (RemoteDataError): malformed XML, a DOCTYPE or entity, a root that is not primary's
    ``<metadata>``, a package without a field Kiln needs or with one too long or outside rpm's
    characters, too many packages or dependencies, deep nesting, huge tokens.

    The handlers run once per element (~45 per package), so they are written for speed: the
    dependency entries (depth 5) are dealt with first, and text is listened to only inside the fields
    Kiln reads."""

    def __init__(self, limit: MetadataLimits | None = None):
        self._limit = limit or MetadataLimits()
        self._parser = defused_parser()
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._tokens = _TokenRuns(self._limit.token_bytes)
        self.packages: list[RepoPackage] = []
        self._depth = 0
        self._root: str | None = None
        self._dependencies = 0
        # Each required name once: thousands of packages require libc.so.6 and friends, and the package
        # list is what stays in memory. (Provides are mostly a package's own: not worth the lookups.)
        self._seen: dict[str, str] = {}
        self._draft: _Draft | None = None
        self._in_format = False
        self._entries: list[str] | None = None  # the provides or requires being read
        self._collecting: str | None = None  # the <package> field whose text is being read
        self._collecting_depth = 0
        self._parts: list[str] = []
        self._chars = 0

    def feed(self, piece: bytes) -> None:
        self._tokens.check(piece)
        _parse_step(self._parser, piece, False)

    def close(self) -> list[RepoPackage]:
        _parse_step(self._parser, b"", True)
        if self._root != METADATA:
            raise RemoteDataError("not primary metadata (no <metadata> root)")
        return self.packages

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        depth = self._depth = self._depth + 1
        if depth > 4:
            entries = self._entries
            if depth == 5 and entries is not None and name == ENTRY:
                dependency = attrs.get("name", "")
                if len(dependency) > limits.MAX_DEPENDENCY_CHARS or (
                    len(entries) >= limits.MAX_DEPENDENCIES_PER_PACKAGE
                ):
                    self._refuse_entry(dependency)
                entries.append(dependency)
            elif depth > limits.MAX_XML_DEPTH:
                raise RemoteDataError(f"XML nested deeper than {limits.MAX_XML_DEPTH}")
        elif depth == 1:
            if name != METADATA:
                raise RemoteDataError(f"not primary metadata (root element {_shown(name)})")
            self._root = name
        elif depth == 2:
            if name == PACKAGE:
                self._draft = _Draft(len(self.packages) + 1)
        elif self._draft is not None:
            if depth == 3:
                self._package_field(self._draft, name, attrs)
            elif self._in_format:
                if name == SOURCERPM:
                    self._collect("sourcerpm")
                elif name == PROVIDES:
                    self._entries = self._draft.provides
                elif name == REQUIRES:
                    self._entries = self._draft.requires

    def _package_field(self, draft: _Draft, name: str, attrs: dict[str, str]) -> None:
        if name == NAME:
            self._collect("name")
        elif name == ARCH:
            self._collect("arch")
        elif name == CHECKSUM:
            draft.checksum_type = attrs.get("type")
            self._collect("checksum")
        elif name == VERSION:
            self._once(draft.version, "<version>")
            draft.version = attrs
        elif name == LOCATION:
            self._once(draft.href, "<location>")
            draft.href = attrs.get("href", "")
        elif name == FORMAT:
            self._in_format = True

    def _once(self, value: object, what: str) -> None:
        if value is not None:
            raise RemoteDataError(f"package #{len(self.packages) + 1}: two {what} elements")

    def _collect(self, field_name: str) -> None:
        self._once(getattr(self._draft, field_name), f"<{field_name}>")
        self._collecting, self._parts, self._chars = field_name, [], 0
        self._collecting_depth = self._depth
        self._parser.CharacterDataHandler = self._text

    def _text(self, data: str) -> None:
        self._chars += len(data)
        if self._chars > limits.MAX_SOURCERPM_CHARS:  # the longest field collected as text
            raise RemoteDataError(
                f"package #{len(self.packages) + 1}: <{self._collecting}> is longer than "
                f"{limits.MAX_SOURCERPM_CHARS:,} characters"
            )
        self._parts.append(data)

    def _refuse_entry(self, dependency: str) -> None:
        where = f"package #{len(self.packages) + 1}"
        if len(dependency) > limits.MAX_DEPENDENCY_CHARS:
            raise RemoteDataError(
                f"{where}: a dependency {_shown(dependency)} is longer than "
                f"{limits.MAX_DEPENDENCY_CHARS:,} characters"
            )
        raise RemoteDataError(
            f"{where}: more than {limits.MAX_DEPENDENCIES_PER_PACKAGE:,} provides or requires"
        )

    def _end(self, name: str) -> None:
        depth = self._depth
        self._depth = depth - 1
        if depth > 4:
            return
        if self._collecting is not None and depth == self._collecting_depth:
            setattr(self._draft, self._collecting, "".join(self._parts).strip())
            self._collecting = None
            self._parser.CharacterDataHandler = None
        if depth == 2 and self._draft is not None:
            self._finish_package(self._draft)
        elif depth == 3 and name == FORMAT:
            self._in_format = False
        elif depth == 4:
            self._entries = None

    def _finish_package(self, draft: _Draft) -> None:
        self._draft, self._in_format = None, False
        if len(self.packages) >= self._limit.packages:
            raise RemoteDataError(f"more than {self._limit.packages:,} packages")
        self._dependencies += len(draft.provides) + len(draft.requires)
        if self._dependencies > limits.MAX_DEPENDENCIES_PER_REPO:
            raise RemoteDataError(
                f"more than {limits.MAX_DEPENDENCIES_PER_REPO:,} provides and requires in all"
            )
        seen = self._seen
        draft.requires = [seen.setdefault(r, r) for r in draft.requires]
        self.packages.append(draft.build())


@dataclass(frozen=True)
class PrimaryRef:
    """What repomd.xml says about the primary metadata."""

    href: str
    checksum: tuple[str, str] | None  # of the file as served
    open_checksum: tuple[str, str] | None  # of the decompressed XML
    size: int | None
    open_size: int | None


def parse_repomd(data: bytes) -> PrimaryRef:
    """The primary metadata's location, checksums and sizes from repomd.xml (already size-capped)."""
    found: dict[str, Any] = {}
    stack: list[str] = []
    primary = [False]

    def start(name: str, attrs: dict[str, str]) -> None:
        stack.append(name)
        if len(stack) > limits.MAX_XML_DEPTH:
            raise RemoteDataError(f"XML nested deeper than {limits.MAX_XML_DEPTH}")
        if len(stack) == 1 and name != REPOMD:
            raise RemoteDataError(f"not repomd.xml (root element {_shown(name)})")
        if len(stack) == 2 and name == REPOMD_DATA and attrs.get("type") == "primary":
            if primary[0] or "ended" in found:
                raise RemoteDataError("two primary entries")
            primary[0] = True
        elif len(stack) == 3 and primary[0]:
            found[name] = (attrs, [])

    def text(data: str) -> None:
        if len(stack) == 3 and primary[0] and stack[-1] in found:
            found[stack[-1]][1].append(data)

    def end(name: str) -> None:
        stack.pop()
        if len(stack) == 1 and name == REPOMD_DATA and primary[0]:
            primary[0] = False
            found["ended"] = True

    parser = defused_parser()
    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    _parse_step(parser, data, True)
    if "ended" not in found or REPOMD_LOCATION not in found:
        raise RemoteDataError("repomd.xml lists no primary metadata")
    where = "repomd.xml primary"
    href = checked_href(found[REPOMD_LOCATION][0].get("href"), lambda: where)

    def checksum(tag: str) -> tuple[str, str] | None:
        if tag not in found:
            return None
        attrs, parts = found[tag]
        return checked_checksum(attrs.get("type"), "".join(parts), lambda: f"{where} <{tag.split(' ')[1]}>")

    def size(tag: str) -> int | None:
        if tag not in found:
            return None
        value = "".join(found[tag][1]).strip()
        if not value.isdigit() or len(value) > 15:
            raise RemoteDataError(f"{where} <{tag.split(' ')[1]}>: {_shown(value)} is not a size in bytes")
        return int(value)

    return PrimaryRef(
        href,
        checksum(REPOMD_CHECKSUM),
        checksum(REPOMD_OPEN_CHECKSUM),
        size(REPOMD_SIZE),
        size(REPOMD_OPEN_SIZE),
    )
