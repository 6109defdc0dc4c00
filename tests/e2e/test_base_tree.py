"""The base tree for real: debian-12 x86_64 built cold (its base tree recorded in an empty store)
and warm (the same recipe again, ``--force``, starting from that tree): the session's ``debian12``
builds (tests/e2e/conftest.py), which the guest tests use too. Both boot to the cloud-init marker,
and their package lists (DIB's dpkg manifest, the SBOM's source) are the same, name and version. The
manifest, the ledger and the provenance name the base by its digest.

Slow: two DIB builds and two TCG boots, ~7 min here; part of `make test`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from builder.sbom import packages_of, read_sbom

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def builds(debian12):
    """The session's two debian-12 builds (tests/e2e/conftest.py), with their package lists."""
    found = dict(debian12)
    for name in ("cold", "warm"):
        outcome = debian12[name]["outcome"]
        sbom = read_sbom(Path(outcome["manifest"]).parent / debian12[name]["manifest"]["sbom"])
        found[name] = {**debian12[name], "packages": sorted(packages_of(sbom).items())}
    return found


def test_the_cold_build_records_the_base_and_the_warm_one_reuses_it(builds):
    cold, warm = builds["cold"]["manifest"]["build_facts"], builds["warm"]["manifest"]["build_facts"]
    assert cold["base"]["state"] == "recorded" and warm["base"]["state"] == "reused"
    assert cold["base"]["digest"] == warm["base"]["digest"]
    assert (builds["store"] / "amd64" / cold["base"]["digest"] / "base.json").is_file()
    assert {"root.d", "install.d", "qemu-img convert"} <= set(warm["phases"])  # each DIB phase timed


def test_warm_and_cold_images_have_the_same_packages_and_both_boot(builds):
    for name in ("cold", "warm"):
        outcome = builds[name]["outcome"]
        assert outcome["status"] == "built", outcome
        assert outcome["verification"].startswith("passed"), outcome  # booted to the marker
    assert len(builds["cold"]["packages"]) > 200
    assert builds["warm"]["packages"] == builds["cold"]["packages"]


def test_the_ledger_and_the_provenance_name_the_base(builds):
    digest = builds["warm"]["manifest"]["build_facts"]["base"]["digest"]
    with sqlite3.connect(builds["ledger"]) as db:  # the guest tests add a Packer build on it later
        rows = db.execute(
            "SELECT base_state, base_digest FROM build_facts JOIN builds ON builds.id = build_id "
            "WHERE target_id = 'debian-12:bookworm:x86_64' ORDER BY build_id"
        ).fetchall()
    assert rows == [("recorded", digest), ("reused", digest)]
    manifest = builds["warm"]["manifest"]
    [statement_path] = {p["statement"] for p in manifest["provenance"].values()}
    directory = Path(builds["warm"]["outcome"]["manifest"]).parent
    statement = json.loads((directory / statement_path).read_text())
    dependencies = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"name": "kiln-base-tree", "digest": {"sha256": digest}, "annotations": {"state": "reused"}} in (
        dependencies
    )
