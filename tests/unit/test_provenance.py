"""Provenance and SBOMs of a real (toy-kind) build through `kiln build`, signed with a site key
from site.yaml, and `kiln verify` against tampered artifacts, statements and signatures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import kinds
from builder.cli import main
from builder.host.run import Runner
from builder.manifest import read_manifest
from builder.provenance import PREDICATE_TYPE, STATEMENT_TYPE
from builder.publishers.glance import image_properties
from builder.signing import stop_daemons
from tests.unit.test_toy_kind import RECIPE, TOY, ToyBackend, toy  # noqa: F401 (toy: a fixture)

PACKAGES = "base-files\t12.4+deb12u5\nbash:amd64\t5.2.15-2+b2\ncurl\t7.88.1-10+deb12u5\n"


class PackageListingBackend(ToyBackend):
    """The toy backend, also leaving a `dpkg-query -W` list in its output directory."""

    def run(self, run: Any, job: Any, runner: Any, log: Path, on_step: Any) -> list[Any]:
        artifacts = super().run(run, job, runner, log, on_step)
        (job.out_dir / "packages.dpkg").write_text(PACKAGES)
        return artifacts


def _gpg_key(home: Path, uid: str) -> str:
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty"]
    Runner().run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"])
    listing = Runner().capture([*gpg, "--with-colons", "--list-secret-keys"]).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module")
def site_key(tmp_path_factory) -> Any:
    work = tmp_path_factory.mktemp("keys")
    home, other = work / "site-gnupg", work / "other-gnupg"
    fingerprint = _gpg_key(home, "Site key <site@test>")
    other_fingerprint = _gpg_key(other, "Someone else <else@test>")
    public = work / "site.asc"
    public.write_text(Runner().capture(["gpg", "--homedir", str(home), "--armor", "--export"]).stdout)
    yield {"home": home, "fpr": fingerprint, "public": public, "other": other, "other_fpr": other_fingerprint}
    stop_daemons(home)
    stop_daemons(other)


@pytest.fixture
def built(toy, workspace, write, tmp_path, site_key, capsys, monkeypatch):  # noqa: F811
    kinds.unregister("toy")
    kinds.register(replace(TOY, backend=PackageListingBackend()))
    site = write(
        "site.yaml",
        yaml.safe_dump(
            {
                "local": {"state_dir": str(tmp_path / "site")},
                "repo": {"signing_key": {"gnupghome": str(site_key["home"]), "fingerprint": site_key["fpr"]}},
            }
        ),
    )
    write("recipes/toy.yaml", RECIPE)
    argv = [
        "--root", str(workspace.root), "--ledger", str(tmp_path / "ledger.sqlite"), "--site", str(site),
        "build", "toy-one", "--arch", "x86_64", "--no-verify", "--publish", "--json",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["kiln", *argv])
    assert main(argv) == 0
    [outcome] = json.loads(capsys.readouterr().out)["targets"]
    manifest = read_manifest(Path(outcome["manifest"]))
    artifact = manifest.path_of(manifest.artifacts[0])
    return {"manifest": manifest, "artifact": artifact, "site": site, "tmp": tmp_path, "ws": workspace}


def _verify(built: dict[str, Any], capsys, *extra: str) -> tuple[int, dict[str, Any]]:
    argv = ["--root", str(built["ws"].root), "--site", str(built["site"]), "verify", str(built["artifact"])]
    code = main([*argv, *extra, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _failures(report: dict[str, Any]) -> str:
    return " | ".join(c["message"] for c in report["checks"] if not c["ok"])


def test_a_build_writes_a_signed_in_toto_statement_beside_each_artifact_listed_in_its_manifest(built):
    manifest, artifact = built["manifest"], built["artifact"]
    listed = manifest.provenance[manifest.artifacts[0].name]
    statement_path = manifest.base_dir / listed["statement"]
    assert statement_path == artifact.with_name(artifact.name + ".intoto.json")
    assert (manifest.base_dir / listed["signature"]).read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    statement = json.loads(statement_path.read_text())
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [
        {"name": artifact.name, "digest": {"sha256": manifest.artifacts[0].sha256}}
    ]
    definition, run = statement["predicate"]["buildDefinition"], statement["predicate"]["runDetails"]
    assert definition["externalParameters"]["recipe"] == "toy-one"
    assert definition["internalParameters"]["inputDigest"] == manifest.digest
    assert "render/greeting.txt" in {d.get("name") for d in definition["resolvedDependencies"]}
    assert run["builder"]["version"]["cp"] == "coreutils"
    assert run["metadata"]["startedOn"] and run["metadata"]["finishedOn"] and run["metadata"]["hostArch"]


def test_the_statement_records_that_verification_was_switched_off_and_by_which_command(built):
    manifest = built["manifest"]
    statement = json.loads((manifest.base_dir / manifest.provenance["greeting"]["statement"]).read_text())
    params = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert params["verification"]["status"] == "off"
    assert params["verification"]["by"] == "kiln build --no-verify"
    assert "--no-verify" in params["invocation"]


def test_glance_images_reference_the_provenance_by_its_digest(built):
    manifest = built["manifest"]
    props = image_properties(manifest, {"kiln_provenance": "forged"})
    assert props["kiln_provenance"] == "sha256:" + manifest.provenance["greeting"]["sha256"]


def test_a_clean_artifact_verifies_with_the_site_key(built, site_key, capsys):
    code, report = _verify(built, capsys)
    assert code == 0 and report["ok"], _failures(report)
    assert report["signed_by"] == site_key["fpr"]
    assert report["verification"]["status"] == "off"


def test_a_clean_artifact_verifies_with_an_exported_public_key_and_a_required_signature(
    built, site_key, capsys
):
    code, report = _verify(built, capsys, "--key", str(site_key["public"]), "--require-signature")
    assert code == 0 and report["signed_by"] == site_key["fpr"]


def test_a_tampered_artifact_fails_verification_naming_the_digest_mismatch(built, capsys):
    with built["artifact"].open("a") as handle:
        handle.write("one more line\n")
    code, report = _verify(built, capsys)
    assert code == 4 and not report["ok"]
    assert "does not match its provenance" in _failures(report)


def test_a_tampered_statement_fails_on_its_signature_even_when_its_digest_matches_the_tampered_artifact(
    built, capsys
):
    from builder.manifest import sha256_file

    artifact = built["artifact"]
    artifact.write_text("a different image\n")
    statement_path = artifact.with_name(artifact.name + ".intoto.json")
    statement = json.loads(statement_path.read_text())
    statement["subject"][0]["digest"]["sha256"] = sha256_file(artifact)
    statement["predicate"]["buildDefinition"]["internalParameters"]["verification"]["status"] = "passed"
    statement_path.write_text(json.dumps(statement))
    code, report = _verify(built, capsys)
    assert code == 4
    assert "BAD signature: the provenance statement changed after it was signed" in _failures(report)
    assert [c["ok"] for c in report["checks"] if c["name"] == "digest"] == [True]


def test_a_damaged_signature_fails_verification(built, capsys):
    signature = built["artifact"].with_name(built["artifact"].name + ".intoto.json.asc")
    signature.write_text(signature.read_text().replace("\n", "\nX", 3))
    code, report = _verify(built, capsys)
    assert code == 4 and "signature" in _failures(report)


def test_a_signature_by_another_key_fails_verification(built, site_key, capsys):
    statement = built["artifact"].with_name(built["artifact"].name + ".intoto.json")
    signature = statement.with_name(statement.name + ".asc")
    signature.unlink()
    Runner().run(
        ["gpg", "--homedir", str(site_key["other"]), "--batch", "--armor", "--detach-sign",
         "--output", str(signature), str(statement)]
    )  # fmt: skip
    code, report = _verify(built, capsys)
    assert code == 4 and "signed by a key that is not the site's" in _failures(report)


def test_a_missing_signature_fails_only_when_one_is_required(built, capsys):
    built["artifact"].with_name(built["artifact"].name + ".intoto.json.asc").unlink()
    code, report = _verify(built, capsys)
    assert code == 0 and "not signed" in report["checks"][-1]["message"]
    code, report = _verify(built, capsys, "--require-signature")
    assert code == 4 and "a signature was required" in _failures(report)


def test_an_artifact_without_a_statement_fails_verification(built, capsys):
    built["artifact"].with_name(built["artifact"].name + ".intoto.json").unlink()
    code, report = _verify(built, capsys)
    assert code == 4 and "no provenance statement beside the artifact" in _failures(report)


def test_the_build_records_an_spdx_sbom_that_kiln_sbom_diff_reads_by_build_id(built, capsys):
    manifest = built["manifest"]
    document = json.loads((manifest.base_dir / manifest.sbom).read_text())
    assert document["spdxVersion"] == "SPDX-2.3"
    assert {p["name"] for p in document["packages"]} >= {"base-files", "bash", "curl"}
    newer = built["tmp"] / "newer.spdx.json"
    for package in document["packages"]:
        if package["name"] == "curl":
            package["versionInfo"] = "7.88.1-10+deb12u8"
    document["packages"] = [p for p in document["packages"] if p["name"] != "bash"]
    newer.write_text(json.dumps(document))
    ledger = str(built["tmp"] / "ledger.sqlite")
    argv = ["--root", str(built["ws"].root), "--ledger", ledger, "sbom", "diff"]
    assert main([*argv, str(manifest.build_id), str(newer), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["removed"] == [{"name": "bash", "version": "5.2.15-2+b2"}]
    assert result["upgraded"] == [{"name": "curl", "from": "7.88.1-10+deb12u5", "to": "7.88.1-10+deb12u8"}]


def test_kiln_show_lists_the_builds_artifacts_publications_and_attestations(built, capsys):
    ledger = str(built["tmp"] / "ledger.sqlite")
    build_id = str(built["manifest"].build_id)
    assert main(["--root", str(built["ws"].root), "--ledger", ledger, "show", build_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "succeeded" and shown["verification"]["status"] == "off"
    assert [p["publisher"] for p in shown["artifacts"][0]["publications"]] == ["shelf"]
    assert {a["type"] for a in shown["attestations"]} == {"provenance", "signature", "sbom"}
    assert main(["--root", str(built["ws"].root), "--ledger", ledger, "show", build_id]) == 0
    text = capsys.readouterr().out
    assert f"build {build_id}: toy-one:1:x86_64 succeeded" in text and "published   shelf top" in text
