"""The Bifrost HTTP directory: layout, checksums, the atomic switch, two versions kept, no-ops, refusals."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from builder.core.route import NO_FACTS, Routed
from builder.errors import CommandFailed, EnvironmentProblem, InvalidInput, RemoteDataError
from builder.manifest import BuildManifest, artifact_for
from builder.pipeline.publish import Candidate, publish_settings
from builder.publishers import http_dir
from builder.publishers.http_dir import IPA, HttpDirPublisher, bifrost_files, default_http_directory
from builder.publishers.publication_record import PublicationRecord


def _build(tmp_path: Path, content: bytes = b"k", iso: bool = False, **fields) -> BuildManifest:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "ipa.kernel").write_bytes(b"kernel " + content)
    (out / "ipa.initramfs").write_bytes(b"initramfs " + content * 1000)
    artifacts = [
        artifact_for(out, out / "ipa.kernel", "kernel", "kernel", "aki"),
        artifact_for(out, out / "ipa.initramfs", "initramfs", "ramdisk", "ari"),
    ]
    if iso:
        (out / "ipa.iso").write_bytes(b"iso " + content)
        artifacts.append(artifact_for(out, out / "ipa.iso", "iso", "iso", "iso"))
    values = {
        "target": "ipa:bookworm:x86_64",
        "recipe": "ipa",
        "kind": "ipa-ramdisk",
        "arch": "x86_64",
        "release": "bookworm",
        "variant": None,
        "digest": hashlib.sha256(content).hexdigest(),
        "artifacts": tuple(artifacts),
        "publish": {"http": {"directory": "bifrost"}},
        "build": {"distro": "debian", "release": "bookworm"},
        "base_dir": out,
    }
    values.update(fields)
    return BuildManifest(**values)


def _versions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".bifrost.") and p.is_dir())


def _publish(tmp_path: Path, manifest: BuildManifest) -> http_dir.HttpDirResult:
    return HttpDirPublisher(tmp_path / "www", "http://h/ipa").publish("bifrost", bifrost_files(manifest))


def test_the_directory_holds_bifrost_names_and_sha256_files_naming_them(tmp_path):
    manifest = _build(tmp_path, iso=True)
    result = _publish(tmp_path, manifest)
    served = tmp_path / "www" / "bifrost"
    assert sorted(p.name for p in served.iterdir()) == [
        "ipa.initramfs",
        "ipa.initramfs.sha256",
        "ipa.iso",
        "ipa.iso.sha256",
        "ipa.kernel",
        "ipa.kernel.sha256",
    ]
    for name in ("ipa.kernel", "ipa.initramfs", "ipa.iso"):
        digest = hashlib.sha256((served / name).read_bytes()).hexdigest()
        assert (served / f"{name}.sha256").read_text() == f"{digest}  {name}\n"
    assert served.is_symlink() and os.readlink(served) == result.version
    assert result.url == "http://h/ipa/bifrost/" and not result.noop


def test_without_an_iso_only_kernel_and_initramfs_are_published(tmp_path):
    _publish(tmp_path, _build(tmp_path))
    assert sorted(p.name for p in (tmp_path / "www" / "bifrost").iterdir()) == [
        "ipa.initramfs",
        "ipa.initramfs.sha256",
        "ipa.kernel",
        "ipa.kernel.sha256",
    ]


def test_the_same_content_again_is_a_no_op(tmp_path):
    manifest = _build(tmp_path)
    first = _publish(tmp_path, manifest)
    mtime = (tmp_path / "www" / "bifrost" / "ipa.kernel").stat().st_mtime_ns
    again = _publish(tmp_path, manifest)
    assert again.noop and again.version == first.version
    assert (tmp_path / "www" / "bifrost" / "ipa.kernel").stat().st_mtime_ns == mtime
    assert _versions(tmp_path / "www") == [first.version]


def test_the_previous_version_is_kept_and_older_ones_removed(tmp_path):
    results = [_publish(tmp_path, _build(tmp_path, content)) for content in (b"1", b"2", b"3")]
    assert _versions(tmp_path / "www") == sorted([results[1].version, results[2].version])
    assert results[2].removed == (results[0].version,)
    assert (tmp_path / "www" / "bifrost" / "ipa.kernel").read_bytes() == b"kernel 3"


def test_the_symlink_is_switched_once_after_every_file_is_written(tmp_path, monkeypatch):
    _publish(tmp_path, _build(tmp_path, b"old"))
    seen = []
    real_replace = os.replace

    def spy(src, dst, **kwargs):
        if dst == "bifrost":
            target = os.readlink(src, dir_fd=kwargs["src_dir_fd"])
            seen.append(sorted(os.listdir(tmp_path / "www" / target)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(http_dir.os, "replace", spy)
    _publish(tmp_path, _build(tmp_path, b"new"))
    assert seen == [["ipa.initramfs", "ipa.initramfs.sha256", "ipa.kernel", "ipa.kernel.sha256"]]


def test_a_reader_during_publishes_sees_the_old_set_or_the_new_never_a_mix(tmp_path):
    www = tmp_path / "www"
    _publish(tmp_path, _build(tmp_path, b"0"))
    mixes: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:  # as a client would: resolve the directory once, then read the set from it
                version = www / os.readlink(www / "bifrost")
                kernel = (version / "ipa.kernel").read_bytes()
                initramfs = (version / "ipa.initramfs").read_bytes()
                sums = (version / "ipa.kernel.sha256").read_text().split()[0]
            except FileNotFoundError:
                continue  # a version two publishes old, pruned while read: the reader retries
            if kernel[-1:] != initramfs[-1:] or sums != hashlib.sha256(kernel).hexdigest():
                mixes.append(version.name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for content in b"123456789":
            build_dir = tmp_path / f"b{content}"
            build_dir.mkdir()
            _publish(tmp_path, _build(build_dir, bytes([content])))
    finally:
        done.set()
        thread.join()
    assert mixes == []
    assert (www / "bifrost" / "ipa.kernel").read_bytes() == b"kernel 9"


def test_an_artifact_changed_after_the_build_is_refused_and_the_old_set_stays(tmp_path):
    first = _publish(tmp_path, _build(tmp_path, b"a"))
    manifest = _build(tmp_path, b"b")
    manifest.path_of(manifest.artifacts[1]).write_bytes(b"tampered")
    with pytest.raises(CommandFailed, match="changed after it was built"):
        _publish(tmp_path, manifest)
    assert os.readlink(tmp_path / "www" / "bifrost") == first.version
    assert _versions(tmp_path / "www") == [first.version]
    assert not [p for p in (tmp_path / "www").iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "..", ".", "", "x" * 129, "sp ace"])
def test_a_directory_name_that_could_escape_the_root_is_refused(tmp_path, name):
    with pytest.raises(InvalidInput):
        HttpDirPublisher(tmp_path / "www", "http://h").publish(name, bifrost_files(_build(tmp_path)))
    assert not (tmp_path / "escape").exists()


def test_a_symlink_kiln_did_not_make_is_refused_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "bifrost").symlink_to(outside)
    with pytest.raises(EnvironmentProblem, match="Kiln did not make"):
        _publish(tmp_path, _build(tmp_path))
    assert list(outside.iterdir()) == []
    assert (tmp_path / "www" / "bifrost").resolve() == outside


def test_a_directory_laid_out_by_hand_is_kept_as_the_previous_version(tmp_path):
    by_hand = tmp_path / "www" / "bifrost"
    by_hand.mkdir(parents=True)
    (by_hand / "ipa.kernel").write_bytes(b"hand made")
    _publish(tmp_path, _build(tmp_path))
    legacy = [p for p in (tmp_path / "www").iterdir() if ".legacy-" in p.name]
    assert [(p / "ipa.kernel").read_bytes() for p in legacy] == [b"hand made"]
    assert (by_hand / "ipa.kernel").read_bytes() == b"kernel k"


def test_leftovers_of_a_killed_publish_are_removed_by_the_next(tmp_path):
    _publish(tmp_path, _build(tmp_path, b"1"))
    (tmp_path / "www" / ".bifrost.tmp-0123456789ab").mkdir()
    (tmp_path / "www" / ".bifrost.tmp-0123456789ab" / "ipa.kernel").write_bytes(b"half")
    _publish(tmp_path, _build(tmp_path, b"2"))
    assert not (tmp_path / "www" / ".bifrost.tmp-0123456789ab").exists()


# --- the route's settings -----------------------------------------------------------------------------


def test_the_default_directory_names_release_and_arch_so_targets_never_share_one(tmp_path):
    x86 = _build(tmp_path)
    ppc = _build(tmp_path, target="ipa:bookworm:ppc64le", arch="ppc64le")
    assert default_http_directory(x86) == "ipa-bookworm-x86_64"
    assert default_http_directory(ppc) == "ipa-bookworm-ppc64le"


def test_a_candidate_publishes_to_a_suffixed_directory_and_glance_name(tmp_path):
    manifest = _build(tmp_path, publish={"glance": {}, "http": {}})
    route, settings = publish_settings(manifest)
    renamed = route.settings_for(manifest, settings, Candidate("42", "-mr42", "-mr42"))
    assert route is IPA
    assert renamed.http.directory == "ipa-bookworm-x86_64-mr42"
    assert renamed.glance.image_name == "ipa bookworm x86_64-mr42"


class _Glance:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def publish(self, manifest, artifact, *, name, visibility, keep, properties, facts):
        from builder.publishers.glance import GlanceResult

        self.calls.append((name, properties))
        return GlanceResult(f"id-{artifact.name}", name, False, (), ())


class _Publishers:
    def __init__(self, root: Path) -> None:
        self._glance = _Glance()
        self._http = HttpDirPublisher(root, "http://h/ipa")

    def glance(self) -> _Glance:
        return self._glance

    def http_dir(self) -> HttpDirPublisher:
        return self._http


def test_the_ipa_route_publishes_the_kernel_first_and_links_the_ramdisk_to_it(tmp_path):
    manifest = _build(tmp_path, iso=True, publish={"glance": {"image_name": "ipa"}, "http": {}})
    manifest = BuildManifest(**{**manifest.__dict__, "artifacts": manifest.artifacts[::-1]})
    publishers = _Publishers(tmp_path / "www")
    _, settings = publish_settings(manifest)
    publications = IPA.publish([Routed(manifest, settings, NO_FACTS)], publishers, lambda _: None)
    calls = publishers.glance().calls
    assert [name for name, _ in calls] == ["ipa kernel", "ipa iso", "ipa initramfs"]
    assert dict(calls)["ipa initramfs"]["kernel_id"] == "id-kernel"
    assert "kernel_id" not in dict(calls)["ipa iso"]
    http = {p.artifact: p.location for p in publications if p.publisher == "http"}
    assert http == {
        "kernel": "http://h/ipa/ipa-bookworm-x86_64/ipa.kernel",
        "initramfs": "http://h/ipa/ipa-bookworm-x86_64/ipa.initramfs",
        "iso": "http://h/ipa/ipa-bookworm-x86_64/ipa.iso",
    }


def test_without_http_settings_the_ipa_route_publishes_to_glance_only(tmp_path):
    manifest = _build(tmp_path, publish={"glance": {}})
    publishers = _Publishers(tmp_path / "www")
    _, settings = publish_settings(manifest)
    publications = IPA.publish([Routed(manifest, settings, NO_FACTS)], publishers, lambda _: None)
    assert {p.publisher for p in publications} == {"glance"}
    assert not (tmp_path / "www").exists()


def test_site_yaml_names_the_root_and_url_and_the_local_site_serves_its_repo_trees_ipa_directory(tmp_path):
    from builder.publishers.from_site import SitePublishers
    from builder.siteconfig import SiteConfig

    local = SitePublishers(SiteConfig(), tmp_path).http_dir()
    assert local.root == tmp_path / ".kiln/site/repo/ipa"
    assert local.url_of("d", "ipa.kernel") == "http://127.0.0.1:18080/ipa/d/ipa.kernel"
    site = SiteConfig.model_validate({"ipa_http": {"root": str(tmp_path / "boot"), "url": "http://b:8080/"}})
    chosen = SitePublishers(site, tmp_path).http_dir()
    assert chosen.root == tmp_path / "boot" and chosen.url_of("d") == "http://b:8080/d/"


def test_the_record_is_switched_in_with_the_files_and_other_inputs_make_a_new_version(tmp_path):
    manifest = _build(tmp_path)
    publisher = HttpDirPublisher(tmp_path / "www", "http://h/ipa")
    files = bifrost_files(manifest)
    record = PublicationRecord(manifest.target, manifest.digest, 1000.0, ("ipa.kernel", "ipa.initramfs"))
    first = publisher.publish("bifrost", files, record=record)
    served = tmp_path / "www" / "bifrost" / http_dir.RECORD_NAME
    assert PublicationRecord.parse(served.read_bytes(), "x") == record
    again = PublicationRecord(manifest.target, manifest.digest, 2000.0, record.files)  # a retried job
    assert publisher.publish("bifrost", files, record=again).noop  # the record keeps the first time
    assert PublicationRecord.parse(served.read_bytes(), "x").published_at == 1000.0
    other = PublicationRecord(manifest.target, "9" * 64, 3000.0, record.files)  # same bytes, other inputs
    second = publisher.publish("bifrost", files, record=other)
    assert not second.noop and second.version != first.version
    assert PublicationRecord.parse(served.read_bytes(), "x").digest == "9" * 64


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"format": 2, "target": "t", "digest": "d", "published_at": 1}',
     b'{"format": 1, "target": "t", "digest": 5, "published_at": 1}',
     b'{"format": 1, "target": "t", "digest": "d", "published_at": true}'],
)  # fmt: skip
def test_a_record_that_is_not_one_is_refused_naming_the_url(body):
    with pytest.raises(RemoteDataError, match=r"^http://h/r\.json: "):
        PublicationRecord.parse(body, "http://h/r.json")
