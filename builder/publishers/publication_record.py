"""A publication record: what a destination without a query API says about a target it holds.

Glance and the registry answer "is this target's exact input digest published here" from their own
API (image properties, an index annotation). A yum repository and the Bifrost HTTP directory are
plain files served over HTTP, so Kiln leaves one small JSON document there, written **after**
everything it describes is served (packages and signed metadata; the ramdisk's files): its presence
means the publish completed, and a publish killed half-way leaves no record, so the retry publishes
again (each step of which is idempotent). Runners that share nothing ask the destination over HTTP,
never a ledger:

    {"format": 1, "target": "kiln-hello:9:x86_64", "digest": "<input digest>",
     "published_at": 1765140000.0, "files": ["Packages/k/kiln-hello-1.0-1.el9.kiln1.x86_64.rpm", ...]}

The record is read as any fetched data is: size-capped, within a deadline, parsed as JSON, and its
fields checked before they are compared (builder/host/http.py).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ..errors import RemoteDataError
from ..host.http import Deadline, read_all
from ..limits import DESTINATION_ANSWER_DEADLINE_S, HTTP_READ_TIMEOUT_S, MAX_PUBLICATION_RECORD_BYTES

FORMAT = 1


@dataclass(frozen=True)
class PublicationRecord:
    target: str
    digest: str
    published_at: float
    files: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "target": self.target,
            "digest": self.digest,
            "published_at": self.published_at,
            "files": list(self.files),
        }
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def now(cls, target: str, digest: str, files: tuple[str, ...] | list[str] = ()) -> PublicationRecord:
        return cls(target, digest, round(time.time(), 3), tuple(files))

    @classmethod
    def parse(cls, data: bytes, url: str) -> PublicationRecord:
        """The record in ``data`` (fetched from ``url``); RemoteDataError for anything else."""
        try:
            document: Any = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            raise RemoteDataError("not a Kiln publication record (not JSON)", url) from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise RemoteDataError(f"not a Kiln publication record of format {FORMAT}", url)
        target, digest, at = document.get("target"), document.get("digest"), document.get("published_at")
        files = document.get("files", [])
        if (
            not isinstance(target, str)
            or not isinstance(digest, str)
            or isinstance(at, bool)
            or not isinstance(at, (int, float))
            or not isinstance(files, list)
            or not all(isinstance(f, str) for f in files)
        ):
            raise RemoteDataError("a Kiln publication record with a missing or mistyped field", url)
        return cls(target, digest, float(at), tuple(files))

    def names(self, target_id: str, digest: str) -> bool:
        return self.target == target_id and self.digest == digest


def write_record(path: Path, record: PublicationRecord) -> None:
    """``record`` at ``path``, replaced atomically (a reader sees the old record or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(record.to_bytes())
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fetch_record(url: str) -> PublicationRecord | None:
    """The record served at ``url``; None when the server says it is not there (HTTP 404). Any other
    failure (unreachable, over the size cap, past the deadline, malformed) raises RemoteDataError:
    a destination that does not answer is not taken as "not published"."""
    deadline = Deadline.start(DESTINATION_ANSWER_DEADLINE_S)
    try:
        data = read_all(
            url,
            max_bytes=MAX_PUBLICATION_RECORD_BYTES,
            deadline=deadline,
            read_timeout_s=min(HTTP_READ_TIMEOUT_S, DESTINATION_ANSWER_DEADLINE_S),
        )
    except RemoteDataError as exc:
        if exc.http_status == HTTPStatus.NOT_FOUND:
            return None
        raise
    return PublicationRecord.parse(data, url)
