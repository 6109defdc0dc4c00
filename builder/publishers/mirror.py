"""Copy a local repo tree to a remote mirror, packages first and metadata last.

Order matters to readers of the mirror: a ``repomd.xml`` must never name a file that is not there
yet. So: packages, then the checksum-named metadata files, then ``repomd.xml.asc``, then
``repomd.xml`` itself. Objects already on the mirror with the same size are not sent again.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..host.run import Runner


def _upload_order(repo_dir: Path) -> list[tuple[Path, str]]:
    """(local file, key relative to the repo dir) in the order a mirror must receive them."""
    packages = sorted(p for p in (repo_dir / "Packages").rglob("*.rpm"))
    metadata_dir = (repo_dir / "repodata").resolve()
    metadata = sorted(p for p in metadata_dir.iterdir() if p.name not in ("repomd.xml", "repomd.xml.asc"))
    last = [metadata_dir / "repomd.xml.asc", metadata_dir / "repomd.xml"]
    ordered = [(p, p.relative_to(repo_dir).as_posix()) for p in packages]
    ordered += [(p, f"repodata/{p.name}") for p in [*metadata, *last] if p.exists()]
    return ordered


@dataclass(frozen=True)
class SyncResult:
    uploaded: tuple[str, ...]
    skipped: int


class S3Mirror:
    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def ensure_bucket(self) -> None:
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            self.client.create_bucket(Bucket=self.bucket)

    def _existing_sizes(self, prefix: str) -> dict[str, int]:
        sizes: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                sizes[obj["Key"]] = int(obj["Size"])
        return sizes

    def sync(self, repo_dir: Path, repo_path: str) -> SyncResult:
        """Mirror ``repo_dir`` (an arch directory) to ``<prefix>/<repo_path>/`` in the bucket."""
        self.ensure_bucket()
        base = self._key(repo_path.strip("/"))
        existing = self._existing_sizes(base + "/")
        uploaded, skipped = [], 0
        for path, relative in _upload_order(repo_dir):
            key = f"{base}/{relative}"
            always = relative.startswith("repodata/repomd.xml")
            if not always and existing.get(key) == path.stat().st_size:
                skipped += 1
                continue
            self.client.upload_file(str(path), self.bucket, key)
            uploaded.append(key)
        return SyncResult(tuple(uploaded), skipped)

    def sync_client_files(self, files: list[tuple[Path, str]]) -> SyncResult:
        """What a client needs beside the arch directories (the ``.repo`` file, the public key),
        each to ``<prefix>/<relative>``; sent after the metadata, every time (they are small)."""
        self.ensure_bucket()
        uploaded = []
        for path, relative in files:
            if path.is_file():
                self.client.upload_file(str(path), self.bucket, self._key(relative.strip("/")))
                uploaded.append(self._key(relative.strip("/")))
        return SyncResult(tuple(uploaded), 0)


class RsyncMirror:
    def __init__(self, target: str, runner: Runner | None = None):
        self.target = target.rstrip("/")
        self.runner = runner or Runner()

    def sync(self, repo_dir: Path, repo_path: str) -> SyncResult:
        dest = f"{self.target}/{repo_path.strip('/')}/"
        # Pass 1: packages only. Pass 2: everything, metadata after (rsync sends in name order,
        # and --delay-updates renames all files into place at the end of the pass).
        common = [
            "rsync",
            "-a",
            "--mkpath",  # the repo's directories may not exist on the mirror yet
            "--copy-links",
            "--exclude",
            ".kiln-lock",
            "--exclude",
            ".meta-*",
            "--exclude",
            ".incoming-*",
        ]
        self.runner.run([*common, "--exclude", "repodata", f"{repo_dir}/", dest], timeout=3600)
        self.runner.run([*common, "--delay-updates", f"{repo_dir}/", dest], timeout=3600)
        return SyncResult((dest,), 0)

    def sync_client_files(self, files: list[tuple[Path, str]]) -> SyncResult:
        """The ``.repo`` file and the public key, each to ``<target>/<relative>``."""
        sent = []
        for path, relative in files:
            if path.is_file():
                dest = f"{self.target}/{relative.strip('/')}"
                self.runner.run(["rsync", "-a", "--mkpath", str(path), dest], timeout=600)
                sent.append(dest)
        return SyncResult(tuple(sent), 0)


def add_content_md5_for_delete(client: Any) -> None:
    """Make a boto3 S3 client send Content-MD5 with DeleteObjects.

    botocore >= 1.36 sends a CRC32 checksum instead, and Swift's s3api rejects a multi-object delete
    without Content-MD5 (InvalidRequest: Missing required header for this request: Content-MD5).
    """

    def _add(params: dict[str, Any], **_: Any) -> None:
        body = params.get("body") or b""
        if isinstance(body, str):
            body = body.encode()
        digest = hashlib.md5(body, usedforsecurity=False).digest()  # S3's integrity header
        params["headers"]["Content-MD5"] = base64.b64encode(digest).decode()

    client.meta.events.register("before-call.s3.DeleteObjects", _add)
