"""Appendable yum metadata: what Kiln writes must read exactly as createrepo_c's own output does."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder.host.run import Runner
from builder.publishers import repodata
from tests.support.rpms import build_noarch_rpm

pytestmark = pytest.mark.skipif(
    shutil.which("createrepo_c") is None or shutil.which("rpmbuild") is None,
    reason="needs createrepo_c and rpmbuild (scripts/bootstrap.sh installs them)",
)
NS = {"repo": repodata.REPO_NS}
NAMES = ("kiln-md-a", "kiln-md-b", "kiln-md-c", "kiln-md-d")


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    workdir = tmp_path_factory.mktemp("rpms")
    return {name: build_noarch_rpm(workdir, name) for name in NAMES}


def _place(repo_dir: Path, rpm: Path) -> str:
    dest = repo_dir / "Packages" / "k" / rpm.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(rpm, dest)
    return dest.relative_to(repo_dir).as_posix()


def _createrepo(repo_dir: Path, out: Path, *extra: str) -> Path:
    out.mkdir(exist_ok=True)
    argv = ["createrepo_c", "--quiet", "--no-database", "--general-compress-type", "gz", *extra]
    subprocess.run([*argv, "--outputdir", str(out), str(repo_dir)], check=True, capture_output=True)
    return out


def _serve(repo_dir: Path, meta_dir: Path) -> None:
    link = repo_dir / "repodata"
    link.unlink(missing_ok=True)
    link.symlink_to(f"{meta_dir.name}/repodata")


def _documents(meta_dir: Path) -> dict[str, str]:
    """{kind: decompressed XML} as repomd.xml locates them."""
    records = repodata.repomd_records(meta_dir / "repodata" / "repomd.xml")
    return {
        kind: gzip.decompress((meta_dir / records[kind][0]).read_bytes()).decode() for kind in repodata.KINDS
    }


def _entries(text: str) -> list[str]:
    return sorted(re.findall(r"<package[ >].*?</package>\n", text, flags=re.S))


@pytest.fixture
def repo(tmp_path, packages) -> Path:
    """A repo dir with packages a and b, indexed by createrepo_c and repacked by Kiln, served."""
    repo_dir = tmp_path / "repo"
    for name in NAMES[:2]:
        _place(repo_dir, packages[name])
    meta = _createrepo(repo_dir, repo_dir / ".meta-first")
    assert repodata.repack(meta, repo_dir) is not None
    _serve(repo_dir, meta)
    return repo_dir


def test_repack_changes_the_layout_not_one_uncompressed_byte(tmp_path, packages):
    repo_dir = tmp_path / "repo"
    for name in NAMES[:2]:
        _place(repo_dir, packages[name])
    meta = _createrepo(repo_dir, repo_dir / ".meta-x")
    before = _documents(meta)
    index = repodata.repack(meta, repo_dir)
    assert index is not None
    assert _documents(meta) == before
    assert sorted(index.packages) == sorted(f"Packages/k/{packages[n].name}" for n in NAMES[:2])
    # createrepo_c's single-stream files were replaced, not left beside the new ones.
    assert len(list((meta / "repodata").glob("*.xml.gz"))) == 3


def _assert_repomd_describes_the_files(meta: Path) -> None:
    root = ET.parse(meta / "repodata" / "repomd.xml").getroot()
    for data in root.findall("repo:data", NS):
        path = meta / data.find("repo:location", NS).get("href")
        raw = path.read_bytes()
        opened = gzip.decompress(raw)
        assert data.find("repo:checksum", NS).text == hashlib.sha256(raw).hexdigest()
        assert path.name.startswith(hashlib.sha256(raw).hexdigest())
        assert data.find("repo:open-checksum", NS).text == hashlib.sha256(opened).hexdigest()
        assert int(data.find("repo:size", NS).text) == len(raw)
        assert int(data.find("repo:open-size", NS).text) == len(opened)


def test_repomd_checksums_and_sizes_describe_the_files(repo):
    _assert_repomd_describes_the_files((repo / "repodata").resolve().parent)


def test_append_reads_the_same_as_createrepo_c_update(repo, packages, tmp_path):
    current = repodata.load_current(repo)  # read before the new package is placed, as publish does
    assert current is not None
    href = _place(repo, packages["kiln-md-c"])
    new_meta = repo / ".meta-second"
    new_meta.mkdir()
    index = repodata.append(current, repodata.new_entries(repo, [href], Runner()), new_meta)
    assert list(index.packages)[-1] == href and len(index.packages) == 3
    stat = (repo / href).stat()
    assert index.packages[href] == (stat.st_size, stat.st_mtime_ns)
    ours = _documents(new_meta)
    reference = _documents(_createrepo(repo, tmp_path / "reference", "--update"))
    for kind in repodata.KINDS:
        assert 'packages="3"' in ours[kind].split(">", 2)[1]
        assert _entries(ours[kind]) == _entries(reference[kind]), kind
        assert len(_entries(ours[kind])) == 3
    _assert_repomd_describes_the_files(new_meta)
    # Four gzip members per file now: header, the old body, the new entry, footer.
    assert index.files["primary"].body_members == 2


def test_createrepo_c_update_reads_appended_metadata(repo, packages, tmp_path):
    current = repodata.load_current(repo)
    href = _place(repo, packages["kiln-md-c"])
    new_meta = repo / ".meta-second"
    new_meta.mkdir()
    repodata.append(current, repodata.new_entries(repo, [href], Runner()), new_meta)
    _serve(repo, new_meta)
    updated = _createrepo(repo, tmp_path / "updated", "--update", "--update-md-path", str(repo))
    primary = _documents(updated)["primary"]
    assert 'packages="3"' in primary and len(_entries(primary)) == 3


def test_a_long_run_of_appends_is_compacted_into_one_body_member(repo, packages, monkeypatch):
    monkeypatch.setattr(repodata, "MAX_BODY_MEMBERS", 2)
    for step, name in enumerate(NAMES[2:]):
        current = repodata.load_current(repo)
        assert current is not None
        href = _place(repo, packages[name])
        new_meta = repo / f".meta-step{step}"
        new_meta.mkdir()
        index = repodata.append(current, repodata.new_entries(repo, [href], Runner()), new_meta)
        _serve(repo, new_meta)
    assert index.files["primary"].body_members == 1  # 2 after c, then over the limit after d
    documents = _documents(new_meta)
    assert all(len(_entries(documents[kind])) == 4 for kind in repodata.KINDS)
    assert 'packages="4"' in documents["primary"]


def test_load_current_trusts_nothing_that_changed(repo):
    assert repodata.load_current(repo) is not None
    meta = (repo / "repodata").resolve().parent
    primary = next((meta / "repodata").glob("*-primary.xml.gz"))
    original = primary.read_bytes()
    primary.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert repodata.load_current(repo) is None  # not the bytes the index was written for
    primary.write_bytes(original)
    (meta / repodata.INDEX_NAME).write_text("{not json")
    assert repodata.load_current(repo) is None
    (meta / repodata.INDEX_NAME).unlink()
    assert repodata.load_current(repo) is None


def test_load_current_refuses_a_package_replaced_by_a_rename(repo, packages):
    indexed = next((repo / "Packages/k").glob("kiln-md-a-*.rpm"))
    replacement = indexed.with_name(".tmp-replacement")
    shutil.copy2(packages["kiln-md-b"], replacement)
    os.replace(replacement, indexed)  # what rpmsign and a half-done publish do: the directory changes
    assert repodata.load_current(repo) is None
    assert repodata.changed_in_place(repo) == {f"Packages/k/{indexed.name}"}


def test_changed_in_place_compares_every_package(repo):
    indexed = next((repo / "Packages/k").glob("kiln-md-a-*.rpm"))
    assert repodata.changed_in_place(repo) == set()
    os.utime(indexed, ns=(indexed.stat().st_atime_ns, indexed.stat().st_mtime_ns + 1))  # rewritten in place
    assert repodata.changed_in_place(repo) == {f"Packages/k/{indexed.name}"}


def test_load_current_refuses_a_package_nobody_indexed(repo, packages):
    assert repodata.load_current(repo) is not None
    _place(repo, packages["kiln-md-c"])  # a publish that failed half-way, or a copy by hand
    assert repodata.load_current(repo) is None
    assert repodata.changed_in_place(repo) == set()  # added, not changed: --update finds it


def test_load_current_refuses_a_package_removed_by_hand(repo):
    next((repo / "Packages/k").glob("kiln-md-b-*.rpm")).unlink()
    assert repodata.load_current(repo) is None


def test_load_current_refuses_metadata_types_added_by_hand(repo, tmp_path):
    assert repodata.load_current(repo) is not None
    updateinfo = tmp_path / "updateinfo.xml"
    updateinfo.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<updates/>\n')
    served = (repo / "repodata").resolve()
    subprocess.run(["modifyrepo_c", str(updateinfo), str(served)], check=True, capture_output=True)
    assert repodata.load_current(repo) is None


@pytest.mark.parametrize(
    "index_text",
    ["[]", "null", '{"format": 2, "files": {}, "packages": {}}', '{"format": 2, "files": 7}'],
)
def test_load_current_treats_a_malformed_index_as_none(repo, index_text):
    meta = (repo / "repodata").resolve().parent
    (meta / repodata.INDEX_NAME).write_text(index_text)
    assert repodata.load_current(repo) is None


def test_load_current_treats_wrong_member_offsets_as_none(repo):
    meta = (repo / "repodata").resolve().parent
    payload = json.loads((meta / repodata.INDEX_NAME).read_text())
    payload["files"]["primary"]["header_bytes"] = "12"
    (meta / repodata.INDEX_NAME).write_text(json.dumps(payload))
    assert repodata.load_current(repo) is None
    payload["files"]["primary"]["header_bytes"] = 10**9
    (meta / repodata.INDEX_NAME).write_text(json.dumps(payload))
    assert repodata.load_current(repo) is None


def test_metadata_in_a_plain_directory_is_not_appended_to(tmp_path, packages):
    repo_dir = tmp_path / "repo"
    _place(repo_dir, packages["kiln-md-a"])
    _createrepo(repo_dir, repo_dir)  # createrepo_c's usual layout: repo_dir/repodata, no symlink
    assert repodata.load_current(repo_dir) is None


def test_repack_leaves_metadata_with_other_record_types_alone(tmp_path, packages):
    repo_dir = tmp_path / "repo"
    _place(repo_dir, packages["kiln-md-a"])
    meta = _createrepo(repo_dir, repo_dir / ".meta-x")
    updateinfo = tmp_path / "updateinfo.xml"
    updateinfo.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<updates/>\n')
    subprocess.run(["modifyrepo_c", str(updateinfo), str(meta / "repodata")], check=True)
    before = sorted(p.name for p in (meta / "repodata").iterdir())
    assert repodata.repack(meta, repo_dir) is None
    assert sorted(p.name for p in (meta / "repodata").iterdir()) == before
    assert not (meta / repodata.INDEX_NAME).exists()


@pytest.mark.skipif(repodata._createrepo is None, reason="createrepo_c's Python bindings are not installed")
def test_entries_from_the_bindings_equal_those_from_the_tool(repo, packages):
    hrefs = [_place(repo, packages[name]) for name in NAMES[2:]]
    in_process = repodata.new_entries(repo, hrefs, Runner())
    from_tool = repodata._entries_from_tool(repo, hrefs, Runner())
    assert list(in_process.packages) == hrefs
    for kind in repodata.KINDS:
        assert _entries(in_process.xml[kind]) == _entries(from_tool[kind]), kind


def test_split_document_refuses_what_it_does_not_know():
    with pytest.raises(repodata.IndexStale, match="not a <metadata> document"):
        repodata.split_document("primary", "<filelists packages='1'></filelists>")
    with pytest.raises(repodata.IndexStale, match="no packages"):
        repodata.split_document("other", '<otherdata xmlns="x">\n</otherdata>\n')


def test_gzip_members_are_reproducible_and_concatenate_into_one_stream():
    first, second = repodata.gzip_member(b"<a>"), repodata.gzip_member(b"</a>\n")
    assert first == repodata.gzip_member(b"<a>")  # mtime 0: same input, same bytes
    assert gzip.decompress(first + second) == b"<a></a>\n"
    assert first[:2] == second[:2] == b"\x1f\x8b"  # each a complete member with its own gzip header


def test_repack_of_a_document_it_cannot_split_changes_nothing(tmp_path, packages):
    repo_dir = tmp_path / "repo"
    _place(repo_dir, packages["kiln-md-a"])
    meta = _createrepo(repo_dir, repo_dir / ".meta-x")
    other = next((meta / "repodata").glob("*-other.xml.gz"))
    other.write_bytes(gzip.compress(b"<surprise/>\n"))  # primary and filelists are fine
    before = {p.name: p.read_bytes() for p in (meta / "repodata").iterdir()}
    assert repodata.repack(meta, repo_dir) is None
    assert {p.name: p.read_bytes() for p in (meta / "repodata").iterdir()} == before
