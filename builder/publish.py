"""``kiln publish``: route each build manifest's artifacts to its publisher and record where they went.

guest images and IPA ramdisks -> Glance; RPMs -> the signed repo (and its mirror); containers ->
the registry, one multi-arch tag per (recipe, release, variant) over every manifest given.
Publishers come from site.yaml: a real cloud/registry/mirror, or the embedded local site.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arch import Arch
from .errors import EnvironmentProblem, InvalidInput, Problem
from .ledger import Ledger
from .manifest import BuildManifest
from .siteconfig import SiteConfig

Step = Callable[[str], None]


@dataclass(frozen=True)
class Publication:
    target: str
    artifact: str
    publisher: str
    location: str
    noop: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "artifact": self.artifact,
            "publisher": self.publisher,
            "location": self.location,
            "noop": self.noop,
        }


class Publishing:
    """Publishers for one site, created on first use (each may need a service to be up)."""

    def __init__(self, site: SiteConfig, root: Path, on_step: Step = lambda _: None):
        from .site.local import LocalSite

        self.site = site
        self.root = root
        self.local = LocalSite(site.state_dir(root), site.local)
        self.on_step = on_step
        self._glance: Any = None
        self._repo: Any = None

    # -- publishers ---------------------------------------------------------------------------------

    def glance(self) -> Any:
        if self._glance is None:
            from .publishers.glance import GlancePublisher

            cloud = self.site.glance.cloud or os.environ.get("OS_CLOUD")
            self._glance = GlancePublisher.connect(
                cloud=cloud,
                endpoint=None if cloud else self.local.urls.glance,
                method=self.site.glance.method,
            )
        return self._glance

    def registry(self) -> Any:
        from .publishers.registry import RegistryClient, RegistryPublisher, docker_config_auth

        url = self.site.registry.url or self.local.urls.registry
        host = url.split("/")[0]
        config = (
            Path(os.path.expanduser(self.site.registry.docker_config))
            if self.site.registry.docker_config
            else None
        )
        client = RegistryClient(
            host, insecure=self.site.registry.insecure, auth=docker_config_auth(config, host)
        )
        return RegistryPublisher(client), url[len(host) :].strip("/")

    def repo(self) -> Any:
        if self._repo is None:
            from .publishers.repo import RepoKey, RepoPublisher
            from .site.local import REPO_KEY_FILE
            from .site.signing import ensure_key

            settings = self.site.repo
            if settings.backend == "path":
                root = Path(os.path.expanduser(settings.path or ""))
            elif settings.backend == "local":
                root = self.local.repo_root
            else:  # s3, rsync: a local working tree, then mirrored
                root = self.local.state / "mirror-work"
            base_url = settings.base_url or (
                settings.s3.public_url if settings.s3 and settings.s3.public_url else self.local.urls.repo
            )
            if settings.signing_key:
                gnupghome = Path(os.path.expanduser(settings.signing_key.gnupghome))
                key = RepoKey(gnupghome, settings.signing_key.fingerprint, f"{base_url}/{REPO_KEY_FILE}")
            else:
                site_key = ensure_key(self.local.gnupghome, root / REPO_KEY_FILE)
                key = RepoKey(site_key.gnupghome, site_key.fingerprint, f"{base_url}/{REPO_KEY_FILE}")
            self._repo = RepoPublisher(root, key, base_url)
        return self._repo

    def mirror(self) -> Any:
        settings = self.site.repo
        if settings.backend == "s3" and settings.s3 is not None:
            import boto3
            from botocore.config import Config

            from .publishers.mirror import S3Mirror
            from .site.swift import S3_ACCESS_KEY, S3_SECRET_KEY, add_content_md5_for_delete

            endpoint = settings.s3.endpoint_url or self.local.urls.s3
            local = settings.s3.endpoint_url is None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=settings.s3.region,
                aws_access_key_id=S3_ACCESS_KEY if local else None,
                aws_secret_access_key=S3_SECRET_KEY if local else None,
                config=Config(s3={"addressing_style": "path"}),
            )
            add_content_md5_for_delete(client)
            return S3Mirror(client, settings.s3.bucket, settings.s3.prefix)
        if settings.backend == "rsync" and settings.rsync_target:
            from .publishers.mirror import RsyncMirror

            return RsyncMirror(settings.rsync_target)
        return None

    # -- per kind -----------------------------------------------------------------------------------

    def publish_images(self, manifest: BuildManifest) -> list[Publication]:
        glance_settings = (manifest.publish or {}).get("glance")
        if not glance_settings:
            return []
        name = glance_settings.get("image_name") or _default_image_name(manifest)
        out = []
        for artifact in manifest.artifacts:
            if artifact.type not in ("disk-image", "kernel", "ramdisk", "iso"):
                continue
            suffix = "" if artifact.type == "disk-image" else f" {artifact.name}"
            self.on_step(f"glance: {manifest.target} {artifact.name}")
            result = self.glance().publish(
                manifest,
                artifact,
                name=name + suffix,
                visibility=glance_settings.get("visibility", "private"),
                keep=int(glance_settings.get("keep", 3)),
                properties=glance_settings.get("properties") or {},
            )
            out.append(Publication(manifest.target, artifact.name, "glance", result.image_id, result.noop))
        return out

    def publish_rpms(self, manifest: BuildManifest) -> list[Publication]:
        repo_settings = (manifest.publish or {}).get("repo")
        if not repo_settings:
            return []
        build = manifest.build
        distro = repo_settings.get("layout_distro") or build.get("distro", "el")
        release = str(build.get("release", manifest.release))
        out = []
        groups = {
            Arch.parse(manifest.arch).rpm: [a for a in manifest.artifacts if a.type == "rpm"],
            "source": [a for a in manifest.artifacts if a.type == "srpm"],
        }
        publisher = self.repo()
        for arch_dir, artifacts in groups.items():
            if not artifacts:
                continue
            self.on_step(f"repo: {manifest.target} -> {repo_settings['repo']}/{distro}/{release}/{arch_dir}")
            result = publisher.publish(
                [manifest.path_of(a) for a in artifacts],
                repo=repo_settings["repo"],
                distro=distro,
                release=release,
                arch=arch_dir,
            )
            self.on_step(f"repo: metadata {result.metadata_update} ({result.metadata_dir})")
            mirror = self.mirror()
            if mirror is not None:
                self.on_step(f"mirror: {result.repo_dir}")
                mirror.sync(result.repo_dir, result.repo_dir.relative_to(publisher.root).as_posix())
            url = f"{publisher.base_url}/{result.repo_dir.relative_to(publisher.root).as_posix()}/"
            out += [Publication(manifest.target, a.name, "repo", url) for a in artifacts]
        return out

    def publish_containers(self, manifests: list[BuildManifest]) -> list[Publication]:
        from .publishers.registry import ArchImage

        groups: dict[tuple[str, str, str | None], list[BuildManifest]] = {}
        for m in manifests:
            groups.setdefault((m.recipe, m.release, m.variant), []).append(m)
        out = []
        for group in groups.values():
            settings = (group[0].publish or {}).get("registry")
            if not settings:
                continue
            publisher, prefix = self.registry()
            repository = f"{prefix}/{settings['repository']}".strip("/")
            images = [
                ArchImage(m.arch_enum, m.path_of(a))
                for m in sorted(group, key=lambda m: m.arch)
                for a in m.artifacts
                if a.type == "oci-layout"
            ]
            annotations = {
                "org.opencontainers.image.title": group[0].recipe,
                "org.opencontainers.image.version": group[0].release,
                "io.kiln.digests": ",".join(f"{m.arch}={m.digest}" for m in group),
            }
            if group[0].source_commit:
                annotations["org.opencontainers.image.revision"] = group[0].source_commit
            for tag in settings["tags"]:
                result = publisher.push(repository, tag, images, annotations, on_step=self.on_step)
                for m in group:
                    for a in m.artifacts:
                        if a.type == "oci-layout":
                            out.append(Publication(m.target, a.name, "registry", result.reference))
        return out


def _default_image_name(manifest: BuildManifest) -> str:
    parts = [
        manifest.recipe,
        manifest.release,
        *([manifest.variant] if manifest.variant else []),
        manifest.arch,
    ]
    return " ".join(parts)


def publish_manifests(
    manifests: list[BuildManifest], publishing: Publishing, ledger: Ledger | None
) -> list[Publication]:
    publications: list[Publication] = []
    containers = [m for m in manifests if m.kind == "container"]
    for manifest in manifests:
        if manifest.kind in ("guest-image", "ipa-ramdisk"):
            publications += publishing.publish_images(manifest)
        elif manifest.kind == "rpm-rebuild":
            publications += publishing.publish_rpms(manifest)
        elif manifest.kind != "container":
            raise InvalidInput(Problem(f"{manifest.target}: unknown kind {manifest.kind!r}"))
    publications += publishing.publish_containers(containers)
    if ledger is not None:
        _record(ledger, manifests, publications)
    return publications


def _record(ledger: Ledger, manifests: list[BuildManifest], publications: list[Publication]) -> None:
    by_target = {m.target: m for m in manifests}
    ids: dict[tuple[str, str], int] = {}
    for manifest in manifests:
        ids.update({(manifest.target, name): i for name, i in ledger.artifact_ids_for(manifest).items()})
    for pub in publications:
        if pub.noop:
            continue
        artifact_id = ids.get((pub.target, pub.artifact))
        if artifact_id is None:
            raise EnvironmentProblem(
                f"ledger has no artifact {pub.artifact} of {by_target[pub.target].target}"
            )
        ledger.record_publication(artifact_id, pub.publisher, pub.location)
