"""A seeded fuzzer for Kiln's repo metadata reader (builder/rpm/repometa.py through source.py's
``repo_packages``) and ``kiln rpm missing``'s comparison (``find_missing``), over loopback HTTP.

Every case is a pure function of ``(seed, index)``: two small repos (the one that has packages, the
one for ppc64le that may lack them) generated from seeded packages, then 1-3 mutations from these
families, applied to one of them:

- bomb: gzip (one member or many), xz and bz2 bombs of zeros, of whitespace inside ``<metadata>``, of
  repeated packages;
- entity: billion laughs, external entities (a file, an URL), parameter entities, a DOCTYPE alone;
- drip: a byte every few tenths of a second in the body or in the headers, past a short deadline
  (the case's, not Kiln's default);
- truncate, bitflip: the compressed file, the XML, repomd.xml;
- huge: 5,000-digit versions, 300,000-segment versions, long names and hrefs, 20,001 provides, a
  megabyte of text in one token, deep nesting;
- missing: a package's name, arch, version (or its ver/rel), checksum, location; repomd's primary;
- checksum: wrong or stale checksums and sizes in repomd.xml, unknown or md5 types, bad digests;
- structure: filelists served as primary, wrong roots, junk, duplicate fields, not XML, empty files,
  .zst and unknown suffixes, hrefs outside the repo, HTTP errors, redirect loops, lying
  Content-Length, connections cut mid-body;
- versions: valid but odd versions (``~``, ``^``, epochs, long digit runs): the comparison must not
  fail on them.

Each case runs ``repo_packages`` on both repos and ``find_missing`` in a worker process (its own
loopback server, its address space capped) and is classified:

- ``ok``: no exception;
- ``refusal``: a Kiln error with exit 4 whose message names the URL it is about;
- ``unlocated``: a Kiln error that does not (another exit code, or no URL);
- ``traceback``: any other exception (or a worker that died, e.g. for memory);
- ``hang``: the case took longer than its deadline allows (two repos, each within the deadline,
  plus a margin).

``python -m tests.support.metadata_fuzz --cases N --out DIR`` runs N cases, writes each failure (the
files served, the mutations, the traceback) under DIR, and prints the totals with the peak RSS of
the workers and how far it rose over their RSS when they were ready (a forked worker starts with its
parent's pages); ``make fuzz`` runs it after the recipe fuzzer.
"""

from __future__ import annotations

import argparse
import base64
import bz2
import gc
import gzip
import hashlib
import json
import lzma
import os
import random
import resource
import signal
import struct
import sys
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import zstandard

from tests.support.fuzz import limit_process, traceback_signature
from tests.support.worker_pool import run_cases

SEVERITY = ("ok", "refusal", "unlocated", "traceback", "hang")
FAILURES = ("unlocated", "traceback", "hang")
ARCH = "ppc64le"  # the arch of the second repo
DEADLINE_S = 10.0  # a case's deadline per repo: far above what an honest case takes here
DRIP_DEADLINE_S = 0.6  # a dripping case's deadline: a drip must be refused this soon
DRIP_INTERVAL_S = 0.25  # a byte every ... seconds: the whole body would take minutes
HANG_MARGIN_S = 5.0  # over 2 x deadline + this, a case is a hang
MEMORY_MB = 2048  # each worker's address space: a bomb that were read whole would die here

# --- repos: the documents Kiln reads -------------------------------------------------------------------


@dataclass
class Pkg:
    """One binary or source package as primary.xml lists it; a field set to None is left out, a raw
    string is written as it is (``raw`` fields: already XML)."""

    name: str | None
    arch: str | None
    epoch: str | None
    ver: str | None
    rel: str | None
    source: str = ""  # its sourcerpm file name ("" for a source package)
    provides: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    checksum_type: str | None = "sha256"
    checksum: str | None = None  # None: one made from the name
    href: str | None = None  # None: Packages/<name>-<ver>-<rel>.<arch>.rpm
    has_version: bool = True
    has_checksum: bool = True
    has_location: bool = True
    extra: str = ""  # raw XML inside <package>, after the fields


def package_xml(pkg: Pkg) -> str:
    parts = ['<package type="rpm">']
    if pkg.name is not None:
        parts.append(f"<name>{escape(pkg.name)}</name>")
    if pkg.arch is not None:
        parts.append(f"<arch>{escape(pkg.arch)}</arch>")
    if pkg.has_version:
        attrs = [
            f"{k}={quoteattr(v)}"
            for k, v in (("epoch", pkg.epoch), ("ver", pkg.ver), ("rel", pkg.rel))
            if v is not None
        ]
        parts.append(f"<version {' '.join(attrs)}/>")
    if pkg.has_checksum:
        digest = (
            pkg.checksum
            if pkg.checksum is not None
            else hashlib.sha256(f"{pkg.name}{pkg.ver}".encode()).hexdigest()
        )
        kind = f" type={quoteattr(pkg.checksum_type)}" if pkg.checksum_type is not None else ""
        parts.append(f'<checksum{kind} pkgid="YES">{escape(digest)}</checksum>')
    parts.append(f"<summary>{escape(str(pkg.name))}</summary><description>A package.</description>")
    if pkg.has_location:
        href = pkg.href if pkg.href is not None else f"Packages/{pkg.name}-{pkg.ver}-{pkg.rel}.{pkg.arch}.rpm"
        parts.append(f"<location href={quoteattr(href)}/>")
    parts.append(f"<format><rpm:license>MIT</rpm:license><rpm:sourcerpm>{escape(pkg.source)}</rpm:sourcerpm>")
    for what, entries in (("provides", pkg.provides), ("requires", pkg.requires)):
        if entries:
            parts.append(
                f"<rpm:{what}>"
                + "".join(f"<rpm:entry name={quoteattr(e)}/>" for e in entries)
                + f"</rpm:{what}>"
            )
    parts.append(f"<file>/usr/share/{escape(str(pkg.name))}</file></format>{pkg.extra}</package>")
    return "".join(parts)


PRIMARY_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
    'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{count}">\n'
)
PRIMARY_TAIL = "</metadata>\n"


def primary_xml(pkgs: list[Pkg]) -> bytes:
    return (
        PRIMARY_HEAD.format(count=len(pkgs)) + "\n".join(package_xml(p) for p in pkgs) + "\n" + PRIMARY_TAIL
    ).encode()


def filelists_xml(pkgs: list[Pkg]) -> bytes:
    body = "".join(
        f'<package pkgid="x" name={quoteattr(str(p.name))} arch={quoteattr(str(p.arch))}>'
        f"<file>/usr/share/{escape(str(p.name))}</file></package>\n"
        for p in pkgs
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<filelists xmlns="http://linux.duke.edu/metadata/filelists" '
        f'packages="{len(pkgs)}">\n{body}</filelists>\n'
    ).encode()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gz":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if kind == "gz-members":  # as Kiln's own repo publisher appends packages: one member each
        third = max(1, len(data) // 3)
        return b"".join(gzip.compress(data[i : i + third], mtime=0) for i in range(0, len(data), third))
    if kind == "xz":
        return lzma.compress(data, preset=1)
    if kind == "bz2":
        return bz2.compress(data, 1)
    if kind == "zst":  # Fedora's (createrepo_c --compress-type zstd)
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


SUFFIX = {"gz": ".xml.gz", "gz-members": ".xml.gz", "xz": ".xml.xz", "bz2": ".xml.bz2", "zst": ".xml.zst",
          "plain": ".xml"}  # fmt: skip


@dataclass
class Served:
    """What the loopback server answers for one path."""

    body: bytes
    status: int = 200
    drip_s: float = 0.0  # seconds between bytes of the body (0: all at once)
    drip_headers: bool = False  # the status line and headers drip too
    content_length: int | None = None  # a lie, when set
    cut_after: int | None = None  # close the connection after this many body bytes
    location: str | None = None  # a redirect


@dataclass
class Repo:
    """One repo as served: its packages, how primary is compressed, and what repomd.xml says."""

    pkgs: list[Pkg]
    compression: str = "gz"
    primary_name: str = "primary"  # the file's stem under repodata/
    primary_suffix: str | None = None  # None: SUFFIX[compression]
    checksums: str = "right"  # right | stale | none | wrong-type | md5 | not-hex | open-wrong
    sizes: str = "right"  # right | none | small | huge | not-a-number
    xml_edits: list[Callable[[bytes], bytes]] = field(default_factory=list)
    file_edits: list[Callable[[bytes], bytes]] = field(default_factory=list)
    repomd_edits: list[Callable[[bytes], bytes]] = field(default_factory=list)
    primary_href: str | None = None  # None: the file's own path
    transport: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> Served fields
    primary_body: bytes | None = None  # replaces the compressed file (bombs)
    primary_open: bytes | None = None  # what that decompresses to, when known cheaply (else None)

    def files(self) -> dict[str, Served]:
        xml = primary_xml(self.pkgs)
        for edit in self.xml_edits:
            xml = edit(xml)
        body = compress(xml, self.compression) if self.primary_body is None else self.primary_body
        opened = xml if self.primary_body is None else (self.primary_open or b"")
        for edit in self.file_edits:
            body = edit(body)
        suffix = self.primary_suffix if self.primary_suffix is not None else SUFFIX[self.compression]
        path = f"repodata/{self.primary_name}{suffix}"
        filelists = gzip.compress(filelists_xml(self.pkgs), mtime=0)
        repomd = self._repomd(self.primary_href or path, body, opened, filelists)
        for edit in self.repomd_edits:
            repomd = edit(repomd)
        out = {
            "repodata/repomd.xml": Served(repomd),
            path: Served(body),
            "repodata/filelists.xml.gz": Served(filelists),
        }
        for name, changes in self.transport.items():
            out[name] = replace(out.get(name, Served(b"")), **changes)
        return out

    def _repomd(self, href: str, body: bytes, opened: bytes, filelists: bytes) -> bytes:
        kind, digest, open_digest = (
            "sha256",
            hashlib.sha256(body).hexdigest(),
            hashlib.sha256(opened).hexdigest(),
        )
        if self.checksums == "stale":
            digest = hashlib.sha256(body + b"x").hexdigest()
        elif self.checksums == "wrong-type":
            kind = "sha999"
        elif self.checksums == "md5":
            kind, digest = "md5", hashlib.md5(body).hexdigest()
        elif self.checksums == "not-hex":
            digest = "z" * 64
        elif self.checksums == "open-wrong":
            open_digest = hashlib.sha256(opened + b"x").hexdigest()
        size, open_size = str(len(body)), str(len(opened))
        if self.sizes == "small":
            size = str(max(0, len(body) // 2))
        elif self.sizes == "huge":
            size, open_size = "9" * 40, "9" * 40
        elif self.sizes == "not-a-number":
            size = "lots"
        checks = ""
        if self.checksums != "none":
            checks = f'<checksum type="{kind}">{digest}</checksum>'
            if self.primary_open is not None or self.primary_body is None:  # known without decompressing
                checks += f'<open-checksum type="sha256">{open_digest}</open-checksum>'
        sizes = (
            ""
            if self.sizes == "none"
            else (
                f"<size>{size}</size>"
                + (f"<open-size>{open_size}</open-size>" if self.primary_body is None else "")
            )
        )
        fl = hashlib.sha256(filelists).hexdigest()
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">'
            "<revision>1</revision>"
            f'<data type="primary">{checks}<location href={quoteattr(href)}/>'
            f"<timestamp>1</timestamp>{sizes}</data>"
            f'<data type="filelists"><checksum type="sha256">{fl}</checksum>'
            '<location href="repodata/filelists.xml.gz"/></data>'
            "</repomd>\n"
        ).encode()


# --- the loopback server -----------------------------------------------------------------------------


class RepoServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``Served`` answers by path; a case
    puts its repos under a prefix and drops them after. With ``login`` (user, password), every path
    needs it as HTTP basic auth (else 401); ``authorizations`` lists the Authorization header of each
    request, None where it had none."""

    def __init__(self, login: tuple[str, str] | None = None) -> None:
        self.files: dict[str, Served] = {}
        self.stopped = threading.Event()
        self.authorizations: list[str | None] = []
        files, stopped, authorizations = self.files, self.stopped, self.authorizations
        wanted = "Basic " + base64.b64encode(":".join(login).encode()).decode() if login else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                served = files.get(self.path.split("?", 1)[0].lstrip("/"))
                authorizations.append(self.headers.get("Authorization"))
                try:
                    if wanted is not None and self.headers.get("Authorization") != wanted:
                        self._answer(Served(b"who are you?\n", status=401))
                    elif served is None:
                        self._answer(Served(b"not here\n", status=404))
                    else:
                        self._answer(served)
                except OSError:
                    pass  # the client left (a refusal, a deadline): nothing to answer any more

            def _answer(self, served: Served) -> None:
                head = [f"HTTP/1.1 {served.status} X\r\n"]
                length = served.content_length if served.content_length is not None else len(served.body)
                head.append(f"Content-Length: {length}\r\n")
                if served.location is not None:
                    head.append(f"Location: {served.location}\r\n")
                head.append("Connection: close\r\n\r\n")
                raw = "".join(head).encode()
                if served.drip_headers:
                    self._drip(raw, served.drip_s or DRIP_INTERVAL_S)
                else:
                    self.wfile.write(raw)
                body = served.body if served.cut_after is None else served.body[: served.cut_after]
                if served.drip_s and not served.drip_headers:
                    self._drip(body, served.drip_s)
                else:
                    self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def _drip(self, data: bytes, interval: float) -> None:
                for i in range(len(data)):
                    if stopped.is_set() or stopped.wait(interval):
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> RepoServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}/"

    def put(self, prefix: str, files: dict[str, Served]) -> None:
        for path, served in files.items():
            if served.location == "@self":  # a redirect loop
                served = replace(served, location=f"/{prefix}/{path}")
            self.files[f"{prefix}/{path}"] = served

    def drop(self, prefix: str) -> None:
        for path in [p for p in self.files if p.startswith(prefix + "/")]:
            del self.files[path]


# --- cases -------------------------------------------------------------------------------------------


@dataclass
class Case:
    seed: int
    index: int
    first: Repo
    second: Repo
    mutations: list[str] = field(default_factory=list)
    deadline_s: float = DEADLINE_S


def _evr(rng: random.Random) -> tuple[str, str, str]:
    epoch = rng.choice(["0", "0", "0", "1", "2"])
    version = rng.choice(["1.0", "1.0.1", "2.4", "1.0~rc1", "1.0^git1", "10", "0.9", "3.1.4"])
    return epoch, version, rng.choice(["1.el9", "2.el9", "1.el9_1", "10.el9"])


def base_repos(rng: random.Random) -> tuple[Repo, Repo]:
    """The first repo (x86_64 and noarch) and the second (ppc64le and noarch, some sources older or
    absent, some with only their noarch subpackages)."""
    first: list[Pkg] = []
    second: list[Pkg] = []
    for i in range(rng.randrange(2, 25)):
        source = f"src{i}"
        epoch, ver, rel = _evr(rng)
        layout = rng.choice(["arch", "arch", "arch+noarch", "noarch"])
        subs = [("", "x86_64")] if layout != "noarch" else []
        subs += [("-doc", "noarch")] if layout != "arch" else []
        srpm = f"{source}-{ver}-{rel}.src.rpm"
        for suffix, arch in subs:
            provides = [f"{source}{suffix}", f"lib{source}.so.{i}()(64bit)"]
            first.append(
                Pkg(f"{source}{suffix}", arch, epoch, ver, rel, srpm, provides, ["libc.so.6()(64bit)"])
            )
            fate = rng.choice(["same", "same", "older", "absent", "noarch-only-there"])
            if fate == "absent" or (fate == "noarch-only-there" and arch != "noarch"):
                continue
            there_ver = "0.1" if fate == "older" else ver
            there_arch = ARCH if arch != "noarch" else "noarch"
            second.append(Pkg(f"{source}{suffix}", there_arch, epoch, there_ver, rel,
                              f"{source}-{there_ver}-{rel}.src.rpm", provides, []))  # fmt: skip
    compression = rng.choice(["gz", "gz", "gz-members", "xz", "bz2", "plain"])
    return Repo(first, compression), Repo(second, rng.choice(["gz", "xz", "plain"]))


class _Skip(Exception):
    """The mutation does not apply to this repo as it is."""


def _some_package(rng: random.Random, repo: Repo) -> Pkg:
    if not repo.pkgs:
        raise _Skip()
    return rng.choice(repo.pkgs)


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, unix


def gzip_bomb(head: bytes, unit: bytes, count: int, tail: bytes) -> bytes:
    """One valid gzip member of ``head + unit * count + tail``, made in milliseconds: after a full
    flush deflate forgets its history, so every ``unit`` compresses to the same block, repeated."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(unit) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.compress(tail) + deflate.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(unit, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head) + len(unit) * count + len(tail)
    return GZIP_HEADER + start + block * count + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


@cache
def _bomb(kind: str, shape: str) -> tuple[bytes, int]:
    """(compressed bytes, decompressed size) of a bomb: ~1-3 GB (gzip) or 100 MB (xz, bz2) of zeros, of
    whitespace inside a valid <metadata>, or of one package repeated. Made once per process (the
    parent, before the workers fork)."""
    unit = {"zeros": b"\0" * (1 << 20), "spaces": b" " * (1 << 20)}.get(shape)
    if unit is None:  # repeated packages: valid XML all the way
        one = package_xml(Pkg("boom", "x86_64", "0", "1", "1", "boom-1-1.src.rpm", ["boom"], [])).encode()
        unit = one * ((1 << 20) // len(one))
    head = PRIMARY_HEAD.format(count=1).encode() if shape != "zeros" else b""
    tail = PRIMARY_TAIL.encode() if shape != "zeros" else b""
    if kind == "gz":
        count = 1000
        return gzip_bomb(head, unit, count, tail), len(head) + len(unit) * count + len(tail)
    if kind == "gz-members":  # many gzip members, one after the other (gzip -d reads them all)
        member, count = gzip.compress(unit * 64, mtime=0), 48
        body = gzip.compress(head, mtime=0) + member * count + gzip.compress(tail, mtime=0)
        return body, len(head) + len(unit) * 64 * count + len(tail)
    compressor: Any = lzma.LZMACompressor(preset=0) if kind == "xz" else bz2.BZ2Compressor(9)
    parts = [compressor.compress(head)]
    parts += [compressor.compress(unit) for _ in range(100)]
    parts += [compressor.compress(tail), compressor.flush()]
    return b"".join(parts), len(head) + len(unit) * 100 + len(tail)


BOMBS = [
    *((kind, shape) for kind in ("gz", "gz-members", "xz") for shape in ("zeros", "spaces", "packages")),
    ("bz2", "zeros"),
    ("bz2", "spaces"),  # bz2 of packages takes a minute to make
]


@cache
def _big_body() -> bytes:
    return b"\0" * (64 << 20)


def warm_up() -> None:
    """Make the bombs (and the big body) before the workers fork, so that each does not make them again
    and none counts them as its growth."""
    for kind, shape in BOMBS:
        _bomb(kind, shape)
    _big_body()


def mutate_bomb(rng: random.Random, repo: Repo) -> str:
    kind, shape = rng.choice(BOMBS)
    body, size = _bomb(kind, shape)
    repo.primary_body = body
    repo.compression = "gz" if kind.startswith("gz") else kind
    repo.primary_open = None
    repo.checksums = rng.choice(["right", "none"])
    repo.sizes = rng.choice(["right", "none"])
    return f"{kind} bomb of {shape}: {len(body):,} bytes -> {size:,}"


BILLION_LAUGHS = (
    '<!DOCTYPE metadata [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";" if i > 1 else "&lol;") * 10}">' for i in range(1, 10)
    )
    + "]>"
)
ENTITY_DOCTYPES = {
    "billion-laughs": (BILLION_LAUGHS, "&lol9;"),
    "external-file": ('<!DOCTYPE metadata [<!ENTITY ext SYSTEM "file:///etc/passwd">]>', "&ext;"),
    "external-url": ('<!DOCTYPE metadata [<!ENTITY ext SYSTEM "http://127.0.0.1:9/x">]>', "&ext;"),
    "parameter": ('<!DOCTYPE metadata [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>', ""),
    "doctype-only": ('<!DOCTYPE metadata SYSTEM "http://127.0.0.1:9/primary.dtd">', ""),
    "undefined": ("", "&nope;"),
}


def _with_doctype(xml: bytes, doctype: str, reference: str) -> bytes:
    head, _, rest = xml.partition(b"?>\n")
    xml = head + b"?>\n" + doctype.encode() + b"\n" + rest
    return (
        xml.replace(b"<description>A package.", f"<description>{reference}".encode(), 1) if reference else xml
    )


def mutate_entity(rng: random.Random, repo: Repo) -> str:
    name = rng.choice(sorted(ENTITY_DOCTYPES))
    doctype, reference = ENTITY_DOCTYPES[name]
    where = rng.choice(["primary", "primary", "repomd"])
    if where == "primary":
        repo.xml_edits.append(lambda xml: _with_doctype(xml, doctype, reference))
    else:
        repo.repomd_edits.append(
            lambda xml: _with_doctype(xml, doctype, "").replace(
                b"<revision>1", f"<revision>{reference}".encode()
            )
        )
    return f"{name} in {where}"


def mutate_drip(rng: random.Random, repo: Repo, case: Case) -> str:
    path = rng.choice(["repodata/repomd.xml", "primary"])
    name = path if path != "primary" else f"repodata/{repo.primary_name}{SUFFIX[repo.compression]}"
    headers = rng.random() < 0.3
    repo.transport[name] = {"drip_s": DRIP_INTERVAL_S, "drip_headers": headers}
    case.deadline_s = DRIP_DEADLINE_S
    return f"drip {'headers of ' if headers else ''}{path}"


def _cut(rng: random.Random) -> Callable[[bytes], bytes]:
    fraction = rng.random()
    return lambda data: data[: int(len(data) * fraction)]


def _flip(rng: random.Random) -> Callable[[bytes], bytes]:
    seed = rng.random()

    def flip(data: bytes) -> bytes:
        if not data:
            return data
        local = random.Random(seed)
        out = bytearray(data)
        for _ in range(local.choice((1, 1, 2, 8, 64))):
            out[local.randrange(len(out))] ^= 1 << local.randrange(8)
        return bytes(out)

    return flip


def mutate_damage(rng: random.Random, repo: Repo) -> str:
    what = rng.choice(["file", "xml", "repomd"])
    how = rng.choice(["truncate", "bitflip"])
    edit = _cut(rng) if how == "truncate" else _flip(rng)
    {"file": repo.file_edits, "xml": repo.xml_edits, "repomd": repo.repomd_edits}[what].append(edit)
    if what == "file" and rng.random() < 0.5:
        repo.checksums = "none"  # so that the damaged bytes reach the decompressor, not only the checksum
    return f"{how} {what}"


HUGE = {
    "5000-digit version": ("ver", "9" * 5000),
    "300000-segment version": ("ver", ".".join(["1"] * 300_000)),
    "5000-digit release": ("rel", "1" * 5000),
    "11-digit epoch": ("epoch", "99999999999"),
    "non-digit epoch": ("epoch", "1a"),
    "long name": ("name", "n" * 300),
    "name with a newline": ("name", "a\nmatrix: {}"),
    "name with a space": ("name", "a b"),
    "long href": ("href", "Packages/" + "a" * 2000 + ".rpm"),
    "long sourcerpm": ("source", "s" * 3000 + "-1-1.src.rpm"),
    "long arch": ("arch", "x" * 100),
    "arch with a slash": ("arch", "x86_64/../src"),
}


def mutate_huge(rng: random.Random, repo: Repo) -> str:
    pkg = _some_package(rng, repo)
    choice = rng.choice([*sorted(HUGE), "many provides", "long provide", "megabyte token", "deep nesting"])
    if choice in HUGE:
        attribute, value = HUGE[choice]
        setattr(pkg, attribute, value)
    elif choice == "many provides":
        pkg.provides = [f"p{i}" for i in range(20_001)]
    elif choice == "long provide":
        pkg.provides = ["p" * 5000]
    elif choice == "megabyte token":
        pkg.extra = "<rpm:junk>" + "x" * ((1 << 20) + 10) + "</rpm:junk>"
    else:
        pkg.extra = "<x>" * 200 + "</x>" * 200
    return f"{choice} in {pkg.name!r:.40}"


def mutate_missing(rng: random.Random, repo: Repo) -> str:
    choice = rng.choice(
        ["name", "arch", "version", "ver", "rel", "checksum", "location", "href", "primary", "root"]
    )
    if choice == "primary":
        repo.repomd_edits.append(lambda xml: xml.replace(b'type="primary"', b'type="secondary"'))
        return "no primary in repomd.xml"
    if choice == "root":
        repo.xml_edits.append(
            lambda xml: xml.replace(b"<metadata ", b"<metadat ").replace(b"</metadata>", b"</metadat>")
        )
        return "wrong root"
    pkg = _some_package(rng, repo)
    if choice in ("name", "arch", "ver", "rel"):
        setattr(pkg, choice, None if rng.random() < 0.7 else "")
    elif choice == "href":
        pkg.href = ""
    else:
        setattr(pkg, f"has_{choice}", False)
    return f"no {choice} in {pkg.name!r:.40}"


def mutate_checksum(rng: random.Random, repo: Repo) -> str:
    choice = rng.choice(["stale", "wrong-type", "md5", "not-hex", "open-wrong", "size-small", "size-huge",
                         "size-nan", "package-type", "package-digest"])  # fmt: skip
    if choice.startswith("size-"):
        repo.sizes = {"size-small": "small", "size-huge": "huge", "size-nan": "not-a-number"}[choice]
    elif choice == "package-type":
        _some_package(rng, repo).checksum_type = rng.choice(["md5", "crc32", None, ""])
    elif choice == "package-digest":
        _some_package(rng, repo).checksum = rng.choice(["abc", "g" * 64, "", "0" * 63])
    else:
        repo.checksums = choice
    return f"checksum: {choice}"


def _two_primaries(xml: bytes) -> bytes:
    start = xml.find(b'<data type="primary">')
    end = xml.find(b"</data>", start)
    if start < 0 or end < 0:
        return xml
    return xml.replace(b"</repomd>", xml[start : end + len(b"</data>")] + b"</repomd>")


def mutate_structure(rng: random.Random, repo: Repo) -> str:
    choice = rng.choice([
        "filelists as primary", "not xml", "empty primary", "empty repomd", "zst", "unknown suffix",
        "href traversal", "href absolute", "href url", "href control", "404 primary", "500 repomd",
        "redirect loop", "redirect with a big body", "length lie short", "length lie long", "length huge",
        "cut body", "duplicate version", "junk at root", "two primaries", "repomd wrong root", "utf16",
        "not utf8", "cdata name",
    ])  # fmt: skip
    primary = f"repodata/{repo.primary_name}{SUFFIX[repo.compression]}"
    if choice == "filelists as primary":
        repo.primary_href = "repodata/filelists.xml.gz"
    elif choice == "not xml":
        repo.xml_edits.append(lambda xml: b"this is not XML at all\n" * 100)
    elif choice == "empty primary":
        repo.primary_body, repo.primary_open = b"", b""
    elif choice == "empty repomd":
        repo.repomd_edits.append(lambda xml: b"")
    elif choice == "zst":
        repo.primary_suffix = ".xml.zst"
    elif choice == "unknown suffix":
        repo.primary_suffix = ".xml.lz4"
    elif choice.startswith("href "):
        repo.primary_href = {"href traversal": "../../../etc/passwd", "href absolute": "/etc/passwd",
                             "href url": "http://127.0.0.1:9/primary.xml.gz",
                             "href control": "repodata/pri\nmary.xml.gz"}[choice]  # fmt: skip
    elif choice == "404 primary":
        repo.transport[primary] = {"status": 404}
    elif choice == "500 repomd":
        repo.transport["repodata/repomd.xml"] = {"status": 500}
    elif choice == "redirect loop":
        repo.transport[primary] = {"status": 302, "location": "@self"}
    elif choice == "redirect with a big body":  # a client that reads redirect bodies reads 64 MB
        repo.transport[primary] = {"status": 302, "location": "/nowhere", "body": _big_body()}
    elif choice == "length lie short":
        repo.transport[primary] = {"content_length": 10}
    elif choice == "length lie long":
        repo.transport["repodata/repomd.xml"] = {"content_length": 10**6}
    elif choice == "length huge":
        repo.transport[primary] = {"content_length": 10**12, "cut_after": 0}
    elif choice == "cut body":
        repo.transport[primary] = {"cut_after": 40}
    elif choice == "duplicate version":
        _some_package(rng, repo).extra = '<version epoch="0" ver="9" rel="9"/>'
    elif choice == "junk at root":
        repo.xml_edits.append(
            lambda xml: xml.replace(b"</metadata>", b"<junk><x/></junk>" * 500 + b"</metadata>")
        )
    elif choice == "two primaries":
        repo.repomd_edits.append(_two_primaries)
    elif choice == "repomd wrong root":
        repo.repomd_edits.append(
            lambda xml: xml.replace(b"<repomd ", b"<metadata ").replace(b"</repomd>", b"</metadata>")
        )
    elif choice == "utf16":
        repo.xml_edits.append(
            lambda xml: xml.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
        )
    elif choice == "not utf8":
        repo.xml_edits.append(lambda xml: xml.replace(b"A package.", b"\xff\xfe\xfa", 1))
    else:
        repo.xml_edits.append(
            lambda xml: xml.replace(b"<name>", b"<name><![CDATA[", 1).replace(b"</name>", b"]]></name>", 1)
        )
    return choice


ODD_VERSIONS = ["1.0~rc1", "1.0^git1", "1.0^", "1.0~", "00010", "1.0a", "a.b.c", "1__2", "9" * 200,
                "1." * 120 + "1", "2.0+dfsg", "1%{?dist}", "~~", "^^", "0"]  # fmt: skip


def mutate_versions(rng: random.Random, repo: Repo) -> str:
    for _ in range(rng.randrange(1, 5)):
        pkg = _some_package(rng, repo)
        pkg.ver = rng.choice(ODD_VERSIONS)
        pkg.epoch = rng.choice(["0", "1", "4294967295", "0000000001"])
        pkg.source = f"{pkg.name}-{pkg.ver}-{pkg.rel}.src.rpm" if rng.random() < 0.5 else pkg.source
    return "odd versions"


MUTATORS: list[tuple[str, int, Callable[..., str]]] = [
    ("bomb", 10, mutate_bomb),
    ("entity", 10, mutate_entity),
    ("drip", 3, mutate_drip),
    ("damage", 16, mutate_damage),
    ("huge", 14, mutate_huge),
    ("missing", 10, mutate_missing),
    ("checksum", 10, mutate_checksum),
    ("structure", 14, mutate_structure),
    ("versions", 13, mutate_versions),
]
FAMILIES = [name for name, _, _ in MUTATORS]


def make_case(seed: int, index: int) -> Case:
    rng = random.Random(f"kiln-metadata-fuzz/{seed}/{index}")
    first, second = base_repos(rng)
    case = Case(seed, index, first, second)
    if rng.random() < 0.05:  # some cases stay valid: the reader must accept them
        case.mutations.append("none")
        return case
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name, _, mutate = rng.choices(MUTATORS, weights=[w for _, w, _ in MUTATORS])[0]
        target = "first" if rng.random() < 0.75 else "second"
        repo = case.first if target == "first" else case.second
        try:
            label = mutate(rng, repo, case) if name == "drip" else mutate(rng, repo)
        except _Skip:
            continue
        case.mutations.append(f"{target}: {name}: {label}")
    return case


# --- running a case ------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    index: int
    category: str
    seconds: float
    detail: str
    mutations: list[str]
    peak_rss_kb: int  # the worker's peak RSS so far (ru_maxrss)
    signature: tuple[str, str, str] | None = None
    start_rss_kb: int = 0  # the worker's RSS when it was ready, before its first case
    rise_rss_kb: int = 0  # how far this case raised the worker's peak RSS


def run_case(server: RepoServer, case: Case) -> CaseResult:
    """Both repos read and compared, in this process; classified, never raises (but BaseException)."""
    from builder.arch import Arch
    from builder.errors import ExitCode, KilnError
    from builder.rpm.missing import find_missing
    from builder.rpm.repometa import MetadataLimits
    from builder.rpm.source import repo_packages

    prefix = f"c{case.index}"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limit = MetadataLimits(deadline_s=case.deadline_s, read_timeout_s=min(5.0, case.deadline_s))
    urls = {}
    for name, repo in (("first", case.first), ("second", case.second)):
        server.put(f"{prefix}/{name}", repo.files())
        urls[name] = server.url(f"{prefix}/{name}")
    started = time.monotonic()
    category, detail, signature = "ok", "", None
    try:
        first = repo_packages(urls["first"], limit=limit)
        second = repo_packages(urls["second"], limit=limit)
        report = find_missing(first, second, Arch.parse(ARCH))
        detail = f"{len(report)} to rebuild, {len(report.noarch_only)} noarch only"
    except KilnError as exc:
        message = str(exc)
        named = any(url in message for url in urls.values())
        category = "refusal" if exc.exit_code == ExitCode.FAILED and named else "unlocated"
        detail = f"exit {int(exc.exit_code)}: {message[:500]}"
    except Exception as exc:  # a traceback is exactly what is counted
        category, signature = "traceback", traceback_signature(exc)
        detail = "".join(traceback.format_exception(exc))[-6000:]
    finally:
        server.drop(prefix)
    seconds = time.monotonic() - started
    if seconds > 2 * case.deadline_s + HANG_MARGIN_S:
        category, detail = "hang", f"{seconds:.1f} s (deadline {case.deadline_s:g} s per repo); {detail}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = CaseResult(case.index, category, seconds, detail, case.mutations, peak, signature)
    result.rise_rss_kb = peak - peak_before
    return result


# --- workers --------------------------------------------------------------------------------------------


def _worker(conn: Connection, seed: int, memory_mb: int) -> None:
    limit_process(memory_mb)
    # Kiln's modules imported before the start RSS is read: what grows after is the cases'.
    import builder.rpm.missing
    import builder.rpm.source  # noqa: F401

    with RepoServer() as server:
        start_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        done = 0
        while True:
            try:
                index = conn.recv()
            except (EOFError, OSError):
                return
            if index is None:
                return
            try:
                result = run_case(server, make_case(seed, index))
            except Exception as exc:  # the fuzzer's own trouble: say so
                detail = "".join(traceback.format_exception(exc))[-3000:]
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                result = CaseResult(index, "traceback", 0.0, f"fuzzer: {detail}", [], peak)
            result.start_rss_kb = start_rss_kb
            conn.send(result)
            done += 1
            if done % 50 == 0:
                gc.collect()


@dataclass
class Totals:
    cases: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    signatures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failures: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_kb: int = 0  # the highest peak RSS of a worker
    growth_rss_kb: int = 0  # the most a worker's peak RSS rose over its RSS when it was ready
    biggest_rise: tuple[int, int, list[str]] = (0, -1, [])  # (KiB, case, its mutations)
    slowest: tuple[float, int] = (0.0, -1)

    def line(self) -> str:
        c = self.counts
        return (
            f"cases {self.cases}: ok {c['ok']}, clean refusals (exit 4, URL named) {c['refusal']}, "
            f"unlocated refusals {c['unlocated']}, tracebacks {c['traceback']}, hangs {c['hang']} in "
            f"{self.seconds:.1f}s; peak RSS of a worker {self.peak_rss_kb / 1024:.0f} MiB, at most "
            f"{self.growth_rss_kb / 1024:.0f} MiB over its start (slowest case {self.slowest[0]:.2f}s: "
            f"#{self.slowest[1]})"
        )


def run(
    cases: int,
    *,
    seed: int = 1,
    start: int = 0,
    jobs: int | None = None,
    out: Path | None = None,
    memory_mb: int = MEMORY_MB,
) -> Totals:
    """Run cases ``start .. start+cases-1`` of ``seed`` on ``jobs`` worker processes."""
    jobs = jobs or os.cpu_count() or 1
    warm_up()
    totals = Totals()
    started = time.monotonic()
    run_cases(
        range(start, start + cases),
        jobs=jobs,
        target=_worker,
        args_for=lambda slot: (seed, memory_mb),
        deadline_s=2 * DEADLINE_S + 30,  # a worker that does not answer by then is hung, killed
        died=lambda index, code, seconds: CaseResult(
            index, "traceback", seconds, f"worker died (exit {code})", [], 0
        ),
        hung=lambda index, seconds: CaseResult(index, "hang", seconds, "the worker stopped answering", [], 0),
        record=lambda result: _record(totals, result, seed, out),
    )
    totals.seconds = time.monotonic() - started
    return totals


def _record(totals: Totals, result: CaseResult, seed: int, out: Path | None) -> None:
    totals.cases += 1
    totals.counts[result.category] += 1
    totals.peak_rss_kb = max(totals.peak_rss_kb, result.peak_rss_kb)
    if result.start_rss_kb:
        totals.growth_rss_kb = max(totals.growth_rss_kb, result.peak_rss_kb - result.start_rss_kb)
    if result.rise_rss_kb > totals.biggest_rise[0]:
        totals.biggest_rise = (result.rise_rss_kb, result.index, result.mutations)
    if result.signature is not None:
        totals.signatures[result.signature] += 1
    if result.seconds > totals.slowest[0]:
        totals.slowest = (result.seconds, result.index)
    if result.category in FAILURES:
        totals.failures.append(result)
        if out is not None:
            save_failure(out, seed, result)


def save_failure(out: Path, seed: int, result: CaseResult) -> Path:
    """The failing case's files (as served), its mutations and what happened, under ``out``."""
    case = make_case(seed, result.index)
    folder = out / f"{result.category}-{seed}-{result.index}"
    for name, repo in (("first", case.first), ("second", case.second)):
        try:
            files = repo.files()
        except Exception as exc:  # the fuzzer's own mutation failed: the report says so
            files = {"fuzzer-error.txt": Served(str(exc).encode())}
        for path, served in files.items():
            target = folder / name / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(served.body)
    report = {
        "seed": seed,
        "index": result.index,
        "category": result.category,
        "mutations": case.mutations,
        "seconds": round(result.seconds, 3),
        "detail": result.detail,
        "replay": (
            f"python -m tests.support.metadata_fuzz --seed {seed} --start {result.index} --cases 1 --out DIR"
        ),
    }
    (folder / "case.json").write_text(json.dumps(report, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.metadata_fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cases", type=int, default=1000, help="how many cases (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="the seed: cases are a function of (seed, index)")
    parser.add_argument("--start", type=int, default=0, help="the first case index (to replay one)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    parser.add_argument("--out", type=Path, default=None, help="write each failure (with its input) here")
    parser.add_argument("--memory-mb", type=int, default=MEMORY_MB, help="address-space limit per worker")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    totals = run(
        args.cases, seed=args.seed, start=args.start, jobs=args.jobs, out=args.out, memory_mb=args.memory_mb
    )
    for signature, count in totals.signatures.most_common():
        print(f"  traceback x{count}: {signature[0]} in {signature[1]} {signature[2]}()")
    for failure in totals.failures[:10]:
        print(f"  #{failure.index} {failure.category}: {failure.mutations}: {failure.detail[-300:]}")
    rise, index, mutations = totals.biggest_rise
    print(f"  the case that raised a worker's peak RSS most: #{index} by {rise / 1024:.0f} MiB: {mutations}")
    print(totals.line())
    if totals.failures and args.out is not None:
        print(f"failures written under {args.out}")
    return 1 if totals.failures else 0


if __name__ == "__main__":
    sys.exit(main())
