"""Read a package's name and arch from its RPM header, without running rpm or reading the payload;
and the digest of what signing leaves alone (``content_sha256``).

Layout (rpm's ``lib/rpmlead.c`` and ``lib/header.c``): a 96-byte lead, then the signature header,
padded to 8 bytes, then the main header. Each header is an 8-byte intro (magic ``8e ad e8``, version,
4 reserved bytes), a big-endian index count and data size, the index entries (tag, type, offset,
count: 16 bytes each) and the data store.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import InvalidInput, Problem

LEAD_MAGIC = b"\xed\xab\xee\xdb"
HEADER_MAGIC = b"\x8e\xad\xe8\x01"
LEAD_SIZE = 96
TAG_NAME = 1000
TAG_ARCH = 1022
TYPE_STRING = 6
MAX_HEADER_BYTES = 256 << 20  # rpm's own limit on a header (HEADER_DATA_MAX)
# What rpmbuild accepts in a package name (rpm's rpmCharCheck for Name): the publisher files the
# package under Packages/<first letter>/, so a name must never be a path.
_NAME = re.compile(r"[A-Za-z0-9_+%{}][A-Za-z0-9._+%{}-]*")
_ARCH = re.compile(r"[A-Za-z0-9_]+")


def header_at(handle: BinaryIO, offset: int, path: Path) -> tuple[int, bytes, bytes]:
    """(size on disk, index bytes, data store) of the header at ``offset``."""
    handle.seek(offset)
    intro = handle.read(16)
    if len(intro) != 16 or intro[:4] != HEADER_MAGIC:
        raise InvalidInput(Problem(f"{path}: not an RPM (no header at byte {offset})"))
    entries, data_size = struct.unpack(">II", intro[8:])
    if entries * 16 + data_size > MAX_HEADER_BYTES:
        raise InvalidInput(Problem(f"{path}: not an RPM (a header of {entries} entries, {data_size} bytes)"))
    index = handle.read(entries * 16)
    data = handle.read(data_size)
    if len(index) != entries * 16 or len(data) != data_size:
        raise InvalidInput(Problem(f"{path}: not an RPM (truncated header at byte {offset})"))
    return 16 + len(index) + len(data), index, data


def _string_tag(index: bytes, data: bytes, tag: int, path: Path) -> str:
    for position in range(0, len(index), 16):
        found, kind, offset, _count = struct.unpack(">iiii", index[position : position + 16])
        if found == tag:
            end = data.find(b"\0", offset)
            if kind != TYPE_STRING or offset < 0 or end < 0:
                break
            return data[offset:end].decode("utf-8", errors="replace")
    raise InvalidInput(Problem(f"{path}: not an RPM (no string tag {tag} in its header)"))


def _main_header_offset(handle: BinaryIO, path: Path) -> int:
    """Where the main header starts: after the lead and the signature header, padded to 8 bytes."""
    if handle.read(4) != LEAD_MAGIC:
        raise InvalidInput(Problem(f"{path}: not an RPM (no RPM lead)"))
    signature_size, _, _ = header_at(handle, LEAD_SIZE, path)
    return LEAD_SIZE + (signature_size + 7) // 8 * 8


def is_rpm(path: Path) -> bool:
    """Whether ``path`` is a file that starts with an RPM lead."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == LEAD_MAGIC
    except OSError:
        return False


def content_sha256(path: Path) -> str:
    """sha256 (lowercase hex) of the main header and the payload: every byte after the lead and
    the signature header. ``rpmsign --addsign`` rewrites only the signature header, so a signed copy
    has the same content digest as the package that was built; a changed header or payload does not."""
    try:
        with path.open("rb") as handle:
            main_offset = _main_header_offset(handle, path)
            header_at(handle, main_offset, path)  # the main header must be there, whole
            digest = hashlib.sha256()
            handle.seek(main_offset)
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidInput(Problem(f"{path}: cannot read it ({exc.strerror or exc})")) from exc
    return digest.hexdigest()


def name_and_arch(path: Path) -> tuple[str, str]:
    """(NAME, ARCH) of an RPM file; InvalidInput naming the file for anything that is not one."""
    try:
        with path.open("rb") as handle:
            _, index, data = header_at(handle, _main_header_offset(handle, path), path)
    except OSError as exc:
        raise InvalidInput(Problem(f"{path}: cannot read it ({exc.strerror or exc})")) from exc
    name, arch = _string_tag(index, data, TAG_NAME, path), _string_tag(index, data, TAG_ARCH, path)
    if not _NAME.fullmatch(name) or not _ARCH.fullmatch(arch):
        raise InvalidInput(
            Problem(f"{path}: not a package name and arch rpm would build: {name!r}, {arch!r}")
        )
    return name, arch
