"""The base tree for real: debian-12 x86_64 built cold (its base tree recorded in an empty store)
and warm (the same recipe again, ``--force``, starting from that tree). Both boot to the cloud-init
marker, and their package lists (DIB's dpkg manifest, the SBOM's source) are the same, name and
version. The manifest, the ledger and the provenance name the base by its digest.

Slow: two DIB builds and two TCG boots, ~7 min here; part of `make test`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from builder.sbom import packages_of, read_sbom
from tests.support.kiln_cli import run_kiln

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def builds(site_settings, dib_ready, tmp_path_factory):
    work = tmp_path_factory.mktemp("base-tree")
    site = site_settings.model_dump(mode="json", exclude_none=True)
    site["dib"] = {"base_cache": {"store": str(work / "store")}}
    site_file = work / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    ledger, build_root = work / "ledger.sqlite", work / "build"
    found = {}
    for name, extra in (("cold", ()), ("warm", ("--force",))):
        result = run_kiln(
            site_file, ledger, build_root, "build", "debian-12", "--arch", "x86_64", "--json", *extra
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        [outcome] = json.loads(result.stdout)["targets"]
        manifest = json.loads(Path(outcome["manifest"]).read_text())
        sbom = read_sbom(Path(outcome["manifest"]).parent / manifest["sbom"])
        found[name] = {
            "outcome": outcome,
            "manifest": manifest,
            "packages": sorted(packages_of(sbom).items()),
        }
    found["ledger"] = ledger
    found["store"] = work / "store"
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
    with sqlite3.connect(builds["ledger"]) as db:
        rows = db.execute("SELECT base_state, base_digest FROM build_facts ORDER BY build_id").fetchall()
    assert rows == [("recorded", digest), ("reused", digest)]
    manifest = builds["warm"]["manifest"]
    [statement_path] = {p["statement"] for p in manifest["provenance"].values()}
    directory = Path(builds["warm"]["outcome"]["manifest"]).parent
    statement = json.loads((directory / statement_path).read_text())
    dependencies = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"name": "kiln-base-tree", "digest": {"sha256": digest}, "annotations": {"state": "reused"}} in (
        dependencies
    )
