"""An IPA build published through its route: the local Glance (aki/ari, ramdisk properties) and the
Bifrost HTTP directory served by the local site, fetched back over HTTP."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from builder.manifest import BuildManifest, artifact_for
from builder.pipeline.publish import publish_manifests
from builder.publishers.from_site import SitePublishers
from builder.publishers.glance import GlancePublisher
from tests.support.clients import openstack

pytestmark = pytest.mark.site

GUEST_PROPERTIES = {"hw_disk_bus", "hw_scsi_model", "hw_qemu_guest_agent", "os_require_quiesce", "os_distro"}


def _ipa_manifest(tmp_path: Path, digest: str) -> BuildManifest:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ipa-it.kernel").write_bytes(os.urandom(64 * 1024))
    (out / "ipa-it.initramfs").write_bytes(os.urandom(256 * 1024))
    return BuildManifest(
        target="ipa-it:bookworm:x86_64",
        recipe="ipa-it",
        kind="ipa-ramdisk",
        arch="x86_64",
        release="bookworm",
        variant=None,
        digest=digest,
        artifacts=(
            artifact_for(out, out / "ipa-it.kernel", "kernel", "kernel", "aki"),
            artifact_for(out, out / "ipa-it.initramfs", "initramfs", "ramdisk", "ari"),
        ),
        publish={"glance": {"image_name": "ipa-it", "keep": 1}, "http": {"directory": "ipa-it"}},
        build={"distro": "debian", "release": "bookworm", "ipa_version": "10.2.0", "debug_login": True},
        verification={"status": "passed", "cases": 2},
        build_id=5,
        base_dir=out,
    )


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_an_ipa_build_lands_in_glance_as_aki_and_ari_and_in_the_bifrost_directory(
    local_site, site_settings, tmp_path
):
    manifest = _ipa_manifest(tmp_path, "a" * 64)
    publications = publish_manifests([manifest], SitePublishers(site_settings, tmp_path), ledger=None)

    glance = {p.artifact: p.location for p in publications if p.publisher == "glance"}
    kernel = openstack(local_site.urls.glance, "image", "show", glance["kernel"])
    ramdisk = openstack(local_site.urls.glance, "image", "show", glance["initramfs"])
    assert (kernel["name"], kernel["disk_format"], kernel["container_format"]) == (
        "ipa-it kernel",
        "aki",
        "aki",
    )
    assert (ramdisk["name"], ramdisk["disk_format"], ramdisk["container_format"]) == (
        "ipa-it initramfs",
        "ari",
        "ari",
    )
    props = ramdisk["properties"]
    assert props["architecture"] == "x86_64" and props["kiln_digest"] == "a" * 64
    assert props["kiln_ipa_version"] == "10.2.0" and props["kiln_debug_login"] == "true"
    assert GUEST_PROPERTIES.isdisjoint(props)
    assert (ramdisk.get("kernel_id") or props.get("kernel_id")) == kernel["id"]

    http = {p.artifact: p.location for p in publications if p.publisher == "http"}
    assert http["kernel"] == f"{local_site.urls.repo}/ipa/ipa-it/ipa.kernel"
    body = _fetch(http["kernel"])
    checksum = _fetch(http["kernel"] + ".sha256").decode()
    assert body == manifest.path_of(manifest.artifacts[0]).read_bytes()
    assert checksum == f"{hashlib.sha256(body).hexdigest()}  ipa.kernel\n"
    initramfs = _fetch(http["initramfs"])
    assert _fetch(http["initramfs"] + ".sha256").decode().split()[0] == hashlib.sha256(initramfs).hexdigest()

    again = publish_manifests([manifest], SitePublishers(site_settings, tmp_path), ledger=None)
    assert all(p.noop for p in again) and len(again) == len(publications)

    # A new build hides the previous kernel and ramdisk; ``keep: 1`` keeps one of each, not one of both.
    rebuilt = replace(manifest, digest="b" * 64)
    publish_manifests([rebuilt], SitePublishers(site_settings, tmp_path), ledger=None)
    conn = GlancePublisher.connect(cloud=None, endpoint=local_site.urls.glance).conn
    hidden = [
        i for i in conn.image.images(is_hidden=True) if i.properties.get("kiln_target") == manifest.target
    ]
    assert sorted(i.id for i in hidden) == sorted([kernel["id"], ramdisk["id"]])
    assert _fetch(http["kernel"]) == body  # the same bytes under a new digest: the same version served
