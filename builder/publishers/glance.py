"""Publish disk images to Glance (openstacksdk): candidate, verify, promote, rotate.

1. A digest already published under the image name (active, same ``kiln_digest``) is a no-op.
2. The image is created as a *private candidate* with a candidate name, and uploaded (plain PUT or
   interoperable ``glance-direct`` import). Kiln hashes the bytes as they stream, so the file is
   read once.
3. Glance's ``os_hash_value`` must equal Kiln's hash (same algorithm); on mismatch the candidate is
   deleted and the publish fails.
4. Promote: the previous image of that name is renamed with a date suffix and hidden
   (``os_hidden``), then the candidate takes the name and the recipe's visibility.
5. Rotate: hidden images of the same target beyond ``keep`` are deleted, oldest first.

A failure before step 4 leaves only a private candidate, never a half-uploaded image under the real
name; the next publish deletes stale candidates of the same target first.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ..arch import Arch
from ..core.route import (
    NO_FACTS,
    Candidate,
    Facts,
    Found,
    Publication,
    Publishers,
    Route,
    Routed,
    Step,
    TargetLike,
)
from ..errors import CommandFailed, EnvironmentProblem
from ..limits import STALE_CANDIDATE_S
from ..manifest import Artifact, BuildManifest
from ..recipe import GlancePublish

CANDIDATE_MARK = "kiln_candidate"
HASH_ALGO = "sha512"  # Glance's default os_hash_algo

# libosinfo short ids by (distro, release or major version)
_OS_VERSIONS = {("debian", "bookworm"): "12", ("debian", "trixie"): "13", ("ubuntu", "noble"): "24.04"}


# Artifacts Ironic boots (an agent's kernel, ramdisk and ISO): no guest whose disk bus, firmware,
# machine type, guest agent or OS Nova would read from these properties.
BOOT_ARTIFACTS = ("kernel", "ramdisk", "iso")


@dataclass(frozen=True)
class GlanceImage:
    id: str
    name: str
    created_at: str
    properties: dict[str, str]


def image_properties(
    manifest: BuildManifest,
    extra: dict[str, str],
    artifact_type: str = "disk-image",
    artifact_name: str = "",
    facts: Facts = NO_FACTS,
) -> dict[str, str]:
    """The properties Nova and operators read, per architecture and artifact type (pure; tested
    without Glance). A kernel, ramdisk or ISO (:data:`BOOT_ARTIFACTS`) gets ``architecture`` and
    Kiln's own, plus ``kiln_artifact`` (which of the build's artifacts it is), ``kiln_ipa_version``
    (the kind's fact, when the build names one) and ``kiln_debug_login=true`` when the build enabled
    a debug login. A guest image's OS and firmware properties come from its kind's ``facts``."""
    boot = artifact_type in BOOT_ARTIFACTS
    props: dict[str, str] = {
        "architecture": manifest.arch_enum.glance,  # Nova maps it to hw_architecture for scheduling
        "kiln_recipe": manifest.recipe,
        "kiln_target": manifest.target,
        "kiln_digest": manifest.digest,
    }
    if boot:
        props.update(_boot_properties(facts, artifact_name))
        # Every boot image names the whole set its build publishes: a publish killed between the
        # kernel and the ramdisk is told apart from a complete one (GlanceRoute.boot_images_at).
        props["kiln_boot_set"] = ",".join(a.name for a in manifest.artifacts if a.type in BOOT_ARTIFACTS)
    else:
        props.update(_guest_properties(manifest, facts))
    if manifest.build_id is not None:
        props["kiln_build"] = str(manifest.build_id)
    if manifest.source_commit:
        props["kiln_source_commit"] = manifest.source_commit
    provenance = _main_provenance(manifest)
    if provenance is not None:  # the in-toto statement beside the artifact (builder/provenance.py)
        props["kiln_provenance"] = f"sha256:{provenance['sha256']}"
    # Recipes may override Nova's properties, never Kiln's own: publish decides no-ops and
    # rotation by kiln_target and kiln_digest.
    props.update({k: v for k, v in extra.items() if not k.startswith("kiln_")})
    return props


def _guest_properties(manifest: BuildManifest, facts: Facts) -> dict[str, str]:
    arch = manifest.arch_enum
    distro = facts.distro
    release = facts.os_release or manifest.release
    props = {
        "hw_disk_bus": "scsi",
        "hw_scsi_model": "virtio-scsi",
        "hw_qemu_guest_agent": "yes",
        "os_require_quiesce": "yes",
    }
    if distro:
        props["os_distro"] = distro
        props["os_version"] = _OS_VERSIONS.get((distro, release), release)
    if arch is Arch.PPC64LE:
        props["hw_machine_type"] = "pseries"  # POWER has no firmware type choice (SLOF)
    else:
        props["hw_firmware_type"] = facts.firmware or ("uefi" if arch is Arch.AARCH64 else "bios")
    return props


def _boot_properties(facts: Facts, artifact_name: str) -> dict[str, str]:
    props = {}
    if artifact_name:  # a build's kernel, ramdisk and ISO share a target: rotation tells them apart
        props["kiln_artifact"] = artifact_name
    if facts.ipa_version:
        props["kiln_ipa_version"] = facts.ipa_version
    if facts.debug_login:
        props["kiln_debug_login"] = "true"
    return props


def _main_provenance(manifest: BuildManifest) -> dict[str, Any] | None:
    listed = manifest.provenance or {}
    disks = [a for a in manifest.artifacts if a.type == "disk-image" and a.name in listed]
    names = [a.name for a in disks] or [a.name for a in manifest.artifacts if a.name in listed]
    return listed[names[0]] if names else None


# Defaults are the recipe model's (stated once, in builder/recipe.py): what a recipe gets by omission.
_GLANCE_DEFAULTS = GlancePublish()


class HashingReader:
    """A file wrapper that hashes what it hands out, so upload and checksum share one read."""

    def __init__(self, handle: BinaryIO, on_progress: Callable[[int], None] | None = None):
        self._handle = handle
        self.hash = hashlib.new(HASH_ALGO)
        self.bytes_read = 0
        self._on_progress = on_progress

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        chunk = self._handle.read(size if size > 0 else 4 << 20)
        if chunk:
            self.hash.update(chunk)
            self.bytes_read += len(chunk)
            if self._on_progress is not None:
                self._on_progress(self.bytes_read)
        return chunk

    def __iter__(self):  # requests streams iterables chunk by chunk
        while chunk := self.read(4 << 20):
            yield chunk

    def __len__(self) -> int:
        return int(Path(self._handle.name).stat().st_size) if hasattr(self._handle, "name") else 0


UPLOAD_CHUNK = 1 << 20


class _UploadBody:
    """What the upload PUT sends: ``reader`` as an iterable of ``UPLOAD_CHUNK`` pieces, with a length.

    requests still sends a Content-Length (from ``len``), so the request is byte for byte the one a
    file object makes. But urllib3 reads a file object 16 KiB at a time, which costs 65,536 reads,
    hash updates and sends per GiB; an iterable it sends as it comes. That is about 10% less CPU
    on the client (most of what is left is the sha512 itself), which shows on a busy host.
    """

    def __init__(self, reader: HashingReader):
        self._reader = reader

    def __iter__(self):
        while chunk := self._reader.read(UPLOAD_CHUNK):
            yield chunk

    def __len__(self) -> int:
        return len(self._reader)


@dataclass(frozen=True)
class GlanceResult:
    image_id: str
    name: str
    noop: bool
    hidden: tuple[str, ...]  # ids of images superseded now
    deleted: tuple[str, ...]  # ids removed by rotation


def _credential_problem(cloud: str, exc: BaseException) -> EnvironmentProblem:
    """What authenticating as ``cloud`` failed with, without Keystone's text: it may quote the
    credential's id (a revoked application credential is "Could not find ... <id>")."""
    from keystoneauth1 import exceptions as ksa  # on first use (start-up time); openstack loaded it

    status = getattr(exc, "http_status", None) or getattr(exc, "status_code", None)
    if isinstance(exc, ksa.http.HttpError) or status:
        return EnvironmentProblem(
            f"Glance: cloud {cloud!r}: Keystone refused the credential (HTTP {status}: wrong, expired or "
            "revoked; check the clouds.yaml that OS_CLIENT_CONFIG_FILE names)"
        )
    if isinstance(exc, ksa.connection.ConnectFailure | ksa.connection.ConnectTimeout):
        return EnvironmentProblem(
            f"Glance: cloud {cloud!r}: Keystone is not answering ({type(exc).__name__})"
        )
    return EnvironmentProblem(f"Glance: cloud {cloud!r}: could not authenticate ({type(exc).__name__})")


class GlancePublisher:
    def __init__(
        self, connection: Any, method: str = "upload", wait_timeout_s: int = 600, cloud: str | None = None
    ):
        self.conn = connection
        self.method = method
        self.wait_timeout_s = wait_timeout_s
        self.cloud = cloud  # the clouds.yaml cloud it authenticates as, for messages

    @classmethod
    def connect(
        cls,
        *,
        cloud: str | None,
        endpoint: str | None,
        method: str = "upload",
        clouds_file: Path | None = None,
    ) -> GlancePublisher:
        """Through ``cloud`` (clouds.yaml: ``clouds_file``, else where openstacksdk looks), else the
        unauthenticated ``endpoint`` (a Glance without Keystone)."""
        import openstack  # on first use, not at start-up: a heavy import
        from openstack.config.loader import OpenStackConfig  # on first use, as openstack above

        warnings.filterwarnings("ignore", module="openstack")
        if not cloud:
            conn = openstack.connection.Connection(auth_type="none", image_endpoint_override=endpoint)
            return cls(conn, method=method)
        try:
            files = [str(clouds_file)] if clouds_file is not None else None
            region = OpenStackConfig(config_files=files).get_one(cloud=cloud)
        except openstack.exceptions.ConfigException as exc:  # names the cloud and the files searched
            raise EnvironmentProblem(f"Glance: cloud {cloud!r}: {exc}") from exc
        conn = openstack.connection.Connection(config=region)
        try:
            conn.session.get_token()  # checked now; keystoneauth's error (Connection.authorize hides it)
        except Exception as exc:
            raise _credential_problem(cloud, exc) from exc
        return cls(conn, method=method, cloud=cloud)

    def _images(self, **query: Any) -> list[Any]:
        try:
            return [*self.conn.image.images(**query), *self.conn.image.images(is_hidden=True, **query)]
        except Exception as exc:  # keystoneauth/requests errors: one clear message
            if self.cloud and getattr(exc, "status_code", None) == 401:  # a token revoked since connect
                raise _credential_problem(self.cloud, exc) from exc
            raise EnvironmentProblem(f"Glance is not answering: {exc}") from exc

    def published_images(self, target_id: str, digest: str, name: str | None = None) -> list[GlanceImage]:
        """Each active, promoted image of ``target_id`` at ``digest`` (``kiln_target``,
        ``kiln_digest``); only those named ``name`` when given (Glance filters). A candidate upload
        (:data:`CANDIDATE_MARK`) is not published yet: left out."""
        out = []
        for image in self._images(**({"name": name} if name is not None else {})):
            properties = dict(image.properties or {})
            if (
                properties.get("kiln_target") == target_id
                and properties.get("kiln_digest") == digest
                and image.status == "active"
                and not _is_candidate(image)
            ):
                out.append(GlanceImage(image.id, image.name, image.created_at or "", properties))
        return out

    def publish(
        self,
        manifest: BuildManifest,
        artifact: Artifact,
        *,
        name: str,
        visibility: str = _GLANCE_DEFAULTS.visibility,
        keep: int = _GLANCE_DEFAULTS.keep,
        properties: dict[str, str] | None = None,
        on_progress: Callable[[int], None] | None = None,
        facts: Facts = NO_FACTS,
    ) -> GlanceResult:
        mine = [i for i in self._images() if (i.properties or {}).get("kiln_target") == manifest.target]
        for image in mine:
            if (
                image.name == name
                and (image.properties or {}).get("kiln_digest") == manifest.digest
                and image.status == "active"
                and not _is_candidate(image)
            ):
                return GlanceResult(image.id, name, True, (), ())
        for stale in (i for i in mine if _is_candidate(i) and _stale(i)):
            self.conn.image.delete_image(stale.id, ignore_missing=True)

        path = manifest.path_of(artifact)
        props = image_properties(manifest, properties or {}, artifact.type, artifact.name, facts)
        candidate = self._create_candidate(name, artifact, props)
        try:
            local_hash = self._upload(candidate, path, on_progress)
            uploaded = self.conn.image.get_image(candidate.id)
            if uploaded.hash_algo != HASH_ALGO or uploaded.hash_value != local_hash:
                raise CommandFailed(
                    f"Glance stored {uploaded.hash_algo}:{uploaded.hash_value} for {path.name}, "
                    f"Kiln read {HASH_ALGO}:{local_hash}: the upload was corrupted; candidate deleted"
                )
        except BaseException:
            self._delete_quietly(candidate.id)
            raise
        hidden = self._promote(candidate.id, name, visibility, mine)
        published = self._one_of_racers(manifest.target, manifest.digest, name, props.get("kiln_artifact"))
        published = published or candidate.id
        deleted = self._rotate(manifest.target, keep, props.get("kiln_artifact"))
        return GlanceResult(published, name, published != candidate.id, hidden, deleted)

    def _one_of_racers(self, target: str, digest: str, name: str, artifact: str | None) -> str:
        """The one image published under ``name`` at ``digest`` once this publish is promoted. Two
        jobs racing on one target (two pipelines, no resource_group between them) may each promote
        one: each keeps the first created (the same for both) and deletes the others."""
        same = [
            i
            for i in self._images(name=name)
            if (i.properties or {}).get("kiln_target") == target
            and (i.properties or {}).get("kiln_digest") == digest
            and (i.properties or {}).get("kiln_artifact") == artifact
            and i.status == "active"
            and not i.is_hidden
            and not _is_candidate(i)
        ]
        same.sort(key=lambda i: (i.created_at or "", i.id))
        for duplicate in same[1:]:
            self.conn.image.delete_image(duplicate.id, ignore_missing=True)
        return same[0].id if same else ""

    def _create_candidate(self, name: str, artifact: Artifact, props: dict[str, str]) -> Any:
        from openstack.image.v2.image import Image  # on first use, not at start-up: a heavy import

        attrs = {
            "name": f"{name} (kiln candidate)",
            "disk_format": artifact.format or "raw",
            # Kernels and ramdisks for Ironic are aki/ari in both formats; everything else is bare.
            "container_format": artifact.format if artifact.format in ("aki", "ari") else "bare",
            "visibility": "private",
            **props,
            CANDIDATE_MARK: "true",
        }
        try:
            return Image.new(**attrs).create(self.conn.image)
        except Exception as exc:
            raise EnvironmentProblem(f"Glance refused to create the image record: {exc}") from exc

    def _upload(self, candidate: Any, path: Path, on_progress: Callable[[int], None] | None) -> str:
        size = path.stat().st_size
        with path.open("rb") as handle:
            reader = HashingReader(handle, on_progress)
            if self.method == "glance-direct":
                self.conn.image.stage_image(candidate, data=_UploadBody(reader), size=size)
                response = self.conn.image.import_image(candidate, method="glance-direct")
                if response is not None and getattr(response, "status_code", 202) >= 400:
                    raise CommandFailed(f"Glance refused the import: HTTP {response.status_code}")
                self._wait_active(candidate.id)
            else:
                response = candidate.upload(self.conn.image, data=_UploadBody(reader), size=size)
                if response.status_code >= 400:
                    raise CommandFailed(f"Glance refused the upload: HTTP {response.status_code}")
        if reader.bytes_read != size:
            raise CommandFailed(f"{path}: read {reader.bytes_read} of {size} bytes (file changed?)")
        return reader.hash.hexdigest()

    def _wait_active(self, image_id: str) -> None:
        # create_image(wait=True) can return before active: poll the status ourselves.
        deadline = time.monotonic() + self.wait_timeout_s
        while time.monotonic() < deadline:
            image = self.conn.image.get_image(image_id)
            if image.status == "active":
                return
            if image.status in ("killed", "deleted", "deactivated"):
                raise CommandFailed(f"Glance import ended in status {image.status}")
            time.sleep(0.5)
        raise CommandFailed(f"Glance import did not finish within {self.wait_timeout_s}s")

    def _promote(self, image_id: str, name: str, visibility: str, previous: list[Any]) -> tuple[str, ...]:
        stamp = time.strftime("%Y-%m-%d %H%M%S", time.gmtime())
        hidden = []
        for image in previous:
            if image.name == name and not _is_candidate(image):
                self.conn.image.update_image(image.id, name=f"{name} {stamp}", is_hidden=True)
                hidden.append(image.id)
        self.conn.image.update_image(image_id, name=name, visibility=visibility, **{CANDIDATE_MARK: "false"})
        return tuple(hidden)

    def _rotate(self, target: str, keep: int, artifact: str | None = None) -> tuple[str, ...]:
        """Delete hidden images of ``target`` beyond ``keep``; of one ``artifact`` (``kiln_artifact``:
        an IPA build's kernel, ramdisk and ISO are rotated each on its own), or without one."""
        superseded = [
            i
            for i in self._images()
            if (i.properties or {}).get("kiln_target") == target
            and (i.properties or {}).get("kiln_artifact") == artifact
            and i.is_hidden
        ]
        superseded.sort(key=lambda i: i.created_at or "", reverse=True)
        doomed = superseded[keep:]
        for image in doomed:
            self.conn.image.delete_image(image.id, ignore_missing=True)
        return tuple(i.id for i in doomed)

    def _delete_quietly(self, image_id: str) -> None:
        # Glance may be the thing that failed; then the candidate stays private and the next
        # publish of this target deletes it.
        with contextlib.suppress(Exception):
            self.conn.image.delete_image(image_id, ignore_missing=True)


def _is_candidate(image: Any) -> bool:
    return (image.properties or {}).get(CANDIDATE_MARK) == "true"


# --- the route ------------------------------------------------------------------------------------


def default_image_name(identity: Any) -> str:
    """An image's name by omission: ``recipe release [variant] arch`` (of a manifest or a target)."""
    arch = identity.arch.value if isinstance(identity.arch, Arch) else str(identity.arch)
    return " ".join(
        [identity.recipe, identity.release, *([identity.variant] if identity.variant else []), arch]
    )


def image_name(identity: Any) -> str:
    """The Glance name a target publishes under: ``publish.glance.image_name``, else
    :func:`default_image_name`."""
    glance = getattr(identity.publish, "glance", None)
    return (
        str(glance.image_name) if glance is not None and glance.image_name else default_image_name(identity)
    )


class GlanceRoute(Route):
    """Guest images (and an agent's kernel, ramdisk and ISO) to Glance: uploaded as a hidden
    candidate, checked, promoted, older ones rotated (GlancePublisher)."""

    name = "glance"
    destination = "Glance"

    def publish(self, items: list[Routed], publishers: Publishers, on_step: Step) -> list[Publication]:
        out = []
        for item in items:
            manifest, glance = item.manifest, item.settings.glance
            if glance is None:
                continue
            name = glance.image_name or default_image_name(manifest)
            kernel_id = None
            # Kernels first: Ironic's convention links a ramdisk image to its kernel (``kernel_id``).
            for artifact in sorted(manifest.artifacts, key=lambda a: a.type != "kernel"):
                if artifact.type not in ("disk-image", *BOOT_ARTIFACTS):
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
                    facts=item.facts,
                )
                if artifact.type == "kernel":
                    kernel_id = result.image_id
                out.append(
                    Publication(manifest.target, artifact.name, "glance", result.image_id, result.noop)
                )
        return out

    def rename_for_candidate(self, identity: Any, data: dict[str, Any], candidate: Candidate) -> None:
        if data.get("glance") is not None:
            name = data["glance"].get("image_name") or default_image_name(identity)
            data["glance"]["image_name"] = name + candidate.image_suffix

    def destination_key(self, target: TargetLike) -> str | None:
        return image_name(target) if getattr(target.publish, "glance", None) is not None else None

    def published_at(
        self,
        target: TargetLike,
        publishers: Publishers,
        candidate: Candidate | None = None,
        facts: Facts = NO_FACTS,
    ) -> Found | None:
        """An active, promoted (not a candidate upload) image under the target's name whose
        ``kiln_target`` and ``kiln_digest`` are the target's, as :meth:`GlancePublisher.publish`
        leaves it; the newest, with its ``created_at``."""
        settings = self.settings_for(target, target.publish, candidate)
        if settings.glance is None:
            return None
        name = settings.glance.image_name or default_image_name(target)
        images = publishers.glance().published_images(target.id, target.digest, name=name)
        if not images:
            return None
        newest = max(images, key=lambda image: image.created_at)
        return Found(f"glance image {newest.id} ({name})", _timestamp(newest.created_at))

    def boot_images_at(
        self, target: TargetLike, settings: Any, publishers: Publishers, first: str = "kernel"
    ) -> Found | None:
        """A boot build's images (``<name> kernel``, ``<name> initramfs``...): found when every
        artifact of the set they name (``kiln_boot_set``) is there at the target's digest. Asked by
        name, one image at a time (Glance filters; nothing else is listed), starting with ``first``,
        the artifact :meth:`publish` uploads first."""
        name = settings.glance.image_name or default_image_name(target)
        glance = publishers.glance()

        def newest(artifact: str) -> Any:
            images = glance.published_images(target.id, target.digest, name=f"{name} {artifact}")
            return max(images, key=lambda image: image.created_at) if images else None

        found = newest(first)
        if found is None:
            return None
        wanted = [a for a in found.properties.get("kiln_boot_set", "").split(",") if a and a != first]
        times = [found.created_at]
        for artifact in wanted:
            image = newest(artifact)
            if image is None:
                return None
            times.append(image.created_at)
        return Found(f"glance images {', '.join(sorted([first, *wanted]))} ({name})", _timestamp(max(times)))


def _stale(candidate: Any) -> bool:
    """A candidate no publish will finish: Glance gave up on it, or it is older than
    :data:`STALE_CANDIDATE_S` (a younger one may be another job's upload in flight)."""
    if candidate.status in ("killed", "deleted", "pending_delete"):
        return True
    when = _timestamp(candidate.created_at or "")
    return when is None or time.time() - when > STALE_CANDIDATE_S


def _timestamp(iso: str) -> float | None:
    try:
        when = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


GLANCE = GlanceRoute()
