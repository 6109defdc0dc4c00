"""A client pointed at a mirror needs the .repo file and the public key from the mirror too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.publishers.mirror import RsyncMirror, S3Mirror
from tests.unit.test_mirror_order import FakeS3


def _client_files(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "kiln").mkdir()
    (tmp_path / "kiln" / "kiln-el9.repo").write_text("[kiln-el9]\n")
    (tmp_path / "RPM-GPG-KEY-kiln").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    return [
        (tmp_path / "kiln" / "kiln-el9.repo", "kiln/kiln-el9.repo"),
        (tmp_path / "RPM-GPG-KEY-kiln", "RPM-GPG-KEY-kiln"),
    ]


def test_the_s3_mirror_receives_the_repo_file_and_the_key_under_its_prefix(tmp_path):
    client = FakeS3()
    result = S3Mirror(client, "kiln", prefix="mirror").sync_client_files(_client_files(tmp_path))
    assert [key for _, _, key in client.uploads] == ["mirror/kiln/kiln-el9.repo", "mirror/RPM-GPG-KEY-kiln"]
    assert result.uploaded == ("mirror/kiln/kiln-el9.repo", "mirror/RPM-GPG-KEY-kiln")


def test_a_missing_key_file_is_left_out_rather_than_failing_the_publish(tmp_path):
    files = _client_files(tmp_path)
    files[1][0].unlink()
    client = FakeS3()
    S3Mirror(client, "kiln").sync_client_files(files)
    assert [key for _, _, key in client.uploads] == ["kiln/kiln-el9.repo"]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
def test_the_rsync_mirror_receives_the_repo_file_and_the_key(tmp_path):
    target = tmp_path / "mirror"
    source = tmp_path / "src"
    source.mkdir()
    RsyncMirror(str(target)).sync_client_files(_client_files(source))
    assert (target / "kiln" / "kiln-el9.repo").read_text() == "[kiln-el9]\n"
    assert (target / "RPM-GPG-KEY-kiln").is_file()
