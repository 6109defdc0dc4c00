"""Build manifests: JSON round trip, artifact checksums, and clear errors for files that are not one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.errors import InvalidInput
from builder.manifest import CHUNK, Artifact, BuildManifest, artifact_for, read_manifest, sha256_file


def make_manifest(base_dir: Path, artifacts: tuple[Artifact, ...] = ()) -> BuildManifest:
    return BuildManifest(
        target="debian-12:bookworm:ppc64le",
        recipe="debian-12",
        kind="guest-image",
        arch="ppc64le",
        release="bookworm",
        variant=None,
        digest="ab" * 32,
        artifacts=artifacts,
        publish={"glance": {"name": "Debian 12", "keep": 3}},
        build={"distro": "debian", "firmware": "uefi"},
        build_id=12,
        source_commit="abc123",
        base_dir=base_dir,
    )


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """A build output directory with one disk image in a subdirectory."""
    out = tmp_path / "out"
    (out / "image").mkdir(parents=True)
    (out / "image" / "debian.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 1000)
    return out


def test_artifact_for_records_relative_path_checksum_and_size(out_dir):
    image = out_dir / "image" / "debian.qcow2"
    artifact = artifact_for(out_dir, image, "image", "disk-image", "qcow2")
    data = image.read_bytes()
    assert artifact == Artifact(
        name="image",
        type="disk-image",
        path="image/debian.qcow2",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        format="qcow2",
    )


def test_artifact_for_refuses_a_file_outside_the_base_dir(out_dir, tmp_path):
    stray = tmp_path / "stray.bin"
    stray.write_bytes(b"x")
    with pytest.raises(ValueError):
        artifact_for(out_dir, stray, "stray", "disk-image")


def test_sha256_file_spans_chunks(tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(1000) * (CHUNK // 1000 + 3)  # a bit more than one chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_write_then_read_round_trips(out_dir):
    artifact = artifact_for(out_dir, out_dir / "image" / "debian.qcow2", "image", "disk-image", "qcow2")
    original = make_manifest(out_dir, (artifact,))
    path = out_dir / "manifest.json"
    original.write(path)
    loaded = read_manifest(path)
    assert loaded == original
    assert loaded.artifacts == (artifact,)
    assert isinstance(loaded.artifacts, tuple)
    assert loaded.publish == {"glance": {"name": "Debian 12", "keep": 3}}
    assert loaded.build_id == 12
    assert loaded.arch_enum is Arch.PPC64LE


def test_written_json_has_relative_paths_and_no_base_dir(out_dir):
    artifact = artifact_for(out_dir, out_dir / "image" / "debian.qcow2", "image", "disk-image", "qcow2")
    path = out_dir / "manifest.json"
    make_manifest(out_dir, (artifact,)).write(path)
    data = json.loads(path.read_text())
    assert "base_dir" not in data
    assert data["artifacts"][0]["path"] == "image/debian.qcow2"
    assert str(out_dir) not in path.read_text()
    assert not (out_dir / "manifest.json.tmp").exists()


def test_read_manifest_resolves_paths_against_its_own_directory(out_dir, tmp_path, monkeypatch):
    artifact = artifact_for(out_dir, out_dir / "image" / "debian.qcow2", "image", "disk-image", "qcow2")
    make_manifest(Path("ignored"), (artifact,)).write(out_dir / "manifest.json")
    # Move the whole output directory and read it through a relative path: still found.
    moved = tmp_path / "moved"
    out_dir.rename(moved)
    monkeypatch.chdir(tmp_path)
    loaded = read_manifest(Path("moved/manifest.json"))
    assert loaded.base_dir == moved.resolve()
    assert loaded.base_dir.is_absolute()
    image = loaded.path_of(loaded.artifacts[0])
    assert image == moved.resolve() / "image" / "debian.qcow2"
    assert sha256_file(image) == loaded.artifacts[0].sha256


def test_base_dir_is_not_part_of_equality(tmp_path):
    assert make_manifest(tmp_path / "a") == make_manifest(tmp_path / "b")


def test_write_replaces_an_existing_manifest(out_dir):
    path = out_dir / "manifest.json"
    path.write_text("old")
    make_manifest(out_dir).write(path)
    assert read_manifest(path).target == "debian-12:bookworm:ppc64le"


def test_missing_manifest_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "manifest.json"
    with pytest.raises(InvalidInput) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert "no such manifest" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        "{}",
        '{"target": "x"}',  # fields missing
        "\udcff",  # not UTF-8 once written with surrogateescape
    ],
)
def test_garbage_manifest_names_the_path(tmp_path, text):
    path = tmp_path / "manifest.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(InvalidInput) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert "not a Kiln build manifest" in str(info.value)


def test_unknown_field_is_refused(out_dir):
    path = out_dir / "manifest.json"
    make_manifest(out_dir).write(path)
    data = json.loads(path.read_text())
    data["surprise"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match="not a Kiln build manifest"):
        read_manifest(path)


def test_bad_artifact_entry_is_refused(out_dir):
    path = out_dir / "manifest.json"
    make_manifest(out_dir).write(path)
    data = json.loads(path.read_text())
    data["artifacts"] = [{"name": "image"}]
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match=str(path)):
        read_manifest(path)


@pytest.mark.parametrize("text", ["null", '"manifest"', "12"])
def test_json_that_is_not_an_object_is_invalid_input(tmp_path, text):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(InvalidInput, match="not a Kiln build manifest"):
        read_manifest(path)


def test_directory_instead_of_manifest_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match=str(tmp_path)):
        read_manifest(tmp_path)
