"""Where provenance is referenced from once published: a file beside each package in the repo,
and an annotation on the registry's multi-arch index (with stand-in publishers)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from builder.manifest import Artifact, BuildManifest
from builder.pipeline.publish import publish_manifests
from builder.provenance import BuildContext, write_provenance


def _manifest(
    base: Path, kind: str, arch: str, artifacts: tuple[Artifact, ...], publish: dict
) -> BuildManifest:
    return BuildManifest(
        target=f"r:1:{arch}",
        recipe="r",
        kind=kind,
        arch=arch,
        release="9",
        variant=None,
        digest="d" * 64,
        artifacts=artifacts,
        publish=publish,
        build={"distro": "el", "release": "9"},
        build_id=7,
        verification={"status": "passed", "cases": 1},
        base_dir=base,
    )


class StandInRepo:
    def __init__(self, root: Path):
        self.root, self.base_url = root, "http://repo"
        self.records: list = []

    def publish(self, rpms, *, repo, distro, release, arch):
        repo_dir = self.root / repo / distro / release / arch
        placed = []
        for rpm in rpms:
            dest = repo_dir / "Packages" / rpm.name[0] / rpm.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(rpm.read_bytes())
            placed.append(dest.relative_to(repo_dir).as_posix())
        return SimpleNamespace(
            repo_dir=repo_dir, packages=tuple(placed), metadata_update="rebuilt", metadata_dir="m"
        )

    def record(self, repo, distro, release, arch, record):
        self.records.append((repo, distro, release, arch, record))


def test_the_repo_gets_each_packages_provenance_statement_beside_it(tmp_path):
    rpm = tmp_path / "out" / "hello-1.0-1.ppc64le.rpm"
    rpm.parent.mkdir()
    rpm.write_bytes(b"rpm bytes")
    artifact = Artifact("hello", "rpm", "out/hello-1.0-1.ppc64le.rpm", "e" * 64, 9)
    manifest = _manifest(tmp_path, "rpm-rebuild", "ppc64le", (artifact,), {"repo": {"repo": "kiln"}})
    manifest = write_provenance(manifest, BuildContext())
    repo = StandInRepo(tmp_path / "repo")
    publishers = SimpleNamespace(repo=lambda: repo, mirror=lambda: None)
    [publication] = publish_manifests([manifest], publishers, None)
    beside = tmp_path / "repo/kiln/el/9/ppc64le/Packages/h/hello-1.0-1.ppc64le.rpm.intoto.json"
    assert beside.read_bytes() == (tmp_path / "out/hello-1.0-1.ppc64le.rpm.intoto.json").read_bytes()
    assert publication.location == "http://repo/kiln/el/9/ppc64le/"
    # last, the publication record: what the repo answers a runner with no ledger from
    [(*place, record)] = repo.records
    assert place == ["kiln", "el", "9", "ppc64le"]
    assert (record.target, record.digest) == (manifest.target, manifest.digest)
    assert record.files == ("ppc64le/Packages/h/hello-1.0-1.ppc64le.rpm",)


def test_the_registry_index_is_annotated_with_each_archs_provenance_digest(tmp_path):
    pushed = {}

    class StandInRegistry:
        def push(self, repository, tag, images, annotations, on_step=None):
            pushed.update(annotations)
            return SimpleNamespace(reference=f"{repository}:{tag}")

    manifests = []
    for arch in ("x86_64", "ppc64le"):
        layout = tmp_path / arch / "oci"
        layout.mkdir(parents=True)
        (layout / "index.json").write_text("{}")
        artifact = Artifact("image", "oci-layout", "oci", "f" * 64, 2)
        manifest = _manifest(
            tmp_path / arch, "container", arch, (artifact,), {"registry": {"repository": "r", "tags": ["1"]}}
        )
        manifests.append(write_provenance(manifest, BuildContext()))
    publishers = SimpleNamespace(registry=lambda: (StandInRegistry(), ""))
    publish_manifests(manifests, publishers, None)
    expected = {f"{m.arch}=sha256:{m.provenance['image']['sha256']}" for m in manifests}
    assert set(pushed["io.kiln.provenance"].split(",")) == expected
