"""Yum/dnf repository metadata that grows by a package without being rewritten.

``createrepo_c --update`` re-reads, re-writes and re-compresses ``primary``, ``filelists`` and
``other`` for every package in the repo, so adding one package to a large repo costs about as much as
indexing it from scratch. Kiln instead stores each of the three files as a series of gzip members
(RFC 1952 §2.2: a gzip file is one or more members, read as one stream -- by zlib's ``gzread``, which
librepo, libsolv and createrepo_c use, and by Python's ``gzip``)::

    [header: <?xml ...?><metadata ... packages="N">] [body member]... [footer: </metadata>]

Adding packages writes a new header member (the count changed), copies the old body members byte for
byte, appends one member with the new ``<package>`` entries, and writes the footer. Nothing already
indexed is parsed or compressed again. Only the ``open-checksum`` in ``repomd.xml`` (the sha256 of the
uncompressed XML) needs the old body decompressed, which zlib does an order of magnitude faster than it
compresses.

An index, ``kiln-index.json`` beside each ``repodata/``, records the member layout, the checksums the
layout belongs to and the indexed package paths. It is trusted only when the files still have those
checksums; otherwise (or for anything but pure additions) the publisher falls back to createrepo_c
and :func:`repack` brings its output into this layout.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CommandFailed, InvalidInput, Problem
from ..host.run import Runner

KINDS = ("primary", "filelists", "other")
ROOT_ELEMENT = {"primary": "metadata", "filelists": "filelists", "other": "otherdata"}
INDEX_NAME = "kiln-index.json"
INDEX_FORMAT = 3
# Each append adds one gzip member; past this many the body is recompressed into one member, so a
# repo that receives thousands of single-package publishes does not carry thousands of tiny members.
MAX_BODY_MEMBERS = 64
CHANGELOG_LIMIT = 10  # changelog entries per package in other.xml, createrepo_c's default
GZIP_LEVEL = 6  # createrepo_c's and gzip's default
REPO_NS = "http://linux.duke.edu/metadata/repo"
_COUNT = re.compile(rb'packages="(\d+)"')
_LOCATION = re.compile(r'<location (?:xml:base="[^"]*" )?href="([^"]+)"')

try:  # the createrepo_c bindings (PyPI wheels for x86_64 and aarch64) read a package in-process
    import createrepo_c as _createrepo
except ImportError:  # elsewhere, the createrepo_c tool does the same in a subprocess
    _createrepo = None


class IndexStale(Exception):
    """createrepo_c's output is not laid out as Kiln expects (see :func:`split_document`)."""


@dataclass(frozen=True)
class MetadataFile:
    """One of primary/filelists/other as Kiln laid it out: where its members start and end."""

    href: str  # relative to the repo dir: repodata/<sha256>-primary.xml.gz
    sha256: str  # of the compressed file, as repomd.xml says
    header: str  # the uncompressed header text, with the package count
    header_bytes: int  # compressed size of the header member
    footer: str
    footer_bytes: int
    body_members: int


FileStamp = tuple[int, int]  # (size, mtime in ns): what createrepo_c --update compares, too


@dataclass(frozen=True)
class RepoIndex:
    packages: dict[str, FileStamp]  # location href -> the file as it was indexed
    files: dict[str, MetadataFile]
    # Every directory below the repo dir (not dot-dirs) -> its mtime in ns when this was written.
    # A rename into a directory (rpmsign, a publish that replaced a package) changes its mtime: one
    # stat per directory notices what one stat per package would, at a fraction of the cost.
    directories: dict[str, int]

    def to_json(self) -> str:
        payload = {
            "format": INDEX_FORMAT,
            "packages": self.packages,
            "directories": self.directories,
            "files": {kind: asdict(entry) for kind, entry in self.files.items()},
        }
        return json.dumps(payload, separators=(",", ":")) + "\n"  # 5,000 paths: compact is 5x faster

    @classmethod
    def load(cls, meta_dir: Path) -> RepoIndex | None:
        """The index of a metadata directory (``.meta-<id>``), or None where there is none usable.

        It is a cache: anything unexpected in it means "rebuild", never an error."""
        try:
            payload = json.loads((meta_dir / INDEX_NAME).read_text())
            if payload["format"] != INDEX_FORMAT or sorted(payload["files"]) != sorted(KINDS):
                return None
            files = {kind: MetadataFile(**payload["files"][kind]) for kind in KINDS}
            packages = {
                str(href): (int(size), int(mtime)) for href, (size, mtime) in payload["packages"].items()
            }
            directories = {str(name): int(mtime) for name, mtime in payload["directories"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        for entry in files.values():
            fields = (entry.header_bytes, entry.footer_bytes, entry.body_members)
            if not all(type(value) is int and value >= 0 for value in fields) or not all(
                isinstance(text, str) for text in (entry.href, entry.sha256, entry.header, entry.footer)
            ):
                return None
        return cls(packages, files, directories)


@dataclass(frozen=True)
class NewEntries:
    """The metadata entries of the packages being added: one XML fragment per kind."""

    packages: dict[str, FileStamp]
    xml: dict[str, str]


@dataclass(frozen=True)
class Tree:
    """What is under a repo dir, outside dot-directories: the ``*.rpm`` files and the mtimes of the
    directories."""

    packages: dict[str, FileStamp | None]  # relative path -> stamp, or None where not stat'ed
    directories: dict[str, int]


def scan_tree(repo_dir: Path, *, stamps: bool) -> Tree:
    """One walk with os.scandir. ``stamps``: also stat every package (about 4 us each here, so
    20 ms for 5,000: only where createrepo_c runs anyway)."""
    packages: dict[str, FileStamp | None] = {}
    directories: dict[str, int] = {}
    pending = [("", os.fspath(repo_dir))]
    while pending:
        prefix, path = pending.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith("."):  # Kiln's metadata sets (createrepo_c's output
                        continue  # lists any package in there, and then no index is kept)
                    relative = f"{prefix}{entry.name}"
                    directories[relative] = entry.stat(follow_symlinks=False).st_mtime_ns
                    pending.append((relative + "/", entry.path))
                elif entry.name.endswith(".rpm"):
                    stat = entry.stat() if stamps else None
                    packages[prefix + entry.name] = (stat.st_size, stat.st_mtime_ns) if stat else None
    return Tree(packages, directories)


def directory_stamps(repo_dir: Path, names: set[str]) -> dict[str, int]:
    return {name: (repo_dir / name).stat().st_mtime_ns for name in sorted(names)}


# --- pieces ---------------------------------------------------------------------------------------------


def gzip_member(data: bytes) -> bytes:
    """One complete gzip member (header, deflate stream, CRC, size); mtime 0 keeps output reproducible."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def split_document(kind: str, text: str) -> tuple[str, str, str]:
    """(header, body, footer) of a primary/filelists/other document as createrepo_c writes it."""
    root = ROOT_ELEMENT[kind]
    start = text.find(f"<{root} ")
    header_end = text.find(">", start) + 1
    footer_start = text.rfind(f"</{root}>")
    if start < 0 or header_end <= 0 or footer_start < header_end:
        raise IndexStale(f"{kind}: not a <{root}> document")
    header = text[:header_end]
    if len(_COUNT.findall(header.encode())) != 1:
        raise IndexStale(f'{kind}: no packages="N" count in {header!r}')
    # The newline after the root's start tag belongs to the header, so the body is whole entries.
    if text.startswith("\n", header_end):
        header_end += 1
        header += "\n"
    return header, text[header_end:footer_start], text[footer_start:]


def with_count(header: str, count: int) -> bytes:
    return _COUNT.sub(f'packages="{count}"'.encode(), header.encode(), count=1)


def package_hrefs(primary_body: str) -> list[str]:
    return [html.unescape(href) for href in _LOCATION.findall(primary_body)]


@dataclass(frozen=True)
class _Written:
    kind: str
    meta: MetadataFile
    open_sha256: str
    open_size: int
    size: int


def _emit(
    repodata: Path,
    kind: str,
    header: bytes,
    compressed_body: bytes,
    body_members: int,
    open_parts: list[bytes],
    footer: str,
) -> _Written:
    """Write ``repodata/<sha256>-<kind>.xml.gz`` = header member + body members + footer member."""
    header_member = gzip_member(header)
    footer_member = gzip_member(footer.encode())
    data = header_member + compressed_body + footer_member
    digest = hashlib.sha256(data).hexdigest()
    opened = hashlib.sha256(header)
    open_size = len(header)
    for part in open_parts:
        opened.update(part)
        open_size += len(part)
    opened.update(footer.encode())
    open_size += len(footer.encode())
    name = f"{digest}-{kind}.xml.gz"
    (repodata / name).write_bytes(data)
    meta = MetadataFile(
        href=f"repodata/{name}",
        sha256=digest,
        header=header.decode(),
        header_bytes=len(header_member),
        footer=footer,
        footer_bytes=len(footer_member),
        body_members=body_members,
    )
    return _Written(kind, meta, opened.hexdigest(), open_size, len(data))


def repomd_xml(written: list[_Written], revision: int) -> bytes:
    """``repomd.xml`` for the three documents, laid out as createrepo_c writes it."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<repomd xmlns="{REPO_NS}" xmlns:rpm="http://linux.duke.edu/metadata/rpm">',
        f"  <revision>{revision}</revision>",
    ]
    for item in written:
        lines += [
            f'  <data type="{item.kind}">',
            f'    <checksum type="sha256">{item.meta.sha256}</checksum>',
            f'    <open-checksum type="sha256">{item.open_sha256}</open-checksum>',
            f'    <location href="{item.meta.href}"/>',
            f"    <timestamp>{revision}</timestamp>",
            f"    <size>{item.size}</size>",
            f"    <open-size>{item.open_size}</open-size>",
            "  </data>",
        ]
    lines.append("</repomd>")
    return ("\n".join(lines) + "\n").encode()


def repomd_records(repomd: Path) -> dict[str, tuple[str, str]]:
    """{type: (location href, sha256)} of a repomd.xml."""
    records: dict[str, tuple[str, str]] = {}
    for data in ET.parse(repomd).getroot().iter(f"{{{REPO_NS}}}data"):
        location = data.find(f"{{{REPO_NS}}}location")
        checksum = data.find(f"{{{REPO_NS}}}checksum")
        if location is None or checksum is None or checksum.get("type") != "sha256":
            raise IndexStale(f"{repomd}: record {data.get('type')} has no sha256 checksum or location")
        records[data.get("type", "")] = (location.get("href", ""), (checksum.text or "").strip())
    return records


def served_records(repodata_dir: Path) -> dict[str, tuple[str, str]]:
    """:func:`repomd_records` of ``repodata_dir/repomd.xml``; empty where there is none Kiln can read."""
    try:
        return repomd_records(repodata_dir / "repomd.xml")
    except (OSError, IndexStale, ET.ParseError):
        return {}


def _finish(
    meta_dir: Path, written: list[_Written], packages: dict[str, FileStamp], directories: dict[str, int]
) -> RepoIndex:
    (meta_dir / "repodata" / "repomd.xml").write_bytes(repomd_xml(written, int(time.time())))
    index = RepoIndex(packages, {item.kind: item.meta for item in written}, directories)
    (meta_dir / INDEX_NAME).write_text(index.to_json())
    return index


# --- the two ways in ------------------------------------------------------------------------------------


def repack(meta_dir: Path, repo_dir: Path) -> RepoIndex | None:
    """Lay createrepo_c's output in ``meta_dir/repodata`` out as header/body/footer members, in place.

    Returns None, leaving createrepo_c's files as they are, when the repo has other metadata types
    than primary/filelists/other (Kiln does not rewrite what it does not know), a document is not
    laid out as expected, or the packages it lists are not the ones on disk: the repo stays valid,
    and the next publish runs createrepo_c again."""
    repodata = meta_dir / "repodata"
    try:
        records = repomd_records(repodata / "repomd.xml")
        if sorted(records) != sorted(KINDS):
            return None
        # All three are read and split before anything is written: all or nothing.
        documents = {
            kind: split_document(kind, gzip.decompress((meta_dir / records[kind][0]).read_bytes()).decode())
            for kind in KINDS
        }
        tree = scan_tree(repo_dir, stamps=True)
    except (IndexStale, ET.ParseError, EOFError, zlib.error, UnicodeDecodeError, OSError):
        return None
    hrefs = package_hrefs(documents["primary"][1])
    declared = _COUNT.search(documents["primary"][0].encode())
    if declared is None or int(declared.group(1)) != len(hrefs) or sorted(hrefs) != sorted(tree.packages):
        return None
    written: list[_Written] = []
    for kind in KINDS:
        header, body, footer = documents[kind]
        body_bytes = body.encode()
        written.append(
            _emit(repodata, kind, header.encode(), gzip_member(body_bytes), 1, [body_bytes], footer)
        )
    for kind, item in zip(KINDS, written, strict=True):
        source = meta_dir / records[kind][0]
        if source.name != Path(item.meta.href).name:
            source.unlink()
    stamps = {href: stamp for href in hrefs if (stamp := tree.packages[href]) is not None}
    return _finish(meta_dir, written, stamps, tree.directories)


@dataclass(frozen=True)
class CurrentMetadata:
    """The metadata a repo serves now, checked against Kiln's index and decompressed, ready to append to."""

    repo_dir: Path
    meta_dir: Path  # the .meta-<id> directory ``repodata`` points into
    index: RepoIndex
    bodies: dict[str, tuple[bytes, bytes]]  # kind -> (body members as stored, body uncompressed)


def load_current(repo_dir: Path) -> CurrentMetadata | None:
    """What ``repo_dir/repodata`` points at, if Kiln laid it out and nothing changed since; else None.

    "Nothing changed": ``repomd.xml`` lists exactly the three files of the index with their
    checksums (no updateinfo or other record added by hand), the files have those checksums, the
    ``*.rpm`` files on disk are exactly the indexed ones, and no directory's mtime moved (nothing
    added, removed, or replaced by a rename -- rpmsign, cp --remove-destination, a publish that
    failed half-way). A file overwritten in place without a rename is not noticed here; the next
    createrepo_c run (a replaced package, a rebuild) compares every package's size and mtime.

    This is the part of an append that reads the old state, so a publisher runs it while it signs
    the new packages (zlib, hashlib and the file system calls release the GIL); it must finish
    before a new package is placed."""
    try:
        return _load_current(repo_dir)
    except Exception:  # a cache: whatever is wrong with it means "rebuild", never a failed publish
        return None


def _load_current(repo_dir: Path) -> CurrentMetadata | None:
    served = repo_dir / "repodata"
    if not served.is_symlink():
        return None
    meta_dir = served.resolve().parent
    index = RepoIndex.load(meta_dir)
    if index is None or not meta_dir.name.startswith(".meta-") or meta_dir.parent != repo_dir.resolve():
        return None
    expected = {kind: (entry.href, entry.sha256) for kind, entry in index.files.items()}
    if repomd_records(meta_dir / "repodata" / "repomd.xml") != expected:
        return None
    bodies: dict[str, tuple[bytes, bytes]] = {}
    for kind in KINDS:
        entry = index.files[kind]
        data = (meta_dir / entry.href).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256 or entry.header_bytes + entry.footer_bytes > len(
            data
        ):
            return None
        body = data[entry.header_bytes : len(data) - entry.footer_bytes]
        bodies[kind] = (body, gzip.decompress(body))
    tree = scan_tree(repo_dir, stamps=False)
    if tree.packages.keys() != index.packages.keys() or tree.directories != index.directories:
        return None
    return CurrentMetadata(repo_dir, meta_dir, index, bodies)


def changed_in_place(repo_dir: Path) -> set[str]:
    """Indexed packages whose file is still there but not as indexed (replaced, re-signed): what
    ``createrepo_c --update`` may miss, as it compares sizes and mtimes in whole seconds only."""
    served = repo_dir / "repodata"
    index = RepoIndex.load(served.resolve().parent) if served.is_symlink() else None
    if index is None:
        return set()
    on_disk = scan_tree(repo_dir, stamps=True).packages
    return {href for href, stamp in index.packages.items() if href in on_disk and on_disk[href] != stamp}


def append(current: CurrentMetadata, new: NewEntries, meta_dir: Path) -> RepoIndex:
    """Write ``meta_dir/repodata``: the current metadata plus ``new``'s packages."""
    index = current.index
    count = len(index.packages) + len(new.packages)
    repodata = meta_dir / "repodata"
    repodata.mkdir(exist_ok=True)
    written: list[_Written] = []
    for kind in KINDS:
        entry = index.files[kind]
        old_body, old_text = current.bodies[kind]
        added = new.xml[kind].encode()
        if entry.body_members + 1 > MAX_BODY_MEMBERS:
            body, members = gzip_member(old_text + added), 1
        else:
            body, members = old_body + gzip_member(added), entry.body_members + 1
        header = with_count(entry.header, count)
        written.append(_emit(repodata, kind, header, body, members, [old_text, added], entry.footer))
    # The directories as they are now, with the new packages placed: the next publish compares them.
    directories = set(index.directories)
    for href in new.packages:
        parent = Path(href).parent
        directories.update(p.as_posix() for p in (parent, *parent.parents) if p.as_posix() != ".")
    stamps = directory_stamps(current.repo_dir, directories)
    return _finish(meta_dir, written, {**index.packages, **new.packages}, stamps)


# --- entries for new packages ---------------------------------------------------------------------------


def new_entries(repo_dir: Path, hrefs: list[str], runner: Runner) -> NewEntries:
    """primary/filelists/other entries of packages already in place under ``repo_dir``."""
    if _createrepo is not None:
        parts: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for href in hrefs:
            try:
                package = _createrepo.package_from_rpm(
                    str(repo_dir / href), _createrepo.SHA256, href, None, CHANGELOG_LIMIT
                )
            except OSError as exc:
                raise InvalidInput(Problem(f"{repo_dir / href}: not an RPM ({exc})")) from exc
            for kind, xml in zip(KINDS, _createrepo.xml_dump(package), strict=True):
                parts[kind].append(xml)
        xml = {kind: "".join(chunks) for kind, chunks in parts.items()}
    else:
        xml = _entries_from_tool(repo_dir, hrefs, runner)
    stamps = {}
    for href in hrefs:
        stat = (repo_dir / href).stat()
        stamps[href] = (stat.st_size, stat.st_mtime_ns)
    return NewEntries(stamps, xml)


def _entries_from_tool(repo_dir: Path, hrefs: list[str], runner: Runner) -> dict[str, str]:
    """The same through the createrepo_c tool: index only the listed packages into a scratch dir."""
    with tempfile.TemporaryDirectory(prefix="kiln-entries-") as scratch:
        listing = Path(scratch) / "pkglist"
        listing.write_text("".join(f"{href}\n" for href in hrefs))
        out = Path(scratch) / "out"
        out.mkdir()
        argv = ["createrepo_c", "--quiet", "--no-database", "--general-compress-type", "gz"]
        argv += ["--pkglist", str(listing), "--outputdir", str(out), str(repo_dir)]
        runner.run(argv, timeout=600)
        xml: dict[str, str] = {}
        try:
            records = repomd_records(out / "repodata" / "repomd.xml")
            for kind in KINDS:
                text = gzip.decompress((out / records[kind][0]).read_bytes()).decode()
                xml[kind] = split_document(kind, text)[1]
        except (IndexStale, KeyError, ET.ParseError) as exc:
            raise CommandFailed(f"createrepo_c --pkglist wrote metadata Kiln cannot read: {exc}") from exc
    indexed = package_hrefs(xml["primary"])
    if sorted(indexed) != sorted(hrefs):
        raise CommandFailed(f"createrepo_c indexed {indexed}, not {hrefs}")
    return xml
