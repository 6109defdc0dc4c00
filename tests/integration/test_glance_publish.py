"""Glance publishing against the real local Glance, checked with python-openstackclient."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from builder.errors import CommandFailed, EnvironmentProblem
from builder.kinds.guest import guest_facts
from builder.manifest import BuildManifest, artifact_for
from builder.publishers.glance import GlancePublisher
from tests.support.clients import openstack

pytestmark = pytest.mark.site


def _manifest(
    tmp_path: Path, target: str, digest: str, size: int = 1 << 20, arch: str = "ppc64le"
) -> BuildManifest:
    image = tmp_path / f"{digest}.qcow2"
    with image.open("wb") as handle:
        handle.write(os.urandom(size))
    artifact = artifact_for(tmp_path, image, "image", "disk-image", "qcow2")
    recipe, release, _ = target.split(":")
    return BuildManifest(
        target=target,
        recipe=recipe,
        kind="guest-image",
        arch=arch,
        release=release,
        variant=None,
        digest=digest,
        artifacts=(artifact,),
        build={"distro": "debian", "release": release},
        build_id=7,
        source_commit="0123abc",
        base_dir=tmp_path,
    )


def _openstack(site, *args: str) -> list[dict]:
    return openstack(site.urls.glance, *args)


def test_published_image_has_arch_properties_seen_by_openstackclient(local_site, tmp_path):
    publisher = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    manifest = _manifest(tmp_path, "osc-check:bookworm:ppc64le", "d" * 64)
    result = publisher.publish(
        manifest,
        manifest.artifacts[0],
        name="osc-check",
        visibility="public",
        properties={"os_distro": "debian"},
        facts=guest_facts(manifest.build),  # what publishing passes: the kind's facts about the build
    )
    listed = _openstack(local_site, "image", "list", "--property", "architecture=ppc64le", "--long")
    assert "osc-check" in {row["Name"] for row in listed}
    shown = _openstack(local_site, "image", "show", result.image_id)
    props = shown["properties"]
    assert props["hw_machine_type"] == "pseries" and "hw_firmware_type" not in props
    assert props["kiln_digest"] == "d" * 64 and props["kiln_build"] == "7"
    assert props["kiln_source_commit"] == "0123abc" and props["os_version"] == "12"
    assert props["hw_scsi_model"] == "virtio-scsi" and props["hw_qemu_guest_agent"] == "yes"
    assert shown["visibility"] == "public" and shown["status"] == "active"


def test_same_digest_is_a_no_op_and_a_new_digest_hides_the_old_one(local_site, tmp_path):
    publisher = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    first = _manifest(tmp_path, "rotate:bookworm:x86_64", "1" * 64, arch="x86_64")
    one = publisher.publish(first, first.artifacts[0], name="rotate", keep=1)
    assert publisher.publish(first, first.artifacts[0], name="rotate", keep=1).noop
    ids = [one.image_id]
    for digit in "23":
        m = _manifest(tmp_path, "rotate:bookworm:x86_64", digit * 64, arch="x86_64")
        result = publisher.publish(m, m.artifacts[0], name="rotate", keep=1)
        assert result.hidden == (ids[-1],)
        ids.append(result.image_id)
    visible = [row for row in _openstack(local_site, "image", "list", "--long") if row["Name"] == "rotate"]
    assert [row["ID"] for row in visible] == [ids[-1]]
    hidden = _openstack(local_site, "image", "list", "--hidden", "--long")
    hidden_ids = {row["ID"] for row in hidden}
    assert ids[1] in hidden_ids and ids[0] not in hidden_ids  # keep: 1 deleted the oldest
    shown = _openstack(local_site, "image", "show", ids[-1])
    assert shown["properties"]["hw_firmware_type"] == "bios"


def test_interoperable_import_publishes_too(local_site, tmp_path):
    publisher = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance, method="glance-direct")
    manifest = _manifest(tmp_path, "imported:bookworm:x86_64", "4" * 64, arch="x86_64")
    result = publisher.publish(manifest, manifest.artifacts[0], name="imported")
    shown = _openstack(local_site, "image", "show", result.image_id)
    assert shown["status"] == "active" and shown["name"] == "imported"


def test_hash_mismatch_deletes_the_candidate_and_fails(local_site, tmp_path, monkeypatch):
    publisher = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    manifest = _manifest(tmp_path, "corrupt:bookworm:x86_64", "5" * 64, arch="x86_64")
    import builder.publishers.glance as glance_module

    class LyingReader(glance_module.HashingReader):
        def read(self, size=-1):  # hands Glance other bytes than it hashes
            chunk = super().read(size)
            return bytes(b ^ 1 for b in chunk)

    monkeypatch.setattr(glance_module, "HashingReader", LyingReader)
    with pytest.raises(CommandFailed, match="corrupted"):
        publisher.publish(manifest, manifest.artifacts[0], name="corrupt")
    names = {row["Name"] for row in _openstack(local_site, "image", "list", "--long")}
    assert not any(name.startswith("corrupt") for name in names)


def test_glance_killed_mid_upload_leaves_nothing_published_and_a_retry_succeeds(local_site, tmp_path):
    publisher = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    manifest = _manifest(tmp_path, "killed:bookworm:x86_64", "6" * 64, size=96 << 20, arch="x86_64")
    [glance] = local_site.processes("glance")
    killed = threading.Event()

    def kill_when_halfway(done: int) -> None:
        if done > (32 << 20) and not killed.is_set():
            killed.set()
            os.killpg(glance.pid(), signal.SIGKILL)

    with pytest.raises((CommandFailed, EnvironmentProblem, Exception)):
        publisher.publish(manifest, manifest.artifacts[0], name="killed", on_progress=kill_when_halfway)
    assert killed.is_set()
    local_site.up()  # restarts what is down
    names = {row["Name"] for row in _openstack(local_site, "image", "list", "--long")}
    assert "killed" not in names
    retry = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance)
    result = retry.publish(manifest, manifest.artifacts[0], name="killed")
    assert not result.noop
    everything = _openstack(local_site, "image", "list", "--long") + _openstack(
        local_site, "image", "list", "--hidden", "--long"
    )
    mine = [row for row in everything if row["Name"].startswith("killed")]
    assert [(row["Name"], row["Status"]) for row in mine if "candidate" not in row["Name"]] == [
        ("killed", "active")
    ]
    # The upload Glance died under stays a private candidate until it is stale (STALE_CANDIDATE_S: a
    # younger one may be another job's upload in flight): never active, never published.
    assert all(row["Status"] != "active" for row in mine if "candidate" in row["Name"])
