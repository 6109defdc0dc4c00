"""Build manifests: what a build produced, as JSON, and what `kiln publish` reads.

```json
{"target": "debian-12:bookworm:ppc64le", "recipe": "debian-12", "kind": "guest-image",
 "arch": "ppc64le", "release": "bookworm", "variant": null, "digest": "<input digest>",
 "build_id": 12, "source_commit": "abc123",
 "publish": {...the recipe's publish settings...},
 "build": {"distro": "debian", ...resolved build settings...},
 "artifacts": [{"name": "image", "type": "disk-image", "path": "image/x.qcow2",
                "format": "qcow2", "sha256": "...", "size": 123}]}
```
Artifact paths are relative to the manifest's directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from .arch import Arch
from .errors import InvalidInput, Problem
from .outdir import write_file
from .yamlsource import read_limited

ArtifactType = Literal["disk-image", "kernel", "ramdisk", "iso", "rpm", "srpm", "oci-layout"]
CHUNK = 4 << 20


class Verification(StrEnum):
    """The gate's verdict on a build, as its manifest and the ledger record it."""

    PASSED = "passed"
    FAILED = "failed"
    OFF = "off"  # switched off on purpose (kiln build --no-verify; a recipe that checks nothing)
    PENDING = "pending"  # never verified

    @property
    def publishable(self) -> bool:
        """What the publish gate lets through: a pass, or checks switched off on purpose."""
        return self in (Verification.PASSED, Verification.OFF)

    @property
    def counts_as_pass(self) -> bool:
        """Only checks that ran and passed: "off" is publishable, never a pass."""
        return self is Verification.PASSED


VERIFICATION_STATUSES = tuple(v.value for v in Verification)


@dataclass(frozen=True)
class Artifact:
    name: str
    type: ArtifactType
    path: str  # relative to the manifest's directory
    sha256: str
    size: int
    format: str | None = None  # qcow2, raw, ...


@dataclass(frozen=True)
class BuildManifest:
    target: str
    recipe: str
    kind: str
    arch: str
    release: str
    variant: str | None
    digest: str
    artifacts: tuple[Artifact, ...]
    publish: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    build_id: int | None = None
    source_commit: str | None = None
    # The gate: {"status": passed | failed | off | pending, "by": what decided, "cases": n}. Only
    # "passed" and "off" (switched off on purpose, e.g. --no-verify) are publishable.
    verification: dict[str, Any] | None = None
    # Attestations (builder/provenance.py, builder/sbom.py), paths relative to the manifest's directory:
    # {artifact name: {"statement": path, "sha256": ..., "signature": path or None}}, and the SBOM.
    provenance: dict[str, Any] | None = None
    sbom: str | None = None
    # How the backend built (builder/backends/base.py FACTS): e.g. DIB's base tree and phase times.
    build_facts: dict[str, Any] | None = None
    base_dir: Path = field(default=Path("."), compare=False)

    @property
    def verification_status(self) -> Verification:
        return Verification(str((self.verification or {}).get("status") or "pending"))

    @property
    def verification_ok(self) -> bool:
        return self.verification_status.publishable

    @property
    def verification_summary(self) -> str:
        """``passed (3 cases)``, ``off (kiln build --no-verify)``, ``pending (never verified)``."""
        v = self.verification or {}
        status = self.verification_status
        if status.counts_as_pass:
            return f"passed ({v.get('cases', 0)} cases)"
        detail = v.get("by") or ("never verified" if status is Verification.PENDING else "")
        return f"{status.value} ({detail})" if detail else status.value

    @property
    def arch_enum(self) -> Arch:
        return Arch.parse(self.arch)

    def path_of(self, artifact: Artifact) -> Path:
        return self.base_dir / artifact.path

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("base_dir")
        data["artifacts"] = [asdict(a) for a in self.artifacts]
        return data

    def write(self, path: Path) -> None:

        write_file(path, (json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_for(
    base_dir: Path, path: Path, name: str, type_: ArtifactType, fmt: str | None = None
) -> Artifact:
    """An artifact record for a file, or for an OCI layout directory (digest of its index.json)."""
    measured = path / "index.json" if path.is_dir() else path
    return Artifact(
        name=name,
        type=type_,
        path=path.relative_to(base_dir).as_posix(),
        sha256=sha256_file(measured),
        size=measured.stat().st_size,
        format=fmt,
    )


def read_manifest(path: Path) -> BuildManifest:

    if not path.exists():
        raise InvalidInput(Problem(f"{path}: no such manifest"))
    try:
        data = json.loads(read_limited(path, str(path)))
        if not isinstance(data, dict):
            raise ValueError("the top level is not an object")
        artifacts = tuple(Artifact(**a) for a in data.pop("artifacts"))
        verification = data.get("verification")
        if verification is not None and (
            not isinstance(verification, dict) or verification.get("status") not in VERIFICATION_STATUSES
        ):
            raise ValueError(
                f"verification must be an object with a status ({', '.join(VERIFICATION_STATUSES)})"
            )
        return BuildManifest(**data, artifacts=artifacts, base_dir=path.parent.resolve())
    except FileNotFoundError:
        raise InvalidInput(Problem(f"{path}: no such manifest")) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(Problem(f"{path}: not a Kiln build manifest ({exc})")) from None
    except OSError as exc:
        raise InvalidInput(Problem(f"{path}: cannot read: {exc.strerror or exc}")) from None
