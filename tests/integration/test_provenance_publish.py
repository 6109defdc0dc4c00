"""Provenance once published, end to end on the local site: `kiln publish` puts a disk image into
the real Glance and a package into the real repo; the Glance image's ``kiln_provenance`` names the
statement beside the artifact, the bytes Glance serves verify against it, and so does the repo's
re-signed copy of the package (by its content digest)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.endpoints import local_endpoints
from builder.manifest import BuildManifest, artifact_for, sha256_file
from builder.pipeline.attest import site_signer
from builder.provenance import RPM_CONTENT_DIGEST, BuildContext, write_provenance
from builder.workspace import PACKAGE_ROOT
from tests.support.clients import openstack
from tests.support.rpms import build_noarch_rpm

pytestmark = pytest.mark.site


def _manifest(out: Path, kind: str, target: str, artifact, publish: dict, build: dict) -> BuildManifest:
    recipe, release, arch = target.split(":")
    return BuildManifest(
        target=target,
        recipe=recipe,
        kind=kind,
        arch=arch,
        release=release,
        variant=None,
        digest=f"{recipe}-{arch}-digest",
        artifacts=(artifact,),
        publish=publish,
        build=build,
        build_id=11,
        verification={"status": "passed", "cases": 1},
        base_dir=out,
    )


def _verify(site_file: Path, capsys, artifact: Path, *extra: str) -> dict:
    code = main(["--site", str(site_file), "verify", str(artifact), *extra, "--require-signature", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], [c["message"] for c in report["checks"] if not c["ok"]]
    return report


def test_published_artifacts_name_their_provenance_and_what_was_published_verifies(
    local_site, site_settings, tmp_path, capsys
):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_settings.model_dump(mode="json", exclude_none=True)))
    signer = site_signer(site_settings, PACKAGE_ROOT)  # the key `kiln site up` made
    assert signer is not None

    guest = tmp_path / "guest"
    guest.mkdir()
    disk = guest / "disk.qcow2"
    disk.write_bytes(os.urandom(256 * 1024))
    rpm_out = tmp_path / "rpm"
    package = build_noarch_rpm(rpm_out, "kiln-provenance-publish")
    manifests = [
        _manifest(
            guest,
            "guest-image",
            "prov-guest:bookworm:x86_64",
            artifact_for(guest, disk, "image", "disk-image", "qcow2"),
            {"glance": {"visibility": "public"}},
            {"distro": "debian", "release": "bookworm"},
        ),
        _manifest(
            rpm_out,
            "rpm-rebuild",
            "prov-rpm:9:x86_64",
            artifact_for(rpm_out, package, "kiln-provenance-publish", "rpm"),
            {"repo": {"repo": "kiln"}},
            {"distro": "el", "release": "9"},
        ),
    ]
    paths = []
    for manifest in manifests:  # what `kiln build` leaves: provenance signed with the site key
        manifest = write_provenance(manifest, BuildContext(), signer)
        manifest.write(manifest.base_dir / "manifest.json")
        paths.append(str(manifest.base_dir / "manifest.json"))
    ledger = tmp_path / "ledger.sqlite"
    assert main(["--site", str(site_file), "--ledger", str(ledger), "publish", *paths, "--json"]) == 0
    published = {row["publisher"]: row for row in json.loads(capsys.readouterr().out)["published"]}

    # Glance: the image names the statement beside the artifact, by its digest ...
    statement = disk.with_name(disk.name + ".intoto.json")
    image = published["glance"]["location"]
    props = openstack(local_site.urls.glance, "image", "show", image)["properties"]
    assert props["kiln_provenance"] == f"sha256:{sha256_file(statement)}"
    # ... and the bytes Glance serves verify against that statement and its signature.
    downloaded = tmp_path / "from-glance" / disk.name
    downloaded.parent.mkdir()
    subprocess.run(
        ["openstack", "--os-auth-type", "none", "--os-endpoint", local_site.urls.glance,
         "image", "save", "--file", str(downloaded), image],
        check=True,
        capture_output=True,
    )  # fmt: skip
    report = _verify(site_file, capsys, downloaded, "--provenance", str(statement))
    assert report["matched_by"] == "sha256" and report["signed_by"] == signer.fingerprint

    # The repo: its copy of the package was re-signed, and verifies by its content digest.
    repo_root = local_endpoints(site_settings, PACKAGE_ROOT).repo_root
    [copy] = (repo_root / "kiln/el/9").glob(f"*/Packages/k/{package.name}")
    assert sha256_file(copy) != sha256_file(package)
    report = _verify(site_file, capsys, copy)
    assert report["matched_by"] == RPM_CONTENT_DIGEST and report["signed_by"] == signer.fingerprint
    assert {c["name"] for c in report["checks"]} == {"digest", "rpm-signature", "signature"}
