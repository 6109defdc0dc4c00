"""Publishing: the gate, the route from each manifest to its kind's publisher, and the ledger record.

A manifest is publishable once its verification passed or was switched off on purpose (the
manifest says which, and by what); ``allow_unverified`` is the explicit override. The publisher is
the kind's ``publish_route`` (glance, repo, registry), never a branch on a kind's name. Container
manifests of one recipe, release and variant are pushed together: one multi-arch tag over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..arch import Arch
from ..errors import EnvironmentProblem, InvalidInput, KilnError, Problem
from ..kinds import publishing_of
from ..ledger import Ledger, candidate_publisher
from ..manifest import BuildManifest
from ..provenance import copy_beside

Step = Callable[[str], None]


class Unverified(KilnError):
    """A manifest whose verification did not pass (and was not switched off) was asked to publish."""


@dataclass(frozen=True)
class Publication:
    target: str
    artifact: str
    publisher: str
    location: str
    noop: bool = False
    candidate: str | None = None  # published under candidate names (kiln build --candidate)

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "artifact": self.artifact,
            "publisher": self.publisher,
            "location": self.location,
            "noop": self.noop,
            "candidate": self.candidate,
        }


@dataclass(frozen=True)
class Candidate:
    """Publish under candidate names: ``id`` (a merge request's IID) and the suffixes site.yaml's
    ``candidates:`` makes of it (siteconfig.CandidateSite.suffixes)."""

    id: str
    image_suffix: str
    repo_suffix: str


def candidate_settings(manifest: BuildManifest, route: str, settings: Any, candidate: Candidate) -> Any:
    """A kind's publish settings renamed for a candidate by its route's renamer (:data:`CANDIDATE_NAMES`:
    the Glance image name and each registry tag get the image suffix, the RPM repository name the repo
    suffix), validated again (length limits). A route without a renamer is refused: a candidate is
    never published under production names."""
    rename = CANDIDATE_NAMES.get(route)
    if rename is None:
        raise InvalidInput(
            Problem(f"{manifest.target}: the {route} route has no candidate names: no candidate published")
        )
    data = settings.model_dump(mode="json")
    rename(manifest, data, candidate)
    try:
        return type(settings).model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInput(
            Problem(
                f"{manifest.target}: candidate {candidate.id} name for publish."
                f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
            )
        ) from None


def _glance_candidate(manifest: BuildManifest, data: dict[str, Any], candidate: Candidate) -> None:
    if data.get("glance") is not None:
        name = data["glance"].get("image_name") or default_image_name(manifest)
        data["glance"]["image_name"] = name + candidate.image_suffix


def _registry_candidate(manifest: BuildManifest, data: dict[str, Any], candidate: Candidate) -> None:
    if data.get("registry") is not None:
        data["registry"]["tags"] = [t + candidate.image_suffix for t in data["registry"]["tags"]]


def _repo_candidate(manifest: BuildManifest, data: dict[str, Any], candidate: Candidate) -> None:
    if data.get("repo") is not None:
        data["repo"]["repo"] = data["repo"]["repo"] + candidate.repo_suffix


def _ipa_candidate(manifest: BuildManifest, data: dict[str, Any], candidate: Candidate) -> None:
    _glance_candidate(manifest, data, candidate)
    if data.get("http") is not None:
        directory = data["http"].get("directory") or default_http_directory(manifest)
        data["http"]["directory"] = directory + candidate.image_suffix


# Per route: how its publish settings (dumped to JSON data) take a candidate's names, in place.
CANDIDATE_NAMES: dict[str, Callable[[BuildManifest, dict[str, Any], Candidate], None]] = {
    "glance": _glance_candidate,
    "registry": _registry_candidate,
    "repo": _repo_candidate,
    "ipa": _ipa_candidate,
}


# Routes whose publication spans several targets: the registry pushes every arch of one recipe
# (release, variant) under one tag. The pipeline publishes such a group once all of it is built.
PUBLISHED_TOGETHER = {"registry"}


def publish_group(target: Any) -> tuple[str, ...] | None:
    """The group a target is published with (route, recipe, release, variant), or None: alone."""
    route = target.spec.publish_route
    if route not in PUBLISHED_TOGETHER:
        return None
    return (route, target.recipe, target.release, target.variant or "")


def check_publishable(manifests: list[BuildManifest], allow_unverified: bool = False) -> None:
    """Refuse manifests whose verification did not pass, unless ``allow_unverified``."""
    refused = [m for m in manifests if not m.verification_ok]
    if refused and not allow_unverified:
        raise Unverified(
            "not publishing unverified builds (pass --allow-unverified to publish anyway):\n"
            + "\n".join(f"  {m.target}: verification {m.verification_summary}" for m in refused)
        )


def publish_settings(manifest: BuildManifest) -> Any:
    """The manifest's publish settings as its kind's typed model (defaults filled in once, there)."""
    try:
        spec = publishing_of(manifest.kind)
    except KeyError as exc:
        raise InvalidInput(Problem(f"{manifest.target}: {exc.args[0]}")) from None
    try:
        return spec.publish_route, spec.publish_model.model_validate(manifest.publish or {})
    except ValidationError as exc:
        raise InvalidInput(
            Problem(f"{manifest.target}: publish settings: {exc.errors()[0]['msg']}")
        ) from None


def publish_manifests(
    manifests: list[BuildManifest],
    publishers: Any,
    ledger: Ledger | None,
    on_step: Step = lambda _: None,
    candidate: Candidate | None = None,
) -> list[Publication]:
    """Publish each manifest through its kind's route; record the publications in the ledger.
    ``publishers`` is a publishers.from_site.SitePublishers (or a test's stand-in). With a
    ``candidate``, every route publishes under candidate names (never the production ones), and the
    ledger records those publications as the candidate's (Ledger.published ignores them)."""
    routed: dict[str, list[tuple[BuildManifest, Any]]] = {}
    for manifest in manifests:
        route, settings = publish_settings(manifest)
        if route is not None and candidate is not None:
            settings = candidate_settings(manifest, route, settings, candidate)
        if route is not None:
            routed.setdefault(route, []).append((manifest, settings))
    publications: list[Publication] = []
    for route, items in routed.items():
        publish = _ROUTES.get(route)
        if publish is None:
            raise EnvironmentProblem(f"no publisher for route {route!r}")
        publications += publish(items, publishers, on_step)
    if candidate is not None:
        publications = [replace(p, candidate=candidate.id) for p in publications]
    if ledger is not None:
        _record(ledger, manifests, publications)
    return publications


# --- routes -------------------------------------------------------------------------------------------


def _to_glance(items: list[tuple[BuildManifest, Any]], publishers: Any, on_step: Step) -> list[Publication]:
    out = []
    for manifest, settings in items:
        glance = settings.glance
        if glance is None:
            continue
        name = glance.image_name or default_image_name(manifest)
        kernel_id = None
        # Kernels first: Ironic's convention links a ramdisk image to its kernel (``kernel_id``).
        for artifact in sorted(manifest.artifacts, key=lambda a: a.type != "kernel"):
            if artifact.type not in ("disk-image", "kernel", "ramdisk", "iso"):
                continue
            suffix = "" if artifact.type == "disk-image" else f" {artifact.name}"
            properties = dict(glance.properties)
            if artifact.type == "ramdisk" and kernel_id is not None:
                properties["kernel_id"] = kernel_id
            on_step(f"glance: {manifest.target} {artifact.name}")
            result = publishers.glance().publish(
                manifest,
                artifact,
                name=name + suffix,
                visibility=glance.visibility,
                keep=glance.keep,
                properties=properties,
            )
            if artifact.type == "kernel":
                kernel_id = result.image_id
            out.append(Publication(manifest.target, artifact.name, "glance", result.image_id, result.noop))
    return out


def _to_repo(items: list[tuple[BuildManifest, Any]], publishers: Any, on_step: Step) -> list[Publication]:
    out = []
    for manifest, settings in items:
        repo = settings.repo
        if repo is None:
            continue
        build = manifest.build
        distro = repo.layout_distro or build.get("distro", "el")
        release = str(build.get("release", manifest.release))
        groups = {
            Arch.parse(manifest.arch).rpm: [a for a in manifest.artifacts if a.type == "rpm"],
            "source": [a for a in manifest.artifacts if a.type == "srpm"],
        }
        publisher = publishers.repo()
        for arch_dir, artifacts in groups.items():
            if not artifacts:
                continue
            on_step(f"repo: {manifest.target} -> {repo.repo}/{distro}/{release}/{arch_dir}")
            result = publisher.publish(
                [manifest.path_of(a) for a in artifacts],
                repo=repo.repo,
                distro=distro,
                release=release,
                arch=arch_dir,
            )
            on_step(f"repo: metadata {result.metadata_update} ({result.metadata_dir})")
            for artifact, placed in zip(artifacts, result.packages, strict=False):  # provenance beside each
                copy_beside(manifest.path_of(artifact), result.repo_dir / placed)
            mirror = publishers.mirror()
            if mirror is not None:
                on_step(f"mirror: {result.repo_dir}")
                mirror.sync(result.repo_dir, result.repo_dir.relative_to(publisher.root).as_posix())
                # a client pointed at the mirror needs the .repo file and the key from there too
                mirror.sync_client_files(_client_files(publisher, result))
            url = f"{publisher.base_url}/{result.repo_dir.relative_to(publisher.root).as_posix()}/"
            out += [Publication(manifest.target, a.name, "repo", url) for a in artifacts]
    return out


def _client_files(publisher: Any, result: Any) -> list[tuple[Path, str]]:
    """(local file, path relative to the repo root) of the .repo file and the public key."""
    key_name = str(publisher.key.public_key_url).rsplit("/", 1)[-1]
    return [
        (result.repo_file, result.repo_file.relative_to(publisher.root).as_posix()),
        (publisher.root / key_name, key_name),
    ]


def _to_registry(items: list[tuple[BuildManifest, Any]], publishers: Any, on_step: Step) -> list[Publication]:
    from ..publishers.registry import ArchImage

    groups: dict[tuple[str, str, str | None], list[tuple[BuildManifest, Any]]] = {}
    for manifest, settings in items:
        groups.setdefault((manifest.recipe, manifest.release, manifest.variant), []).append(
            (manifest, settings)
        )
    out = []
    for group in groups.values():
        registry = group[0][1].registry
        if registry is None:
            continue
        manifests = sorted((m for m, _ in group), key=lambda m: m.arch)
        publisher, prefix = publishers.registry()
        repository = f"{prefix}/{registry.repository}".strip("/")
        images = [
            ArchImage(m.arch_enum, m.path_of(a))
            for m in manifests
            for a in m.artifacts
            if a.type == "oci-layout"
        ]
        first = manifests[0]
        annotations = {
            "org.opencontainers.image.title": first.recipe,
            "org.opencontainers.image.version": first.release,
            "io.kiln.digests": ",".join(f"{m.arch}={m.digest}" for m in manifests),
        }
        if first.source_commit:
            annotations["org.opencontainers.image.revision"] = first.source_commit
        provenance = [
            f"{m.arch}=sha256:{p['sha256']}" for m in manifests for p in (m.provenance or {}).values()
        ]
        if provenance:  # each arch's in-toto statement (builder/provenance.py), by digest
            annotations["io.kiln.provenance"] = ",".join(provenance)
        for tag in registry.tags:
            result = publisher.push(repository, tag, images, annotations, on_step=on_step)
            out += [
                Publication(m.target, a.name, "registry", result.reference)
                for m in manifests
                for a in m.artifacts
                if a.type == "oci-layout"
            ]
    return out


@dataclass(frozen=True)
class InRegistry:
    """A target whose exact input digest is already under every tag it publishes to: not built, not
    pushed. ``manifest_digest`` is its arch's image there (a child built on it pulls it by digest)."""

    reference: str  # registry/repository:tag (the first tag)
    repository: str
    manifest_digest: str

    def pull(self, publishers: Any, dest: Path) -> Path:
        """The image into an OCI layout at ``dest`` (for a child layer to build on)."""
        publisher, _ = publishers.registry()
        return publisher.pull_layout(self.repository, self.manifest_digest, dest)


def in_registry(target: Any, publishers: Any, candidate: Candidate | None = None) -> InRegistry | None:
    """Ask the registry whether ``target`` is there already: every tag it would publish under holds an
    image for its arch whose Kiln digest (the index annotation written at push) is the target's. A
    target that publishes elsewhere, or to no registry, is never "in the registry"."""
    if target.spec.publish_route != "registry" or getattr(target.publish, "registry", None) is None:
        return None
    registry = target.publish.registry
    tags = [t + (candidate.image_suffix if candidate else "") for t in registry.tags]
    publisher, prefix = publishers.registry()
    repository = f"{prefix}/{registry.repository}".strip("/")
    found = None
    for tag in tags:
        image = publisher.published_images(repository, tag).get(target.arch.value)
        if image is None or image.kiln_digest != target.digest:
            return None
        found = found or InRegistry(
            f"{publisher.client.registry}/{repository}:{tag}", repository, image.manifest_digest
        )
    return found


def _to_ipa(items: list[tuple[BuildManifest, Any]], publishers: Any, on_step: Step) -> list[Publication]:
    """IPA ramdisks: Glance (kernel ``aki``, ramdisk ``ari``, ISO) and the Bifrost HTTP directory."""
    from ..publishers.http_dir import bifrost_files

    out = _to_glance(items, publishers, on_step)
    for manifest, settings in items:
        http = getattr(settings, "http", None)
        if http is None:
            continue
        files = bifrost_files(manifest)
        directory = http.directory or default_http_directory(manifest)
        publisher = publishers.http_dir()
        on_step(f"http: {manifest.target} -> {publisher.url_of(directory)}")
        result = publisher.publish(directory, files, on_step)
        out += [
            Publication(manifest.target, f.artifact, "http", publisher.url_of(directory, f.name), result.noop)
            for f in files
        ]
    return out


def default_http_directory(manifest: BuildManifest) -> str:
    """``publish.http.directory`` by omission: the default Glance name, one word (``ipa-bookworm-x86_64``),
    so the targets of one recipe (arches, releases, variants) never share a directory."""
    return default_image_name(manifest).replace(" ", "-")


_ROUTES: dict[str, Callable[[list[tuple[BuildManifest, Any]], Any, Step], list[Publication]]] = {
    "glance": _to_glance,
    "repo": _to_repo,
    "registry": _to_registry,
    "ipa": _to_ipa,
}


def default_image_name(manifest: BuildManifest) -> str:
    parts = [
        manifest.recipe,
        manifest.release,
        *([manifest.variant] if manifest.variant else []),
        manifest.arch,
    ]
    return " ".join(parts)


def _record(ledger: Ledger, manifests: list[BuildManifest], publications: list[Publication]) -> None:
    ids: dict[tuple[str, str], int] = {}
    for manifest in manifests:
        ids.update({(manifest.target, name): i for name, i in ledger.artifact_ids_for(manifest).items()})
    for pub in publications:
        if pub.noop:
            continue
        artifact_id = ids.get((pub.target, pub.artifact))
        if artifact_id is None:
            raise EnvironmentProblem(f"ledger has no artifact {pub.artifact} of {pub.target}")
        publisher = pub.publisher
        if pub.candidate is not None:
            publisher = candidate_publisher(pub.publisher, pub.candidate)
        ledger.record_publication(artifact_id, publisher, pub.location)
