"""Tiny OCI image layouts built in-process for publisher tests (skopeo and docker read them)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from builder.arch import Arch


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    return gzip.compress(tar_bytes, mtime=0), diff_id


def make_layout(
    layout: Path, arch: Arch, layers: list[dict[str, bytes]], labels: dict[str, str] | None = None
) -> Path:
    """An OCI image layout with the given layers (each a {path: bytes} mapping) for ``arch``."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_descriptors, diff_ids = [], []
    for files in layers:
        data, diff_id = _layer(files)
        layer_descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(layout, data)}
        )
        diff_ids.append(diff_id)
    config = {
        "architecture": arch.oci,
        "os": "linux",
        "config": {"Labels": labels or {}, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_blob(layout, json.dumps(config, sort_keys=True).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": layer_descriptors,
    }
    manifest_descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(layout, json.dumps(manifest, sort_keys=True).encode()),
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}))
    return layout
