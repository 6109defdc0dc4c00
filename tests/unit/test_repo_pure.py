"""The parts of the yum/dnf repo publisher that need neither gpg nor createrepo_c."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from builder.publishers.repo import RepoKey, RepoPublisher

KEY_URL = "https://repo.example.com/kiln/RPM-GPG-KEY-kiln"


class NoRunner:
    """Fails the test if the publisher tries to run anything."""

    def run(self, *args, **kwargs):
        raise AssertionError(f"unexpected command: {args}")


@pytest.fixture
def publisher(tmp_path: Path) -> RepoPublisher:
    key = RepoKey(gnupghome=tmp_path / "gnupg", fingerprint="0123456789ABCDEF", public_key_url=KEY_URL)
    return RepoPublisher(tmp_path / "repo", key, "https://repo.example.com/kiln/", runner=NoRunner())


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_repo_file_is_one_section_named_after_repo_distro_release(publisher):
    parser = parse(publisher.repo_file_text("hpc", "rocky", "9"))
    assert parser.sections() == ["hpc-rocky9"]


def test_repo_file_points_at_the_arch_directory_with_basearch(publisher):
    section = parse(publisher.repo_file_text("hpc", "rocky", "9"))["hpc-rocky9"]
    # The trailing slash of the configured base URL is not doubled; dnf expands $basearch.
    assert section["baseurl"] == "https://repo.example.com/kiln/hpc/rocky/9/$basearch/"
    assert section["name"] == "Kiln hpc for rocky 9 ($basearch)"


def test_repo_file_requires_package_and_metadata_signatures(publisher):
    section = parse(publisher.repo_file_text("hpc", "rocky", "9"))["hpc-rocky9"]
    assert section["enabled"] == "1"
    assert section["gpgcheck"] == "1"
    assert section["repo_gpgcheck"] == "1"
    assert section["gpgkey"] == KEY_URL


def test_repo_file_text_is_exact(publisher):
    assert publisher.repo_file_text("hpc", "almalinux", "8") == (
        "[hpc-almalinux8]\n"
        "name=Kiln hpc for almalinux 8 ($basearch)\n"
        "baseurl=https://repo.example.com/kiln/hpc/almalinux/8/$basearch/\n"
        "enabled=1\n"
        "gpgcheck=1\n"
        "repo_gpgcheck=1\n"
        f"gpgkey={KEY_URL}\n"
    )


def test_base_url_without_trailing_slash_gives_the_same_file(tmp_path, publisher):
    plain = RepoPublisher(
        tmp_path / "repo", publisher.key, "https://repo.example.com/kiln", runner=NoRunner()
    )
    assert plain.repo_file_text("a", "b", "c") == publisher.repo_file_text("a", "b", "c")


def test_repo_dir_layout_matches_the_baseurl(publisher, tmp_path):
    repo_dir = publisher.repo_dir("hpc", "rocky", "9", "ppc64le")
    assert repo_dir == tmp_path / "repo" / "hpc" / "rocky" / "9" / "ppc64le"
    baseurl = parse(publisher.repo_file_text("hpc", "rocky", "9"))["hpc-rocky9"]["baseurl"]
    relative = repo_dir.relative_to(publisher.root).as_posix()
    assert baseurl.replace("$basearch", "ppc64le") == f"{publisher.base_url}/{relative}/"


def test_write_repo_file_replaces_atomically(publisher):
    (publisher.root / "hpc").mkdir(parents=True)
    old = publisher.root / "hpc" / "hpc-rocky9.repo"
    old.write_text("stale\n")
    path = publisher._write_repo_file("hpc", "rocky", "9")
    assert path == old
    assert path.read_text() == publisher.repo_file_text("hpc", "rocky", "9")
    assert sorted(p.name for p in path.parent.iterdir()) == ["hpc-rocky9.repo"]  # no .tmp left
