"""Push per-arch OCI images and one multi-arch index to a registry, over the distribution v2 API.

Input: one OCI image layout directory per architecture (what ``skopeo copy ... oci:DIR`` or
``buildah push ... oci:DIR`` writes). Order, so that the tag never points at something incomplete:

1. every blob (layers, config) that the registry does not have yet (``HEAD`` first: shared base layers
   are not uploaded again);
2. each architecture's manifest, by digest (no tag);
3. the index (manifest list) under the tag: the only step a puller can see, done last.

Transient failures (connection errors, 5xx, 429) are retried with exponential backoff; when retries
run out the error names the request, and the tag has not moved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ..arch import Arch
from ..core.route import (
    NO_FACTS,
    Candidate,
    Facts,
    Found,
    Publication,
    Publishers,
    ReusableImage,
    Route,
    Routed,
    Step,
    TargetLike,
)
from ..errors import CommandFailed, EnvironmentProblem, InvalidInput, Problem

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}, {OCI_INDEX}"
RETRYABLE = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ArchImage:
    arch: Arch
    layout: Path  # an OCI image layout directory


@dataclass(frozen=True)
class PushResult:
    reference: str  # registry/repository:tag
    index_digest: str
    manifests: dict[str, str]  # arch -> manifest digest
    uploaded_blobs: int
    skipped_blobs: int
    uploaded_bytes: int = 0  # layer and config bytes sent (the push stream): 0 when the registry had all


@dataclass(frozen=True)
class PublishedImage:
    """One arch under a tag as Kiln pushed it: Kiln's input digest (the index's ``io.kiln.digests``
    annotation) and the digest of that arch's image manifest (what a puller gets)."""

    kiln_digest: str
    manifest_digest: str


@dataclass
class RegistryClient:
    registry: str  # host:port
    insecure: bool = False
    auth: tuple[str, str] | None = None  # basic credentials (from docker config.json)
    auth_source: str = ""  # the docker config file consulted (a path, never its contents): for errors
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 300.0
    session: requests.Session = field(default_factory=requests.Session)
    _bearer: dict[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep

    @property
    def base(self) -> str:
        scheme = "http" if self.insecure or self.registry.startswith(("127.", "localhost")) else "https"
        return f"{scheme}://{self.registry}"

    def request(
        self, method: str, url: str, *, scope: str, ok: tuple[int, ...], **kwargs: Any
    ) -> requests.Response:
        """One API call with retries on transient failures and bearer-token auth when asked for.

        A 401 with a Bearer challenge fetches a fresh token once per call (tokens expire during long
        pushes) and does not count as a retry."""
        if not url.startswith("http"):
            url = self.base + url
        headers = dict(kwargs.pop("headers", None) or {})
        last = ""
        attempt = 0
        refreshed = False
        while True:
            response, error = self._send(method, url, headers, scope, kwargs)
            if response is not None:
                if response.status_code == 401 and not refreshed and self._get_token(response, scope):
                    refreshed = True
                    continue
                if response.status_code in ok:
                    return response
                if response.status_code == 401:
                    raise EnvironmentProblem(self._unauthorized(method, url))
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRYABLE:
                    break
            else:
                last = error
            if attempt >= self.retries:
                break
            attempt += 1
            self.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise CommandFailed(f"registry {self.registry}: {method} {url.split('?')[0]} failed: {last}")

    def _unauthorized(self, method: str, url: str) -> str:
        held = "its credentials were refused" if self.auth else "it holds no credentials for this registry"
        used = f"docker config used: {self.auth_source} ({held})" if self.auth_source else "no docker config"
        return (
            f"registry {self.registry} refused {method} {url.split('?')[0]} (HTTP 401: authentication "
            f"required); {used}. Put the registry's credentials in a docker config file (site.yaml "
            f"registry.docker_config names it) and retry"
        )

    def _send(
        self, method: str, url: str, headers: dict[str, str], scope: str, kwargs: dict[str, Any]
    ) -> tuple[requests.Response | None, str]:
        sent = dict(headers)
        token = self._bearer.get(scope)
        if token:
            sent["Authorization"] = f"Bearer {token}"
        elif self.auth:
            sent["Authorization"] = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        data = kwargs.get("data")
        if hasattr(data, "seek"):
            data.seek(0)  # a retried upload starts from the beginning of the file
        try:
            return self.session.request(method, url, headers=sent, timeout=self.timeout_s, **kwargs), ""
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _get_token(self, response: requests.Response, scope: str) -> bool:
        challenge = response.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        params.setdefault("scope", scope)
        self._bearer.pop(scope, None)  # an expired token is replaced, never reused
        basic = requests.auth.HTTPBasicAuth(*self.auth) if self.auth else None
        reply = self.session.get(realm, params=params, auth=basic, timeout=60)
        if reply.status_code != 200:
            return False
        body = reply.json()
        self._bearer[scope] = body.get("token") or body.get("access_token") or ""
        return bool(self._bearer[scope])


def docker_config_path(config_path: Path | None = None) -> Path:
    """The docker config file to read: the one named, else docker's own (``$DOCKER_CONFIG``)."""
    return config_path or Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"


def docker_config_auth(config_path: Path | None, registry: str) -> tuple[str, str] | None:
    """Basic credentials for ``registry`` from a docker config.json (``auths.<registry>.auth``)."""
    path = docker_config_path(config_path)
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (FileNotFoundError, ValueError):
        return None
    entry = auths.get(registry) or auths.get(f"https://{registry}")
    if not entry or "auth" not in entry:
        return None
    try:
        user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(Problem(f"{path}: auths.{registry}.auth is not base64 of user:password")) from None
    return user, password


def merge_annotations(old: dict[str, str], new: dict[str, str], pushed_arches: set[str]) -> dict[str, str]:
    """Index annotations after a push of some arches: per-arch lists (``io.kiln.digests``:
    ``x86_64=...,ppc64le=...``) keep the other arches' items; everything else is the new value."""
    pushed = set()
    for oci in pushed_arches:
        try:
            pushed.add(Arch.parse(oci).value)
        except ValueError:
            pushed.add(oci)
    merged = {**old, **new}
    for key in set(old) & set(new):
        items = [i for i in old[key].split(",") if "=" in i]
        if not items or len(items) != len(old[key].split(",")):
            continue  # not a per-arch list
        others = [i for i in items if i.split("=", 1)[0] not in pushed]
        merged[key] = ",".join(sorted(others + [i for i in new[key].split(",") if i]))
    return merged


def _read_layout(layout: Path) -> tuple[dict[str, Any], bytes, str]:
    """(manifest JSON, manifest bytes, media type) of the single image in an OCI layout."""
    try:
        index = json.loads((layout / "index.json").read_text())
        [descriptor] = index["manifests"]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InvalidInput(Problem(f"{layout}: not an OCI image layout with one image ({exc})")) from None
    raw = _blob_path(layout, descriptor["digest"]).read_bytes()
    return json.loads(raw), raw, descriptor.get("mediaType", OCI_MANIFEST)


def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise InvalidInput(Problem(f"{layout}: unsupported blob digest {digest!r}"))
    return layout / "blobs" / algo / hexdigest


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryPublisher:
    def __init__(self, client: RegistryClient):
        self.client = client

    def push(
        self,
        repository: str,
        tag: str,
        images: list[ArchImage],
        annotations: dict[str, str] | None = None,
        on_step: Callable[[str], None] = lambda _: None,
    ) -> PushResult:
        if not images:
            raise InvalidInput(Problem("nothing to push: no per-arch images"))
        scope = f"repository:{repository}:pull,push"
        uploaded = skipped = sent = 0
        entries = []
        manifests: dict[str, str] = {}
        for image in images:
            manifest, raw, media_type = _read_layout(image.layout)
            for descriptor in [manifest["config"], *manifest["layers"]]:
                size = self._push_blob(repository, image.layout, descriptor["digest"], scope)
                if size is not None:
                    uploaded, sent = uploaded + 1, sent + size
                else:
                    skipped += 1
            digest = _sha256(raw)
            self._put_manifest(repository, digest, raw, media_type, scope)
            on_step(f"pushed {image.arch.value} manifest {digest[:19]}")
            manifests[image.arch.value] = digest
            entries.append(
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": len(raw),
                    "platform": {"architecture": image.arch.oci, "os": "linux"},
                }
            )
        # Arches built elsewhere (another CI job per arch) stay under the tag: their entries are kept.
        pushed = {e["platform"]["architecture"] for e in entries}
        kept, old_annotations = self._current_index(repository, tag, scope)
        entries = sorted(
            [e for e in kept if e.get("platform", {}).get("architecture") not in pushed] + entries,
            key=lambda e: str(e.get("platform", {}).get("architecture")),
        )
        annotations = merge_annotations(old_annotations, annotations or {}, pushed) if kept else annotations
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        if annotations:
            index["annotations"] = dict(sorted(annotations.items()))
        body = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        # The tag moves here, after every architecture is in the registry.
        self._put_manifest(repository, tag, body, OCI_INDEX, scope)
        on_step(
            f"tagged {repository}:{tag} ({uploaded} blobs, {sent / 1e6:.1f} MB sent; {skipped} already there)"
        )
        return PushResult(
            f"{self.client.registry}/{repository}:{tag}", _sha256(body), manifests, uploaded, skipped, sent
        )

    def _current_index(
        self, repository: str, tag: str, scope: str
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The entries and annotations of the index under ``tag`` now (none when absent or not an index)."""
        response = self.client.request(
            "GET",
            f"/v2/{repository}/manifests/{tag}",
            scope=scope,
            ok=(200, 404),
            headers={"Accept": f"{OCI_INDEX}, {DOCKER_LIST}"},
        )
        if response.status_code != 200:
            return [], {}
        try:
            body = response.json()
        except ValueError:
            return [], {}
        if body.get("mediaType") not in (OCI_INDEX, DOCKER_LIST) or not isinstance(
            body.get("manifests"), list
        ):
            return [], {}
        return list(body["manifests"]), dict(body.get("annotations") or {})

    def _put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str, scope: str
    ) -> None:
        """PUT a manifest or index under a digest (invisible to pullers) or a tag (what they see)."""
        self.client.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=scope,
            ok=(201,),
            data=body,
            headers={"Content-Type": media_type},
        )

    def _push_blob(self, repository: str, layout: Path, digest: str, scope: str) -> int | None:
        """Upload one blob unless the registry has it; the bytes sent, or None when it had it."""
        head = self.client.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope, ok=(200, 404))
        if head.status_code == 200:
            return None
        path = _blob_path(layout, digest)
        if not path.exists():
            raise InvalidInput(Problem(f"{layout}: blob {digest} is missing from the layout"))
        start = self.client.request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope, ok=(202,))
        location = start.headers.get("Location")
        if not location:
            raise EnvironmentProblem(f"registry {self.client.registry} gave no upload location")
        if location.startswith("/"):
            location = self.client.base + location
        separator = "&" if "?" in location else "?"
        with path.open("rb") as handle:
            self.client.request(
                "PUT",
                f"{location}{separator}digest={digest}",
                scope=scope,
                ok=(201,),
                data=handle,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                },
            )
        return path.stat().st_size

    def published_images(self, repository: str, tag: str) -> dict[str, PublishedImage]:
        """Kiln arch -> the image Kiln pushed for it under ``tag`` (none when the tag is absent, is not
        an index, or was not pushed by Kiln: an arch without an ``io.kiln.digests`` item is left out)."""
        entries, annotations = self._current_index(repository, tag, f"repository:{repository}:pull")
        kiln = dict(
            item.split("=", 1) for item in annotations.get("io.kiln.digests", "").split(",") if "=" in item
        )
        found = {}
        for entry in entries:
            try:
                arch = Arch.parse(str(entry.get("platform", {}).get("architecture"))).value
            except ValueError:
                continue
            if arch in kiln and isinstance(entry.get("digest"), str):
                found[arch] = PublishedImage(kiln[arch], entry["digest"])
        return found

    def pull_layout(self, repository: str, digest: str, dest: Path) -> Path:
        """The image manifest ``digest`` and its blobs, into an OCI layout at ``dest``; every byte is
        checked against its digest, and ``dest`` appears whole or not at all."""

        scope = f"repository:{repository}:pull"
        response = self.client.request(
            "GET",
            f"/v2/{repository}/manifests/{digest}",
            scope=scope,
            ok=(200,),
            headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"},
        )
        raw = response.content
        if _sha256(raw) != digest:
            raise CommandFailed(f"registry {self.client.registry}: {repository}@{digest} has other bytes")
        try:
            manifest = json.loads(raw)
            blobs = [manifest["config"], *manifest["layers"]]
        except (ValueError, KeyError, TypeError):
            raise CommandFailed(
                f"registry {self.client.registry}: {repository}@{digest} is not an image manifest"
            ) from None
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "blobs" / "sha256").mkdir(parents=True)
        try:
            for descriptor in blobs:
                blob = descriptor["digest"]
                self._pull_blob(repository, blob, _blob_path(partial, blob), scope)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _blob_path(partial, digest).write_bytes(raw)
        media_type = manifest.get("mediaType") or response.headers.get("Content-Type", OCI_MANIFEST)
        index = {
            "schemaVersion": 2,
            "manifests": [{"mediaType": media_type, "digest": digest, "size": len(raw)}],
        }
        (partial / "index.json").write_text(json.dumps(index))
        (partial / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
        return dest

    def _pull_blob(self, repository: str, digest: str, path: Path, scope: str) -> None:
        response = self.client.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=scope, ok=(200,), stream=True
        )
        hasher = hashlib.sha256()
        with path.open("wb") as handle:
            for chunk in response.iter_content(1 << 20):
                hasher.update(chunk)
                handle.write(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            path.unlink(missing_ok=True)
            raise CommandFailed(
                f"registry {self.client.registry}: blob {digest} of {repository} has other bytes"
            )

    def tag_digest(self, repository: str, tag: str) -> str | None:
        """The digest the tag points at now (None when absent): what a puller would get."""
        response = self.client.request(
            "HEAD",
            f"/v2/{repository}/manifests/{tag}",
            scope=f"repository:{repository}:pull",
            ok=(200, 404),
            headers={"Accept": MANIFEST_TYPES},
        )
        return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None


# --- the route ------------------------------------------------------------------------------------


class RegistryRoute(Route):
    """Container images to an OCI registry: every arch of one recipe, release and variant under each
    tag as one multi-arch index (so they are published together, once all are built)."""

    name = "registry"
    destination = "the registry"
    together = True

    def publish(self, items: list[Routed], publishers: Publishers, on_step: Step) -> list[Publication]:
        groups: dict[tuple[str, str, str | None], list[Routed]] = {}
        for item in items:
            m = item.manifest
            groups.setdefault((m.recipe, m.release, m.variant), []).append(item)
        out = []
        for group in groups.values():
            registry = group[0].settings.registry
            if registry is None:
                continue
            manifests = sorted((item.manifest for item in group), key=lambda m: m.arch)
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

    def rename_for_candidate(self, identity: Any, data: dict[str, Any], candidate: Candidate) -> None:
        if data.get("registry") is not None:
            data["registry"]["tags"] = [t + candidate.image_suffix for t in data["registry"]["tags"]]

    def destination_key(self, target: TargetLike) -> str | None:
        registry = getattr(target.publish, "registry", None)
        return registry.repository if registry is not None else None

    def published_at(
        self,
        target: TargetLike,
        publishers: Publishers,
        candidate: Candidate | None = None,
        facts: Facts = NO_FACTS,
    ) -> Found | None:
        """Every tag the target would publish under holds an image for its arch whose Kiln digest (the
        index annotation written at push) is the target's; its image, to build a child on."""
        registry = self.settings_for(target, target.publish, candidate).registry
        if registry is None:
            return None
        tags = registry.tags
        publisher, prefix = publishers.registry()
        repository = f"{prefix}/{registry.repository}".strip("/")
        found = None
        for tag in tags:
            image = publisher.published_images(repository, tag).get(target.arch.value)
            if image is None or image.kiln_digest != target.digest:
                return None
            if found is None:
                reference = f"{publisher.client.registry}/{repository}:{tag}"
                digest = image.manifest_digest
                found = Found(
                    reference,
                    image=ReusableImage(
                        reference,
                        repository,
                        digest,
                        lambda dest, digest=digest: publisher.pull_layout(repository, digest, dest),
                    ),
                )
        return found


REGISTRY = RegistryRoute()
