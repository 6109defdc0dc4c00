"""`kiln pipeline --ask-destinations` against the real local Glance and registry (issue 14).

A build job on another runner published a guest image with its own ledger; the generate job's ledger
is fresh. Asked, Glance says the guest's digest is there (the properties the real publish sets), so
that target gets no job; a target whose digest Glance holds only under a candidate name, or only at
another digest, still gets its job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.publishers.glance import GlancePublisher, image_name
from tests.integration.test_glance_publish import _manifest
from tests.unit.test_gitlab_pipeline import _examples

pytestmark = pytest.mark.site

REPO = Path(__file__).resolve().parents[2]
GUEST = "debian-12:bookworm:x86_64"
PACKER = "debian-12-packer:bookworm:x86_64"


def _publish(publisher: GlancePublisher, tmp_path: Path, target, digest: str, name: str) -> str:
    folder = tmp_path / name.replace(" ", "_")
    folder.mkdir()
    manifest = _manifest(folder, target.id, digest, size=64 * 1024, arch=target.arch.value)
    return publisher.publish(manifest, manifest.artifacts[0], name=name).image_id


def test_a_target_glance_holds_gets_no_job_with_a_fresh_ledger(local_site, site_settings, tmp_path, capsys):
    targets = {t.id: t for t in _examples()}
    guest, packer = targets[GUEST], targets[PACKER]
    publisher = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    image_id = _publish(publisher, tmp_path, guest, guest.digest, image_name(guest))
    _publish(publisher, tmp_path, packer, "0" * 64, image_name(packer))  # an older digest
    _publish(publisher, tmp_path, packer, packer.digest, image_name(packer) + "-mr7")  # a candidate's
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(site_settings.model_dump(mode="json", exclude_none=True)))

    args = ["--root", str(REPO), "--site", str(site), "--ledger", str(tmp_path / "fresh.sqlite")]
    code = main(
        [*args, "pipeline", "--ask-destinations", "--json", "--arch", "x86_64", "-o", str(tmp_path / "c.yml")]
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 0
    assert "could not ask" not in captured.err  # Glance and the registry both answered
    jobs = {j["target"]: j["why"] for j in report["jobs"]}
    assert GUEST not in jobs
    assert jobs[PACKER] == [f"digest {packer.digest[:12]} never published"]
    asked = {a["target"]: a for a in report["destinations"]["asked"]}
    assert asked[GUEST]["published_at"] == f"glance image {image_id} ({image_name(guest)})"
    assert asked[GUEST]["destination"] == "Glance" and asked[GUEST]["since"] > 0
    assert asked[PACKER]["published_at"] is None
    # The session's registry answered; whether it holds cuda-base depends on which tests pushed it
    # before this one (the container e2e test does): either way its answer decides the job.
    cuda = asked["cuda-base:bookworm:x86_64"]
    assert cuda["destination"] == "the registry" and cuda["since"] is None
    assert ("cuda-base:bookworm:x86_64" in jobs) == (cuda["published_at"] is None)
    assert report["destinations"]["unanswered"] == {}
    assert "debian-12_bookworm_x86_64" not in (tmp_path / "c.yml").read_text()
