"""The signed repo mirror: dnf (a client that is not Kiln) installs from it, and faults lose nothing."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from builder.errors import CommandFailed, InvalidInput
from builder.publishers.from_site import SitePublishers
from builder.publishers.repo import RepoPublisher
from builder.publishers.repodata import repomd_records
from builder.siteconfig import RepoSite, S3Target, SiteConfig
from tests.support.processes import stop_gpg_daemons_under
from tests.support.rpms import build_noarch_rpm

pytestmark = pytest.mark.site


def _dnf(site, root: Path, baseurl: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return _run_dnf(site, root, baseurl, *args)
    finally:
        # repo_gpgcheck: dnf's gpgme imports the key into a keyring in the cache dir, and the
        # gpg-agent that starts there outlives dnf.
        for keyrings in (root, Path(f"{root}-cache")):
            stop_gpg_daemons_under(keyrings)


def _run_dnf(site, root: Path, baseurl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "dnf",
            "-y",
            "-q",
            f"--installroot={root}",
            "--releasever=9",
            "--forcearch=x86_64",
            "--setopt=reposdir=/dev/null",
            f"--setopt=cachedir={root}-cache",
            "--setopt=keepcache=0",
            f"--repofrompath=kiln,{baseurl}",
            "--setopt=kiln.gpgcheck=1",
            "--setopt=kiln.repo_gpgcheck=1",
            f"--setopt=kiln.gpgkey={site.urls.repo}/RPM-GPG-KEY-kiln",
            *args,
        ],
        capture_output=True,
        text=True,
    )


def _publisher(site_settings: SiteConfig, local_site) -> RepoPublisher:
    return SitePublishers(site_settings, local_site.state).repo()


def _served_primary(repo_dir: Path) -> str:
    """primary.xml as a client finds it: through repomd.xml (repodata/ also keeps the previous set)."""
    href, _ = repomd_records(repo_dir / "repodata" / "repomd.xml")["primary"]
    return gzip.decompress((repo_dir / href).read_bytes()).decode()


def _primary_names(repo_dir: Path) -> set[str]:
    text = _served_primary(repo_dir)
    return {line.strip()[6:-7] for line in text.splitlines() if line.strip().startswith("<name>")}


def test_dnf_installs_a_signed_package_with_gpgcheck_and_repo_gpgcheck(local_site, site_settings, tmp_path):
    rpm = build_noarch_rpm(tmp_path, "kiln-dnf-check")
    result = _publisher(site_settings, local_site).publish(
        [rpm], repo="kiln", distro="el", release="9", arch="x86_64"
    )
    signature = subprocess.run(
        ["rpm", "-qp", "--qf", "%{RSAHEADER:pgpsig}", str(result.repo_dir / result.packages[0])],
        capture_output=True,
        text=True,
    )
    assert "Key ID" in signature.stdout
    repo_file = result.repo_file.read_text()
    assert "repo_gpgcheck=1" in repo_file and "gpgkey=" in repo_file
    installed = _dnf(
        local_site,
        tmp_path / "root",
        f"{local_site.urls.repo}/kiln/el/9/x86_64/",
        "install",
        "kiln-dnf-check",
    )
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "root/usr/share/kiln-dnf-check/version").read_text() == "kiln-dnf-check-1.0\n"


def test_dnf_refuses_a_tampered_repomd(local_site, site_settings, tmp_path):
    rpm = build_noarch_rpm(tmp_path, "kiln-tamper-check")
    result = _publisher(site_settings, local_site).publish(
        [rpm], repo="tamper", distro="el", release="9", arch="x86_64"
    )
    repomd = (result.repo_dir / "repodata" / "repomd.xml").resolve()
    repomd.write_text(repomd.read_text().replace("<revision>", "<revision>9"))
    refused = _dnf(
        local_site,
        tmp_path / "root",
        f"{local_site.urls.repo}/tamper/el/9/x86_64/",
        "install",
        "kiln-tamper-check",
    )
    assert refused.returncode != 0
    assert not (tmp_path / "root/usr/share/kiln-tamper-check").exists()


def test_a_second_package_is_appended_and_dnf_installs_it(local_site, site_settings, tmp_path):
    publisher = _publisher(site_settings, local_site)
    coords = {"repo": "appended", "distro": "el", "release": "9", "arch": "x86_64"}
    first = publisher.publish([build_noarch_rpm(tmp_path, "kiln-first")], **coords)
    second = publisher.publish([build_noarch_rpm(tmp_path, "kiln-second")], **coords)
    assert (first.metadata_update, second.metadata_update) == ("rebuilt", "appended")
    assert _primary_names(second.repo_dir) == {"kiln-first", "kiln-second"}
    installed = _dnf(
        local_site,
        tmp_path / "root",
        f"{local_site.urls.repo}/appended/el/9/x86_64/",
        "install",
        "kiln-first",
        "kiln-second",
    )
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "root/usr/share/kiln-second/version").read_text() == "kiln-second-1.0\n"


def test_what_is_not_a_pure_addition_is_rebuilt_by_createrepo_c(local_site, site_settings, tmp_path):
    publisher = _publisher(site_settings, local_site)
    coords = {"repo": "rebuilt", "distro": "el", "release": "9", "arch": "x86_64"}
    rpm = build_noarch_rpm(tmp_path, "kiln-again")
    publisher.publish([rpm], **coords)
    again = publisher.publish([rpm], **coords)  # the same path again: its entry must be replaced
    assert again.metadata_update == "rebuilt"
    assert _primary_names(again.repo_dir) == {"kiln-again"}
    # A package copied in by hand is found by the next publish, as createrepo_c --update would.
    shutil.copy(build_noarch_rpm(tmp_path, "kiln-by-hand"), again.repo_dir / "Packages/k/")
    later = publisher.publish([build_noarch_rpm(tmp_path, "kiln-later")], **coords)
    assert later.metadata_update == "rebuilt"
    assert _primary_names(later.repo_dir) == {"kiln-again", "kiln-by-hand", "kiln-later"}
    last = publisher.publish([build_noarch_rpm(tmp_path, "kiln-last")], **coords)
    assert last.metadata_update == "appended"  # createrepo_c's output was laid out for appending
    assert _primary_names(last.repo_dir) == {"kiln-again", "kiln-by-hand", "kiln-later", "kiln-last"}


def test_ten_concurrent_publishes_into_one_repo_lose_nothing(local_site, site_settings, tmp_path):
    rpms = [build_noarch_rpm(tmp_path, f"kiln-concurrent-{i}") for i in range(10)]

    def publish(rpm: Path) -> None:
        _publisher(site_settings, local_site).publish(
            [rpm], repo="busy", distro="el", release="9", arch="x86_64"
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(publish, rpms))
    repo_dir = local_site.repo_root / "busy/el/9/x86_64"
    assert _primary_names(repo_dir) == {f"kiln-concurrent-{i}" for i in range(10)}
    listed = _dnf(
        local_site, tmp_path / "root", f"{local_site.urls.repo}/busy/el/9/x86_64/", "list", "--available"
    )
    assert listed.returncode == 0 and all(f"kiln-concurrent-{i}" in listed.stdout for i in range(10))


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_while_writing_metadata_keeps_old_metadata_valid(
    local_site, site_settings, tmp_path, small_tmpfs
):
    base = _publisher(site_settings, local_site)
    publisher = RepoPublisher(small_tmpfs, base.key, base.base_url)
    first = build_noarch_rpm(tmp_path, "kiln-before-full")
    result = publisher.publish([first], repo="full", distro="el", release="9", arch="x86_64")
    old_target = (result.repo_dir / "repodata").resolve()
    second = build_noarch_rpm(tmp_path, "kiln-after-full")
    # Fill the disk, leaving room for the signed package but not for a new metadata set.
    stat = os.statvfs(small_tmpfs)
    room_for_package = ((second.stat().st_size + 1024) // 4096 + 1) * 4096
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - room_for_package - 4096))
    # The package fits; its metadata (appended by Kiln, or createrepo_c's) and signature do not.
    no_room = r"writing repo metadata in .*: No space left on device|createrepo_c|gpg"
    with pytest.raises(CommandFailed, match=no_room):
        publisher.publish([second], repo="full", distro="el", release="9", arch="x86_64")
    assert (result.repo_dir / "repodata").resolve() == old_target
    verify = subprocess.run(
        [
            "gpg",
            "--homedir",
            str(base.key.gnupghome),
            "--verify",
            str(old_target / "repomd.xml.asc"),
            str(old_target / "repomd.xml"),
        ],
        capture_output=True,
    )
    assert verify.returncode == 0
    assert _primary_names(result.repo_dir) == {"kiln-before-full"}
    assert not list(result.repo_dir.glob(".meta-*/repodata/*.tmp"))
    filler.unlink()
    publisher.publish([second], repo="full", distro="el", release="9", arch="x86_64")
    assert _primary_names(result.repo_dir) == {"kiln-before-full", "kiln-after-full"}


def test_s3_mirror_gets_packages_and_signed_metadata(local_site, site_settings, tmp_path):
    settings = site_settings.model_copy(
        update={"repo": RepoSite(backend="s3", s3=S3Target(bucket="kiln-mirror"))}
    )
    publishing = SitePublishers(settings, local_site.state)
    rpm = build_noarch_rpm(tmp_path, "kiln-s3-check")
    publishing.repo().publish([rpm], repo="kiln", distro="el", release="9", arch="x86_64")
    mirror = publishing.mirror()
    repo_dir = publishing.repo().repo_dir("kiln", "el", "9", "x86_64")
    result = mirror.sync(repo_dir, "kiln/el/9/x86_64")
    assert result.uploaded[-1].endswith("repodata/repomd.xml")  # metadata last
    assert result.uploaded[-2].endswith("repodata/repomd.xml.asc")
    listed = mirror.client.list_objects_v2(Bucket="kiln-mirror", Prefix="kiln/el/9/x86_64/")
    keys = {obj["Key"] for obj in listed["Contents"]}
    assert "kiln/el/9/x86_64/Packages/k/kiln-s3-check-1.0-1.noarch.rpm" in keys
    assert "kiln/el/9/x86_64/repodata/repomd.xml.asc" in keys
    again = mirror.sync(repo_dir, "kiln/el/9/x86_64")
    assert [k.rsplit("/", 1)[1] for k in again.uploaded] == ["repomd.xml.asc", "repomd.xml"]
    assert shutil.which("rpm")


def test_rsync_mirror_receives_the_signed_tree(local_site, site_settings, tmp_path):
    from builder.publishers.mirror import RsyncMirror

    rpm = build_noarch_rpm(tmp_path, "kiln-rsync-check")
    publisher = _publisher(site_settings, local_site)
    result = publisher.publish([rpm], repo="rsynced", distro="el", release="9", arch="x86_64")
    target = tmp_path / "mirror"
    RsyncMirror(str(target)).sync(result.repo_dir, "rsynced/el/9/x86_64")
    mirrored = target / "rsynced/el/9/x86_64"
    assert (mirrored / "Packages/k/kiln-rsync-check-1.0-1.noarch.rpm").is_file()
    repodata = mirrored / "repodata"
    assert repodata.is_dir() and not repodata.is_symlink()  # --copy-links: a plain tree on the mirror
    assert (repodata / "repomd.xml.asc").is_file()
    assert not list(mirrored.glob(".meta-*")) and not (mirrored / ".kiln-lock").exists()
    assert _primary_names(mirrored) == {"kiln-rsync-check"}


def _primary_checksums(repo_dir: Path) -> dict[str, str]:
    """{location href: sha256} from the served primary.xml.gz."""
    text = _served_primary(repo_dir)
    return {
        href: checksum
        for checksum, href in re.findall(
            r'pkgid="YES">([0-9a-f]+)</checksum>.*?<location href="([^"]+)"', text, re.S
        )
    }


def test_a_publish_that_failed_after_replacing_a_package_is_repaired_by_the_next(
    local_site, site_settings, tmp_path, monkeypatch
):
    publisher = _publisher(site_settings, local_site)
    coords = {"repo": "repaired", "distro": "el", "release": "9", "arch": "x86_64"}
    publisher.publish([build_noarch_rpm(tmp_path / "one", "kiln-replaced")], **coords)
    rebuilt = build_noarch_rpm(tmp_path / "two", "kiln-replaced")  # same file name, other bytes

    def no_gpg(self, path):
        raise CommandFailed("gpg: simulated failure")

    with monkeypatch.context() as patch:
        patch.setattr(RepoPublisher, "_detach_sign", no_gpg)
        with pytest.raises(CommandFailed, match="simulated"):
            publisher.publish([rebuilt], **coords)
    later = publisher.publish([build_noarch_rpm(tmp_path, "kiln-after")], **coords)
    assert later.metadata_update == "rebuilt"  # the tree no longer matched the index
    on_disk = {
        href: hashlib.sha256((later.repo_dir / href).read_bytes()).hexdigest()
        for href in _primary_checksums(later.repo_dir)
    }
    assert _primary_checksums(later.repo_dir) == on_disk


def test_two_copies_of_one_package_in_a_publish_are_refused_before_anything_is_placed(
    local_site, site_settings, tmp_path
):
    publisher = _publisher(site_settings, local_site)
    rpm = build_noarch_rpm(tmp_path, "kiln-twice")
    copy = tmp_path / "copy" / rpm.name
    copy.parent.mkdir()
    shutil.copy(rpm, copy)
    with pytest.raises(InvalidInput, match=r"the same package file twice in one publish: kiln-twice-1\.0"):
        publisher.publish([rpm, copy], repo="twice", distro="el", release="9", arch="x86_64")
    assert not list(publisher.repo_dir("twice", "el", "9", "x86_64").rglob("*.rpm"))


def test_a_client_holding_the_previous_repomd_still_finds_its_files(local_site, site_settings, tmp_path):
    publisher = _publisher(site_settings, local_site)
    coords = {"repo": "readers", "distro": "el", "release": "9", "arch": "x86_64"}
    first = publisher.publish([build_noarch_rpm(tmp_path, "kiln-reader-a")], **coords)
    old_repomd = (first.repo_dir / "repodata" / "repomd.xml").read_text()
    old_files = re.findall(r'<location href="repodata/([^"]+)"', old_repomd)
    publisher.publish([build_noarch_rpm(tmp_path, "kiln-reader-b")], **coords)
    base = f"{local_site.urls.repo}/readers/el/9/x86_64/repodata"
    for name in old_files:  # what a dnf that read the old repomd.xml asks for next
        assert requests.get(f"{base}/{name}", timeout=10).status_code == 200, name


def test_metadata_added_with_modifyrepo_c_survives_the_next_publish(local_site, site_settings, tmp_path):
    publisher = _publisher(site_settings, local_site)
    coords = {"repo": "errata", "distro": "el", "release": "9", "arch": "x86_64"}
    first = publisher.publish([build_noarch_rpm(tmp_path, "kiln-errata-a")], **coords)
    updateinfo = tmp_path / "updateinfo.xml"
    updateinfo.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<updates/>\n')
    served = (first.repo_dir / "repodata").resolve()
    subprocess.run(["modifyrepo_c", str(updateinfo), str(served)], check=True, capture_output=True)
    later = publisher.publish([build_noarch_rpm(tmp_path, "kiln-errata-b")], **coords)
    assert later.metadata_update == "rebuilt"
    repomd = (later.repo_dir / "repodata" / "repomd.xml").read_text()
    assert 'type="updateinfo"' in repomd
    assert _primary_names(later.repo_dir) == {"kiln-errata-a", "kiln-errata-b"}
    again = publisher.publish([build_noarch_rpm(tmp_path, "kiln-errata-c")], **coords)
    assert again.metadata_update == "rebuilt"  # Kiln appends only to metadata it wrote itself
    assert 'type="updateinfo"' in (again.repo_dir / "repodata" / "repomd.xml").read_text()
    listed = _dnf(
        local_site, tmp_path / "root", f"{local_site.urls.repo}/errata/el/9/x86_64/", "list", "--available"
    )
    assert listed.returncode == 0 and "kiln-errata-c" in listed.stdout, listed.stderr
