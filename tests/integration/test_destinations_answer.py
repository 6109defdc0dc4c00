"""Every destination says what it holds, as a runner with no ledger asks it (issue 25).

Published through the real routes into the local site, then asked through the same routes: the RPM
repo and the Bifrost directory answer from the publication record they serve over HTTP, Glance from
the agent's images and their properties. A publish that stopped half-way is not "published".
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from builder import kinds
from builder.arch import Arch
from builder.core.kind import slug_of
from builder.manifest import BuildManifest, artifact_for
from builder.pipeline.publish import publish_manifests
from builder.publishers.from_site import SitePublishers
from builder.publishers.glance import GlancePublisher
from builder.publishers.http_dir import IPA
from builder.publishers.repo import REPO
from tests.integration.test_ipa_publish import _ipa_manifest
from tests.support.rpms import build_noarch_rpm

pytestmark = pytest.mark.site


@dataclass(frozen=True)
class AskedTarget:
    """What a route may know of a target before it is built (core.route.TargetLike)."""

    id: str
    recipe: str
    release: str
    variant: str | None
    arch: Arch
    digest: str
    publish: Any


def _asked(manifest: BuildManifest, digest: str | None = None) -> AskedTarget:
    kind = kinds.publishing_of(manifest.kind)
    return AskedTarget(
        manifest.target,
        manifest.recipe,
        manifest.release,
        manifest.variant,
        Arch.parse(manifest.arch),
        digest or manifest.digest,
        kind.publish_model.model_validate(manifest.publish),
    )


def _facts(manifest: BuildManifest):
    return kinds.publishing_of(manifest.kind).facts(manifest.build)


def _rpm_manifest(tmp_path: Path, name: str, digest: str) -> BuildManifest:
    out = tmp_path / f"out-{name}"
    out.mkdir()
    rpm = build_noarch_rpm(tmp_path, name)
    placed = out / rpm.name
    shutil.copyfile(rpm, placed)
    return BuildManifest(
        target=f"{name}:9:x86_64",
        recipe=name,
        kind="rpm-rebuild",
        arch="x86_64",
        release="9",
        variant=None,
        digest=digest,
        artifacts=(artifact_for(out, placed, rpm.name, "rpm"),),
        publish={"repo": {"repo": "answers"}},
        build={"distro": "el", "release": "9"},
        verification={"status": "passed", "cases": 1},
        base_dir=out,
    )


def test_the_repo_answers_from_the_record_it_serves_and_a_half_publish_is_not_published(
    local_site, site_settings, tmp_path
):
    publishers = SitePublishers(site_settings, tmp_path)
    manifest = _rpm_manifest(tmp_path, "kiln-answer", "b" * 64)
    asked = _asked(manifest)
    assert REPO.published_at(asked, publishers, None, _facts(manifest)) is None  # nothing there yet

    publish_manifests([manifest], publishers, ledger=None)
    found = REPO.published_at(asked, publishers, None, _facts(manifest))
    assert found is not None and found.at is not None
    assert found.where == (
        f"{local_site.urls.repo}/answers/el/9/x86_64/kiln-published/{slug_of(manifest.target)}.json"
    )
    record = requests.get(found.where, timeout=30).json()  # what any runner reads over HTTP
    assert (record["target"], record["digest"]) == (manifest.target, "b" * 64)
    assert record["files"] == [f"x86_64/Packages/k/{manifest.artifacts[0].name}"]
    # A runner with no state of its own (no signing key, no repo tree) gets the same answer and makes
    # nothing: asking never creates the key that publishing would.
    runner_state = tmp_path / "runner-state"
    bare = site_settings.model_copy(
        update={"local": site_settings.local.model_copy(update={"state_dir": str(runner_state)})}
    )
    assert REPO.published_at(asked, SitePublishers(bare, tmp_path), None, _facts(manifest)) == found
    assert not runner_state.exists()
    # another input digest (an older build, a changed recipe) is not published
    assert REPO.published_at(_asked(manifest, "c" * 64), publishers, None, _facts(manifest)) is None

    # Killed after its packages and metadata were served, before the record: not published, so the
    # retried job publishes again (and only then is it).
    other = _rpm_manifest(tmp_path, "kiln-half", "d" * 64)
    publishers.repo().publish(
        [other.path_of(other.artifacts[0])], repo="answers", distro="el", release="9", arch="x86_64"
    )
    assert REPO.published_at(_asked(other), publishers, None, _facts(other)) is None
    publish_manifests([other], publishers, ledger=None)
    assert REPO.published_at(_asked(other), publishers, None, _facts(other)) is not None


def test_an_agent_ramdisk_is_published_when_glance_holds_every_image_and_bifrost_its_record(
    local_site, site_settings, tmp_path
):
    publishers = SitePublishers(site_settings, tmp_path)
    manifest = replace(
        _ipa_manifest(tmp_path, "e" * 64),
        target="ipa-answer:bookworm:x86_64",
        recipe="ipa-answer",
        publish={"glance": {"image_name": "ipa-answer", "keep": 1}, "http": {"directory": "ipa-answer"}},
    )
    asked = _asked(manifest)
    assert IPA.published_at(asked, publishers, None, _facts(manifest)) is None

    publications = publish_manifests([manifest], publishers, ledger=None)
    found = IPA.published_at(asked, publishers, None, _facts(manifest))
    assert found is not None and found.at is not None
    assert found.where.startswith("glance images initramfs, kernel (ipa-answer); ")
    assert found.where.endswith("/ipa-answer/kiln-published.json")
    assert IPA.published_at(_asked(manifest, "f" * 64), publishers, None, _facts(manifest)) is None

    # The ramdisk image gone from Glance (a publish killed after the kernel): not published.
    glance = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    [ramdisk] = [p.location for p in publications if p.publisher == "glance" and p.artifact == "initramfs"]
    glance.conn.image.delete_image(ramdisk)
    assert IPA.published_at(asked, publishers, None, _facts(manifest)) is None


def test_a_bifrost_directory_holding_a_record_of_another_build_is_not_published(
    local_site, site_settings, tmp_path
):
    publishers = SitePublishers(site_settings, tmp_path)
    manifest = replace(
        _ipa_manifest(tmp_path, "1" * 64),
        target="ipa-http:bookworm:x86_64",
        recipe="ipa-http",
        publish={"http": {"directory": "ipa-http"}},
    )
    publish_manifests([manifest], publishers, ledger=None)
    assert IPA.published_at(_asked(manifest), publishers, None, _facts(manifest)) is not None
    # the same bytes from other inputs: a new version of the directory, its record naming them
    rebuilt = replace(manifest, digest="2" * 64)
    result = publish_manifests([rebuilt], publishers, ledger=None)
    assert not any(p.noop for p in result)
    assert IPA.published_at(_asked(manifest), publishers, None, _facts(manifest)) is None
    assert IPA.published_at(_asked(rebuilt), publishers, None, _facts(rebuilt)) is not None
