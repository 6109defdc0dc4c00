"""Repo metadata read as hostile input (builder/rpm/repometa.py, source.py ``repo_packages`` and
``download``): limits on bytes, ratio, tokens, fields and time; no DTDs or entities; every breach a
``RemoteDataError`` (exit 4) naming the URL, never an assert or an internal error. Served over
loopback by the metadata fuzzer's server (tests/support/metadata_fuzz.py)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import time
from pathlib import Path

import pytest
import zstandard

from builder import limits
from builder.errors import ExitCode, InvalidInput
from builder.rpm.repometa import (
    DEADLINE_VARIABLE,
    Decompressor,
    MetadataLimits,
    PrimaryReader,
    RemoteDataError,
    parse_repomd,
)
from builder.rpm.source import download, repo_packages
from tests.support.metadata_fuzz import (
    BILLION_LAUGHS,
    Pkg,
    Repo,
    RepoServer,
    Served,
    gzip_bomb,
    primary_xml,
)


def _pkg(label: str = "foo", **changes: object) -> Pkg:
    """A package named ``label``, then ``changes`` (any Pkg field, the name too)."""
    pkg = Pkg(label, "x86_64", "0", "1.0", "1.el9", f"{label}-1.0-1.el9.src.rpm", [label], ["libc.so.6()"])
    for key, value in changes.items():
        setattr(pkg, key, value)
    return pkg


def _read(xml: bytes, piece: int = 7_000) -> list:
    reader = PrimaryReader()
    for start in range(0, len(xml), piece):
        reader.feed(xml[start : start + piece])
    return reader.close()


@pytest.fixture
def server():
    with RepoServer() as running:
        yield running


def _serve(server: RepoServer, repo: Repo, prefix: str = "r") -> str:
    server.put(prefix, repo.files())
    return server.url(prefix)


# --- the XML ---------------------------------------------------------------------------------------------


def test_a_valid_primary_read_in_small_pieces_gives_every_package_and_field():
    xml = primary_xml(
        [_pkg("foo", epoch="2"), _pkg("foo-doc", arch="noarch", source="foo-1.0-1.el9.src.rpm")]
    )
    foo, doc = _read(xml, piece=13)
    assert (foo.name, foo.arch, foo.evr, foo.sourcerpm) == (
        "foo",
        "x86_64",
        ("2", "1.0", "1.el9"),
        foo.sourcerpm,
    )
    assert foo.href == "Packages/foo-1.0-1.el9.x86_64.rpm" and foo.checksum[0] == "sha256"
    assert foo.provides == ("foo",) and foo.requires == ("libc.so.6()",)
    assert doc.arch == "noarch"


@pytest.mark.parametrize(
    ("doctype", "reference", "refusal"),
    [
        (BILLION_LAUGHS, "&lol9;", "has a DOCTYPE"),
        ('<!DOCTYPE metadata [<!ENTITY ext SYSTEM "file:///etc/passwd">]>', "&ext;", "has a DOCTYPE"),
        ('<!DOCTYPE metadata SYSTEM "http://127.0.0.1:9/x.dtd">', "", "has a DOCTYPE"),
        ("", "&ext;", "undefined entity"),
    ],
    ids=["billion-laughs", "external-file", "external-dtd", "undeclared"],
)
def test_dtds_and_entities_are_refused_before_anything_expands(doctype, reference, refusal):
    xml = primary_xml([_pkg()])
    head, _, rest = xml.partition(b"?>\n")
    xml = head + b"?>\n" + doctype.encode() + rest.replace(b"A package.", reference.encode())
    started = time.monotonic()
    with pytest.raises(RemoteDataError, match=refusal) as refused:
        _read(xml)
    assert time.monotonic() - started < 1
    assert "root:" not in str(refused.value)  # /etc/passwd was never read into anything


def test_a_package_without_a_version_is_refused_naming_the_package():
    with pytest.raises(RemoteDataError, match=r"package #2 'bar': no <version>"):
        _read(primary_xml([_pkg("foo"), _pkg("bar", has_version=False)]))


@pytest.mark.parametrize(
    ("field", "value", "refusal"),
    [
        ("ver", "9" * 5000, "version '9999.*longer than 256 characters"),
        ("ver", ".".join(["1"] * 300_000), "version '1.1.1.*longer than 256 characters"),
        ("rel", None, "no release"),
        ("epoch", "99999999999", "epoch '99999999999' is longer than 10 characters"),
        ("epoch", "1a", "epoch '1a' has characters rpm does not allow"),
        ("name", "a\nmatrix: {}", r"<name> 'a\\nmatrix: \{\}' has characters rpm does not allow"),
        ("name", None, "no <name>"),
        ("href", "../../etc/passwd", r"leaves the repo \(\.\.\)"),
        ("href", "http://elsewhere/x.rpm", "is not a path inside the repo"),
        ("checksum_type", "md5", "checksum type 'md5' is not one of"),
        ("checksum", "0" * 63, "is not a sha256 hex digest"),
        ("provides", ["p"] * 20_001, "more than 20,000 provides or requires"),
        ("extra", "<x>" * 40 + "</x>" * 40, "nested deeper than 32"),
    ],
)
def test_a_field_missing_too_long_or_outside_rpms_characters_is_refused(field, value, refusal):
    started = time.monotonic()
    with pytest.raises(RemoteDataError, match=refusal):
        _read(primary_xml([_pkg(**{field: value})]))
    assert time.monotonic() - started < 2  # a 300,000-segment version costs no quadratic compare


def test_a_token_over_a_megabyte_is_refused_before_the_parser_holds_it():
    xml = primary_xml([_pkg(extra="<junk>" + "x" * (limits.MAX_XML_TOKEN_BYTES + 1) + "</junk>")])
    with pytest.raises(RemoteDataError, match=r"XML token .* over 1,048,576 bytes"):
        _read(xml, piece=64 << 10)


def test_more_packages_than_the_limit_are_refused():
    reader = PrimaryReader(MetadataLimits(packages=3))
    with pytest.raises(RemoteDataError, match="more than 3 packages"):
        reader.feed(primary_xml([_pkg(f"p{i}") for i in range(4)]))


def test_another_document_served_as_primary_is_refused():
    with pytest.raises(RemoteDataError, match=r"not primary metadata .*filelists"):
        _read(b'<filelists xmlns="http://linux.duke.edu/metadata/filelists"/>')


def test_repomd_gives_primarys_place_checksums_and_sizes_and_refuses_what_it_cannot_trust():
    repomd = Repo([_pkg()]).files()["repodata/repomd.xml"].body
    ref = parse_repomd(repomd)
    assert ref.href == "repodata/primary.xml.gz" and ref.checksum and ref.checksum[0] == "sha256"
    assert ref.size and ref.open_size
    for changed, refusal in [
        (repomd.replace(b'type="primary"', b'type="other"'), "lists no primary metadata"),
        (repomd.replace(b"repodata/primary.xml.gz", b"/etc/passwd"), "is not a path inside the repo"),
        (b'<?xml version="1.0"?>' + BILLION_LAUGHS.encode() + b"<repomd/>", "has a DOCTYPE"),
    ]:
        with pytest.raises(RemoteDataError, match=refusal):
            parse_repomd(changed)


# --- decompression ---------------------------------------------------------------------------------------


def _inflate(decompressor: Decompressor, data: bytes, chunk: int = 64 << 10) -> int:
    size = 0
    for start in range(0, len(data), chunk):
        size += sum(len(p) for p in decompressor.feed(data[start : start + chunk]))
    return size + sum(len(p) for p in decompressor.finish())


def test_a_gzip_bomb_is_refused_at_the_ratio_long_before_it_grows():
    # 3 GB of whitespace inside <metadata> in a ~3 MB gzip member (the issue's reproducer).
    bomb = gzip_bomb(b"<metadata>", b" " * (1 << 20), 3000, b"</metadata>")
    decompressor = Decompressor(".gz", MetadataLimits())
    with pytest.raises(RemoteDataError, match=r"decompresses more than 100x .*: a decompression bomb"):
        _inflate(decompressor, bomb)
    assert decompressor.bytes_out <= limits.DECOMPRESSION_RATIO_FLOOR_BYTES + (256 << 10)


def test_decompressed_bytes_over_the_limit_or_over_repomds_open_size_are_refused():
    data = gzip.compress(b"x" * 300_000)
    with pytest.raises(RemoteDataError, match="more than 100,000 bytes"):
        _inflate(Decompressor(".gz", MetadataLimits(xml_bytes=100_000)), data)
    with pytest.raises(RemoteDataError, match=r"more than the 1,000 bytes repomd.xml says"):
        _inflate(Decompressor(".gz", MetadataLimits(), declared_size=1_000), data)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def test_a_zstd_bomb_is_refused_at_the_ratio_long_before_it_grows():
    # 3 GB of zeros-like whitespace in ~100 KB of zstd (~32,000x: RLE blocks), fed as HTTP chunks.
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    bomb = compressor.compress(b"<metadata>")
    for _ in range(3000):
        bomb += compressor.compress(b" " * (1 << 20))
    bomb += compressor.compress(b"</metadata>") + compressor.flush()
    assert len(bomb) < 1 << 20
    decompressor = Decompressor(".zst", MetadataLimits())
    with pytest.raises(RemoteDataError, match=r"decompresses more than 100x .*: a decompression bomb"):
        _inflate(decompressor, bomb, chunk=256 << 10)
    # No more than one slice's output (ZSTD_INPUT_BYTES: at most ~16 MiB) past the floor.
    assert decompressor.bytes_out <= limits.DECOMPRESSION_RATIO_FLOOR_BYTES + (17 << 20)


def test_a_zstd_frame_asking_for_a_window_over_the_limit_is_refused():
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28, enable_ldm=True)
    writer = zstandard.ZstdCompressor(compression_params=params).compressobj()  # no content size
    data = writer.compress(b"<metadata/>") + writer.flush()
    with pytest.raises(RemoteDataError, match=r"not valid compressed data .*too much memory"):
        _inflate(Decompressor(".zst", MetadataLimits()), data)


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2", ".zst", ".xml"])
def test_every_compression_reads_concatenated_members_whole(suffix):
    parts = [b"<metadata>" + b"a" * 500_000, b"b" * 500_000 + b"</metadata>"]
    squeeze = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress, ".zst": _zstd,
               ".xml": bytes}[suffix]  # fmt: skip
    data = b"".join(squeeze(p) for p in parts) if suffix != ".xml" else b"".join(parts)
    assert _inflate(Decompressor(suffix, MetadataLimits()), data, chunk=1000) == 1_000_021


@pytest.mark.parametrize(
    ("suffix", "data", "refusal"),
    [
        # mtime=0: the same bytes whenever it is collected (each xdist worker collects on its own)
        (".gz", gzip.compress(b"<metadata/>" * 1000, mtime=0)[:-30], "truncated"),
        (".xz", b"\xfd7zXZ\x00" + b"\xff" * 100, "not valid compressed data"),
        (".zst", _zstd(b"<metadata/>" * 1000)[:-5], "truncated"),
        (".zst", gzip.compress(b"<metadata/>", mtime=0), "not valid compressed data"),
        (".lz4", b"", "unknown metadata compression '.lz4'"),
        (".gz", b"", "empty file"),
    ],
    ids=["gz-truncated", "xz-garbage", "zst-truncated", "zst-given-gzip", "lz4-unknown", "gz-empty"],
)
def test_damaged_empty_or_unreadable_compression_is_refused(suffix, data, refusal):
    with pytest.raises(RemoteDataError, match=refusal):
        _inflate(Decompressor(suffix, MetadataLimits()), data)


def test_an_xz_header_asking_for_more_memory_than_the_limit_is_refused():
    data = lzma.compress(b"<metadata/>", format=lzma.FORMAT_ALONE, filters=[
        {"id": lzma.FILTER_LZMA1, "dict_size": 1 << 30}])  # fmt: skip
    with pytest.raises(RemoteDataError, match=r"not valid compressed data .*[Mm]emory"):
        _inflate(Decompressor(".xz", MetadataLimits()), data)


# --- over HTTP ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "zst"])
def test_a_repo_is_read_over_http_with_its_checksums_verified(server, compression):
    url = _serve(server, Repo([_pkg("foo"), _pkg("bar", epoch="3")], compression=compression))
    assert {p.name: p.epoch for p in repo_packages(url)} == {"foo": "0", "bar": "3"}


@pytest.mark.parametrize(
    ("checksums", "refusal"),
    [
        ("stale", "sha256 of the file is .*, repomd.xml says"),
        ("open-wrong", "sha256 of the decompressed XML is .*, repomd.xml says"),
        ("md5", "checksum type 'md5' is not one of"),
    ],
)
def test_a_primary_whose_checksum_is_not_repomds_is_refused_naming_its_url(server, checksums, refusal):
    url = _serve(server, Repo([_pkg()], checksums=checksums))
    with pytest.raises(RemoteDataError, match=refusal) as refused:
        repo_packages(url)
    assert refused.value.exit_code == ExitCode.FAILED and url in str(refused.value)


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_server_that_drips_is_refused_at_the_whole_download_deadline(server, headers):
    # A byte every 0.2 s never trips a per-read timeout; the deadline covers the whole download.
    repo = Repo([_pkg()])
    repo.transport["repodata/repomd.xml"] = {"drip_s": 0.2, "drip_headers": headers}
    url = _serve(server, repo)
    started = time.monotonic()
    with pytest.raises(RemoteDataError, match=r"not read within 1 s \(the deadline for the whole download"):
        repo_packages(url, limit=MetadataLimits(deadline_s=1.0, read_timeout_s=1.0))
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("path", "changes", "refusal"),
    [
        ("repodata/repomd.xml", {"status": 500}, "HTTP 500"),
        ("repodata/primary.xml.gz", {"status": 404}, "HTTP 404"),
        ("repodata/primary.xml.gz", {"cut_after": 40}, "read failed"),
        ("repodata/primary.xml.gz", {"content_length": 10**12, "cut_after": 0}, "over the limit of"),
        ("repodata/primary.xml.gz", {"status": 302, "location": "@self"}, "redirects"),
    ],
)
def test_http_failures_are_exit_4_naming_the_url(server, path, changes, refusal):
    repo = Repo([_pkg()])
    repo.transport[path] = changes
    url = _serve(server, repo)
    with pytest.raises(RemoteDataError, match=refusal) as refused:
        repo_packages(url)
    assert refused.value.exit_code == ExitCode.FAILED and str(refused.value).startswith(url)


def test_a_download_over_its_byte_cap_is_refused_and_leaves_no_file(server, tmp_path: Path):
    server.put("f", {"big.src.rpm": Served(b"x" * 100_000)})
    target = tmp_path / "big.src.rpm"
    with pytest.raises(RemoteDataError, match="is 100,000 bytes, over the limit of 10,000"):
        download(server.url("f") + "big.src.rpm", target, max_bytes=10_000)
    assert not target.exists()
    expected = ("sha256", hashlib.sha256(b"x" * 100_000).hexdigest())
    assert download(server.url("f") + "big.src.rpm", target, checksum=expected).read_bytes() == b"x" * 100_000


def test_the_deadline_comes_from_the_environment_and_a_bad_value_is_refused():
    assert MetadataLimits.from_environment({}).deadline_s == limits.REPO_METADATA_DEADLINE_S
    assert MetadataLimits.from_environment({DEADLINE_VARIABLE: "2.5"}).deadline_s == 2.5
    for bad in ("soon", "0", "-1", "1e9"):
        with pytest.raises(InvalidInput, match=DEADLINE_VARIABLE):
            MetadataLimits.from_environment({DEADLINE_VARIABLE: bad})
