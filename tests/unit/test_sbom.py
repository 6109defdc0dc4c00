"""SBOMs: package lists as builders leave them, SPDX 2.3 documents, and `kiln sbom diff`."""

from __future__ import annotations

import json

import pytest

from builder.cli import main
from builder.sbom import (
    Package,
    compare_versions,
    diff,
    find_package_list,
    packages_of,
    parse_dib_dpkg,
    spdx_document,
)

# What DIB's dpkg element writes (finalise.d/99-write-dpkg-manifest), trailing comma fixed by its sed.
DIB_DPKG = """{"packages": [
{"package": "bash","arch": "amd64","version": "5.2.15-2+b2","status": "ii "},
    {"package": "cloud-init","arch": "all","version": "22.4.2-1+deb12u1","status": "ii "},
    {"package": "old-conf","arch": "amd64","version": "1.0","status": "rc "}
]}"""


def _document(*packages: tuple[str, str]) -> dict:
    return spdx_document(
        "debian-12:bookworm:x86_64", [Package(n, v, "amd64") for n, v in packages], created="now"
    )


def test_dibs_dpkg_manifest_gives_the_installed_packages_only(tmp_path):
    where = tmp_path / "out" / "image" / "debian-12.d" / "dib-manifests"
    where.mkdir(parents=True)
    (where / "dib-manifest-dpkg-debian-12").write_text(DIB_DPKG)
    packages = find_package_list(tmp_path / "out")
    assert packages == parse_dib_dpkg(DIB_DPKG)
    assert [(p.name, p.version) for p in packages] == [
        ("bash", "5.2.15-2+b2"),
        ("cloud-init", "22.4.2-1+deb12u1"),
    ]


def test_a_build_that_left_no_package_list_has_no_sbom(tmp_path):
    assert find_package_list(tmp_path) is None


def test_an_spdx_document_describes_the_artifact_containing_every_package_with_a_purl():
    document = _document(("bash", "5.2.15-2+b2"), ("curl", "7.88.1-10"))
    assert document["spdxVersion"] == "SPDX-2.3" and document["dataLicense"] == "CC0-1.0"
    refs = [p["externalRefs"][0]["referenceLocator"] for p in document["packages"][1:]]
    assert refs == ["pkg:deb/bash@5.2.15-2+b2?arch=amd64", "pkg:deb/curl@7.88.1-10?arch=amd64"]
    contains = [r for r in document["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == 2 and packages_of(document) == {"bash": "5.2.15-2+b2", "curl": "7.88.1-10"}


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0", "1.1"),
        ("1.0~rc1", "1.0"),
        ("1.9", "1.10"),
        ("7.88.1-10+deb12u5", "7.88.1-10+deb12u8"),
        ("2.0", "1:1.0"),
        ("1.0-1", "1.0-1+b1"),
        ("1.0a", "1.0b"),
    ],
)
def test_versions_order_as_dpkg_orders_them(older, newer):
    assert compare_versions(older, newer) == -1 and compare_versions(newer, older) == 1
    assert compare_versions(newer, newer) == 0


def test_the_diff_names_packages_added_removed_upgraded_and_downgraded():
    old = {"bash": "5.2.15-2", "curl": "7.88.1-10", "vim": "9.0", "gone": "1"}
    new = {"bash": "5.2.15-2", "curl": "7.88.1-11", "vim": "8.2", "htop": "3.2.2-2"}
    result = diff(old, new)
    assert result.added == [("htop", "3.2.2-2")] and result.removed == [("gone", "1")]
    assert result.upgraded == [("curl", "7.88.1-10", "7.88.1-11")]
    assert result.downgraded == [("vim", "9.0", "8.2")] and result.unchanged == 1
    assert result.lines()[-1] == "1 added, 1 removed, 1 upgraded, 1 downgraded, 1 unchanged"


def test_kiln_sbom_diff_reports_one_added_package_between_two_sbom_files(tmp_path, capsys):
    a, b = tmp_path / "a.spdx.json", tmp_path / "b.spdx.json"
    a.write_text(json.dumps(_document(("bash", "5.2"), ("curl", "7.88"))))
    b.write_text(json.dumps(_document(("bash", "5.2"), ("curl", "7.88"), ("htop", "3.2.2-2"))))
    assert main(["--ledger", str(tmp_path / "l.sqlite"), "sbom", "diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "+ htop 3.2.2-2" in out and "1 added, 0 removed, 0 upgraded, 0 downgraded, 2 unchanged" in out


def test_kiln_sbom_diff_refuses_what_is_not_an_sbom_manifest_or_build_id(tmp_path, capsys):
    other = tmp_path / "x.json"
    other.write_text("[1, 2]")
    ledger = ["--ledger", str(tmp_path / "l.sqlite")]
    assert main([*ledger, "sbom", "diff", str(other), str(other)]) == 1
    assert "neither an SPDX document nor a build manifest" in capsys.readouterr().err
    assert main([*ledger, "sbom", "diff", "41", "42"]) == 1
    assert "build 41: no such build in the ledger" in capsys.readouterr().err


def test_an_rpm_rebuilds_sbom_lists_the_packages_it_produced_by_their_headers():
    from builder.sbom import packages_of_rpms
    from builder.workspace import PACKAGE_ROOT

    srpm = PACKAGE_ROOT / "files" / "srpms" / "kiln-hello-1.0-1.src.rpm"
    [package] = packages_of_rpms([srpm])
    assert (package.name, package.version, package.arch) == ("kiln-hello", "1.0-1", "src")
    assert package.purl == "pkg:rpm/kiln-hello@1.0-1?arch=src"
