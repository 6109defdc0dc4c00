"""`kiln verify` on RPMs: the repo publisher re-signs its copy (rpmsign rewrites the signature
header, so the file's sha256 changes); the provenance's ``rpmContentSha256`` (main header and
payload) still names it, and a changed header or payload fails. Real packages, a throwaway key,
the real repo publisher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builder.cli import main
from builder.manifest import BuildManifest, artifact_for, sha256_file
from builder.pipeline.publish import publish_manifests
from builder.provenance import RPM_CONTENT_DIGEST, BuildContext, Signer, check_artifact, write_provenance
from builder.publishers.repo import RepoKey, RepoPublisher
from builder.rpm import header as rpmheader
from builder.signing import stop_daemons
from tests.support.rpms import build_noarch_rpm
from tests.support.srpms import GpgKey, make_key, sign

TOOLS = ("rpmbuild", "rpmsign", "rpmkeys", "createrepo_c", "gpg")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)} (scripts/bootstrap.sh)"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Any:
    work = tmp_path_factory.mktemp("rpm-keys")
    site, other = make_key(work, "Kiln Test Site"), make_key(work, "Someone Else")
    yield SimpleNamespace(site=site, other=other)
    stop_daemons(site.gnupghome)
    stop_daemons(other.gnupghome)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return build_noarch_rpm(tmp_path_factory.mktemp("rpm-build"), "kiln-provenance-check", "1.2")


@pytest.fixture
def published(tmp_path, keys, package) -> dict[str, Any]:
    """The package built, its provenance signed by the site key, published through the real repo
    publisher (which signs its copy with the same key, as the local site does)."""
    out = tmp_path / "out"
    out.mkdir()
    built = out / package.name
    shutil.copyfile(package, built)
    manifest = BuildManifest(
        target="kiln-provenance-check:9:x86_64",
        recipe="kiln-provenance-check",
        kind="rpm-rebuild",
        arch="x86_64",
        release="9",
        variant=None,
        digest="d" * 64,
        artifacts=(artifact_for(out, built, "kiln-provenance-check", "rpm"),),
        publish={"repo": {"repo": "kiln"}},
        build={"distro": "el", "release": "9"},
        build_id=3,
        verification={"status": "passed", "cases": 1},
        base_dir=out,
    )
    manifest = write_provenance(manifest, BuildContext(), Signer(keys.site.gnupghome, keys.site.fingerprint))
    repo = RepoPublisher(
        tmp_path / "repo",
        RepoKey(keys.site.gnupghome, keys.site.fingerprint, "http://repo.invalid/RPM-GPG-KEY"),
        "http://repo.invalid",
    )
    publish_manifests([manifest], SimpleNamespace(repo=lambda: repo, mirror=lambda: None), None)
    [copy] = (tmp_path / "repo/kiln/el/9").glob(f"*/Packages/k/{package.name}")
    return {"built": built, "copy": copy, "manifest": manifest}


def _verify(artifact: Path, key: GpgKey, capsys) -> tuple[int, dict[str, Any]]:
    code = main(["verify", str(artifact), "--key", str(key.public), "--require-signature", "--json"])
    return code, json.loads(capsys.readouterr().out)


def _checks(report: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {c["name"]: (c["ok"], c["message"]) for c in report["checks"]}


def _replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def test_an_rpm_subject_records_a_content_digest_that_signing_leaves_alone(published):
    built, copy = published["built"], published["copy"]
    statement = json.loads(built.with_name(built.name + ".intoto.json").read_text())
    [subject] = statement["subject"]
    assert subject["digest"] == {
        "sha256": sha256_file(built),
        RPM_CONTENT_DIGEST: rpmheader.content_sha256(built),
    }
    assert sha256_file(copy) != sha256_file(built)  # the repo's copy was re-signed
    assert rpmheader.content_sha256(copy) == rpmheader.content_sha256(built)


def test_the_repos_signed_copy_verifies_by_its_content_and_its_own_signature(published, keys, capsys):
    code, report = _verify(published["copy"], keys.site, capsys)
    checks = _checks(report)
    assert code == 0 and report["ok"], checks
    assert report["matched_by"] == RPM_CONTENT_DIGEST
    assert checks["digest"][1].startswith("signed copy: content matches, signature header differs")
    assert checks["rpm-signature"] == (True, "the package's own signature verifies with the site key")
    assert checks["signature"] == (True, f"good signature by {keys.site.fingerprint}")


def test_the_built_package_still_verifies_by_its_file_digest(published, keys, capsys):
    code, report = _verify(published["built"], keys.site, capsys)
    assert code == 0 and report["matched_by"] == "sha256"
    assert "rpm-signature" not in _checks(report)


def test_the_signed_copy_verifies_with_the_site_keyring_too(published, keys):
    report = check_artifact(published["copy"], keyring=keys.site.gnupghome, require_signature=True)
    assert report.ok, [c.message for c in report.checks]
    assert report.signed_by == keys.site.fingerprint


@pytest.mark.parametrize(
    "where",
    ["payload", "main header"],
)
def test_a_signed_copy_with_changed_content_fails_naming_the_content_mismatch(published, keys, capsys, where):
    copy = published["copy"]
    if where == "payload":
        data = bytearray(copy.read_bytes())
        data[-1] ^= 0xFF
        copy.write_bytes(bytes(data))
    else:
        _replace_bytes(copy, b"Kiln test package", b"Kiln evil package")
    code, report = _verify(copy, keys.site, capsys)
    ok, message = _checks(report)["digest"]
    assert code == 4 and not report["ok"] and not ok
    assert "the package's content (main header and payload) does not match its provenance" in message
    assert "the package changed after it was built" in message
    assert report["matched_by"] is None and "rpm-signature" not in _checks(report)


def test_a_copy_signed_by_another_key_fails_on_the_packages_own_signature(published, keys, capsys, tmp_path):
    built = published["built"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for file in built.parent.glob(built.name + "*"):
        shutil.copyfile(file, elsewhere / file.name)
    copy = elsewhere / built.name
    sign(copy, keys.other)
    code, report = _verify(copy, keys.site, capsys)
    checks = _checks(report)
    assert code == 4 and checks["digest"][0]  # same content ...
    ok, message = checks["rpm-signature"]  # ... but not signed by the site
    assert not ok and "the package is signed by a key that is not the site's" in message


def test_a_truncated_copy_fails_naming_the_file(published, keys, capsys):
    copy = published["copy"]
    copy.write_bytes(copy.read_bytes()[: rpmheader.LEAD_SIZE + 200])
    code, report = _verify(copy, keys.site, capsys)
    ok, message = _checks(report)["digest"]
    assert code == 4 and not ok
    assert f"{copy}: not an RPM (truncated header" in message


def test_a_statement_without_a_content_digest_says_why_a_signed_copy_cannot_be_checked(published, capsys):
    copy = published["copy"]
    statement_path = copy.with_name(copy.name + ".intoto.json")
    statement = json.loads(statement_path.read_text())
    del statement["subject"][0]["digest"][RPM_CONTENT_DIGEST]
    statement_path.write_text(json.dumps(statement))
    statement_path.with_name(statement_path.name + ".asc").unlink()
    report = check_artifact(copy)
    [digest] = [c for c in report.checks if c.name == "digest"]
    assert not report.ok and not digest.ok
    assert f"records no {RPM_CONTENT_DIGEST} to check a signed copy by" in digest.message
