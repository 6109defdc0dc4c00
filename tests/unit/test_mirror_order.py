"""Mirrors receive packages first and metadata last; S3 sync skips what is already there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builder.publishers.mirror import S3Mirror, _upload_order

PRIMARY = "0a1b-primary.xml.gz"
FILELISTS = "9f8e-filelists.xml.gz"


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """An arch directory as RepoPublisher leaves it: repodata is a symlink into .meta-<id>."""
    root = tmp_path / "hpc" / "rocky" / "9" / "x86_64"
    for rel, data in {
        "Packages/a/alpha-1.0-1.x86_64.rpm": b"A" * 10,
        "Packages/z/zeta-2.0-1.x86_64.rpm": b"Z" * 20,
        f".meta-1/repodata/{PRIMARY}": b"p" * 5,
        f".meta-1/repodata/{FILELISTS}": b"f" * 6,
        ".meta-1/repodata/repomd.xml": b"<repomd/>",
        ".meta-1/repodata/repomd.xml.asc": b"-----BEGIN PGP SIGNATURE-----",
        ".meta-0/repodata/repomd.xml": b"<old/>",  # previous metadata, kept for slow readers
        ".incoming-123.part": b"half",
        ".kiln-lock": b"",
        "Packages/a/notes.txt": b"not a package",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "repodata").symlink_to(".meta-1/repodata")
    return root


EXPECTED_KEYS = [
    "Packages/a/alpha-1.0-1.x86_64.rpm",
    "Packages/z/zeta-2.0-1.x86_64.rpm",
    f"repodata/{PRIMARY}",
    f"repodata/{FILELISTS}",
    "repodata/repomd.xml.asc",
    "repodata/repomd.xml",
]


def test_upload_order_packages_then_metadata_then_signature_then_repomd(repo_dir):
    order = _upload_order(repo_dir)
    assert [key for _, key in order] == EXPECTED_KEYS


def test_upload_order_reads_the_current_metadata_through_the_symlink(repo_dir):
    files = dict((key, path) for path, key in _upload_order(repo_dir))
    assert files["repodata/repomd.xml"].read_bytes() == b"<repomd/>"
    assert all(path.is_file() for path in files.values())


def test_upload_order_without_signature_still_ends_with_repomd(repo_dir):
    (repo_dir / "repodata" / "repomd.xml.asc").unlink()
    keys = [key for _, key in _upload_order(repo_dir)]
    assert "repodata/repomd.xml.asc" not in keys
    assert keys[-1] == "repodata/repomd.xml"


class FakePaginator:
    def __init__(self, objects: dict[str, int], page_size: int = 2):
        self.objects = objects
        self.page_size = page_size

    def paginate(self, Bucket: str, Prefix: str):  # boto3 spells these in CamelCase
        keys = sorted(k for k in self.objects if k.startswith(Prefix))
        for start in range(0, max(len(keys), 1), self.page_size):
            chunk = keys[start : start + self.page_size]
            yield {"Contents": [{"Key": k, "Size": self.objects[k]} for k in chunk]} if chunk else {}


class FakeS3:
    """The boto3 S3 client calls S3Mirror makes, recorded."""

    def __init__(self, buckets: dict[str, dict[str, int]] | None = None):
        self.buckets = buckets if buckets is not None else {}
        self.created: list[str] = []
        self.uploads: list[tuple[str, str, str]] = []

    def list_buckets(self) -> dict[str, Any]:
        return {"Buckets": [{"Name": name} for name in self.buckets]}

    def create_bucket(self, Bucket: str) -> None:
        self.created.append(Bucket)
        self.buckets[Bucket] = {}

    def get_paginator(self, operation: str) -> FakePaginator:
        assert operation == "list_objects_v2"
        return FakePaginator(self.buckets.get("kiln", {}))

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        assert Path(filename).is_file()
        self.uploads.append((filename, bucket, key))
        self.buckets[bucket][key] = Path(filename).stat().st_size


def test_sync_creates_a_missing_bucket_and_uploads_everything_in_order(repo_dir):
    client = FakeS3()
    result = S3Mirror(client, "kiln", prefix="/mirror/").sync(repo_dir, "/hpc/rocky/9/x86_64/")
    assert client.created == ["kiln"]
    expected = [f"mirror/hpc/rocky/9/x86_64/{k}" for k in EXPECTED_KEYS]
    assert [key for _, _, key in client.uploads] == expected
    assert {bucket for _, bucket, _ in client.uploads} == {"kiln"}
    assert result.uploaded == tuple(expected)
    assert result.skipped == 0


def test_sync_does_not_create_an_existing_bucket(repo_dir):
    client = FakeS3({"kiln": {}, "other": {}})
    S3Mirror(client, "kiln").sync(repo_dir, "hpc/rocky/9/x86_64")
    assert client.created == []


def test_second_sync_sends_only_repomd_and_its_signature(repo_dir):
    client = FakeS3()
    mirror = S3Mirror(client, "kiln")
    mirror.sync(repo_dir, "hpc/rocky/9/x86_64")
    client.uploads.clear()
    result = mirror.sync(repo_dir, "hpc/rocky/9/x86_64")
    assert [key for _, _, key in client.uploads] == [
        "hpc/rocky/9/x86_64/repodata/repomd.xml.asc",
        "hpc/rocky/9/x86_64/repodata/repomd.xml",
    ]
    assert result.skipped == 4


def test_sync_resends_objects_whose_size_differs(repo_dir):
    base = "hpc/rocky/9/x86_64"
    client = FakeS3(
        {
            "kiln": {
                f"{base}/Packages/a/alpha-1.0-1.x86_64.rpm": 10,  # same size: skipped
                f"{base}/Packages/z/zeta-2.0-1.x86_64.rpm": 3,  # truncated upload: resent
                f"{base}/repodata/{PRIMARY}": 5,
                f"{base}/repodata/{FILELISTS}": 6,
                f"{base}/repodata/repomd.xml": len(b"<repomd/>"),  # same size, always resent
                f"{base}/repodata/repomd.xml.asc": len(b"-----BEGIN PGP SIGNATURE-----"),
                "elsewhere/Packages/a/alpha-1.0-1.x86_64.rpm": 10,
            }
        }
    )
    result = S3Mirror(client, "kiln").sync(repo_dir, base)
    assert [key for _, _, key in client.uploads] == [
        f"{base}/Packages/z/zeta-2.0-1.x86_64.rpm",
        f"{base}/repodata/repomd.xml.asc",
        f"{base}/repodata/repomd.xml",
    ]
    assert result.skipped == 3


def test_objects_under_another_prefix_do_not_count(repo_dir):
    # Same relative keys in a different repo path must not make this sync skip anything.
    other = {f"hpc/rocky/8/x86_64/{k}": 10 for k in EXPECTED_KEYS}
    client = FakeS3({"kiln": other})
    result = S3Mirror(client, "kiln").sync(repo_dir, "hpc/rocky/9/x86_64")
    assert result.skipped == 0
    assert len(client.uploads) == len(EXPECTED_KEYS)
