"""`kiln publish` end to end: manifests in, the right publisher per kind, the ledger records it all."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.arch import Arch
from builder.cli import main
from builder.manifest import BuildManifest, artifact_for
from tests.support import registry_auth
from tests.support.oci import make_layout
from tests.support.rpms import build_noarch_rpm

pytestmark = pytest.mark.site


def _manifest(out: Path, kind: str, target: str, artifacts, publish: dict, build: dict) -> Path:
    recipe, release, arch = target.split(":")
    manifest = BuildManifest(
        target=target,
        recipe=recipe,
        kind=kind,
        arch=arch,
        release=release,
        variant=None,
        digest=f"{kind}-{arch}-digest",
        artifacts=tuple(artifacts),
        publish=publish,
        build=build,
        verification={"status": "passed", "cases": 1},  # through the gate, as kiln build leaves it
        base_dir=out,
    )
    path = out / "manifest.json"
    manifest.write(path)
    return path


@pytest.fixture
def site_file(site_settings, tmp_path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_settings.model_dump(mode="json", exclude_none=True)))
    return path


def test_publish_routes_each_kind_and_records_it_in_the_ledger(local_site, site_file, tmp_path, capsys):
    manifests = []
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "disk.qcow2").write_bytes(os.urandom(256 * 1024))
    manifests.append(
        _manifest(
            guest,
            "guest-image",
            "cli-guest:bookworm:ppc64le",
            [artifact_for(guest, guest / "disk.qcow2", "image", "disk-image", "qcow2")],
            {"glance": {"visibility": "public", "keep": 2, "properties": {"os_distro": "debian"}}},
            {"distro": "debian", "release": "bookworm"},
        )
    )
    rpm_dir = tmp_path / "rpm"
    rpm = build_noarch_rpm(rpm_dir, "kiln-cli-publish")
    manifests.append(
        _manifest(
            rpm_dir,
            "rpm-rebuild",
            "cli-rpm:9:ppc64le",
            [artifact_for(rpm_dir, rpm, "kiln-cli-publish", "rpm")],
            {"repo": {"repo": "kiln"}},
            {"distro": "el", "release": "9"},
        )
    )
    for arch in (Arch.X86_64, Arch.PPC64LE):
        out = tmp_path / f"container-{arch.value}"
        layout = make_layout(out / "oci", arch, [{"hello": arch.value.encode()}])
        manifests.append(
            _manifest(
                out,
                "container",
                f"cli-cuda:bookworm:{arch.value}",
                [artifact_for(out, layout, "image", "oci-layout")],
                {"registry": {"repository": "kiln/cli-cuda", "tags": ["11.8-bookworm"]}},
                {"distro": "debian"},
            )
        )
    ledger = tmp_path / "ledger.sqlite"
    argv = ["--site", str(site_file), "--ledger", str(ledger), "publish", *map(str, manifests), "--json"]
    assert main(argv) == 0
    published = json.loads(capsys.readouterr().out)["published"]
    by_publisher = {}
    for row in published:
        by_publisher.setdefault(row["publisher"], []).append(row)
    assert len(by_publisher["glance"]) == 1 and len(by_publisher["repo"]) == 1
    assert len(by_publisher["registry"]) == 2
    assert by_publisher["repo"][0]["location"].endswith("/kiln/el/9/ppc64le/")
    index = json.loads(
        subprocess.run(
            [
                "skopeo",
                "inspect",
                *registry_auth.authfile_args(local_site),
                "--raw",
                f"docker://{local_site.urls.registry}/kiln/cli-cuda:11.8-bookworm",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "ppc64le"}
    with sqlite3.connect(ledger) as db:
        rows = db.execute(
            "SELECT b.target_id, p.publisher FROM publications p JOIN artifacts a ON p.artifact_id = a.id "
            "JOIN builds b ON a.build_id = b.id ORDER BY b.target_id"
        ).fetchall()
    assert rows == [
        ("cli-cuda:bookworm:ppc64le", "registry"),
        ("cli-cuda:bookworm:x86_64", "registry"),
        ("cli-guest:bookworm:ppc64le", "glance"),
        ("cli-rpm:9:ppc64le", "repo"),
    ]
    # Publishing the same manifests again changes nothing in Glance (same digest: a no-op).
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)["published"]
    assert [row["noop"] for row in again if row["publisher"] == "glance"] == [True]


def test_publish_with_glance_down_fails_with_exit_3_and_a_clear_message(site_settings, tmp_path, capsys):
    settings = site_settings.model_dump(mode="json", exclude_none=True)
    settings["local"]["ports"]["glance"] = 1024 + (settings["local"]["ports"]["glance"] % 1000) + 7
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(settings))
    (tmp_path / "disk.qcow2").write_bytes(b"x" * 1024)
    manifest = _manifest(
        tmp_path,
        "guest-image",
        "down:bookworm:x86_64",
        [artifact_for(tmp_path, tmp_path / "disk.qcow2", "image", "disk-image", "qcow2")],
        {"glance": {}},
        {"distro": "debian"},
    )
    manifest_data = json.loads(manifest.read_text())
    manifest_data["publish"] = {"glance": {"visibility": "private"}}
    manifest.write_text(json.dumps(manifest_data))
    code = main(["--site", str(path), "--ledger", str(tmp_path / "l.sqlite"), "publish", str(manifest)])
    err = capsys.readouterr().err
    assert code == 3
    assert "Glance is not answering" in err
