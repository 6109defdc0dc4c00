"""Attestations of a build: its SBOM (once, from what the build left) and each artifact's provenance
(again after each verification, since the statement carries the gate's verdict), signed with the
site key when one is configured, listed in the manifest and recorded in the ledger."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..endpoints import local_endpoints
from ..host.run import Runner
from ..ledger import Ledger
from ..manifest import BuildManifest
from ..provenance import BuildContext, Signer, rendered_digests, write_provenance
from ..sbom import find_package_list, packages_of_rpms, spdx_document
from ..signing import first_fingerprint, hold_keyring
from ..siteconfig import SiteConfig


def rfc3339(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def invocation() -> str:
    """The command line, as a person would retype it (``kiln build debian-12 --no-verify``)."""
    return shlex.join(["kiln", *sys.argv[1:]])


def site_signer(site: SiteConfig, root: Path, runner: Runner | None = None) -> Signer | None:
    """The site key, when one is configured: site.yaml's ``repo.signing_key``, or the key the local
    site generated (never generated here: a build signs only with a key that exists)."""
    if site.repo.signing_key is not None:
        home = Path(os.path.expanduser(site.repo.signing_key.gnupghome))
        return Signer(home, site.repo.signing_key.fingerprint)

    home = local_endpoints(site, root).gnupghome
    if not (home / "pubring.kbx").exists() and not (home / "private-keys-v1.d").is_dir():
        return None
    hold_keyring(home)  # its gpg-agent is stopped when the last command using it ends
    listing = (runner or Runner()).capture(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-secret-keys"]
    )
    fingerprint = first_fingerprint(listing.stdout) if listing.ok else None
    return Signer(home, fingerprint) if fingerprint else None


def attest(
    manifest: BuildManifest,
    ledger: Ledger | None,
    render_dir: Path,
    signer: Signer | None,
    runner: Runner | None = None,
) -> BuildManifest:
    """The manifest with its SBOM and provenance listed (files written beside the artifacts)."""
    record = ledger.build(manifest.build_id) if ledger is not None and manifest.build_id is not None else None
    base = manifest.base_dir
    entries: list[tuple[str, str, str, str]] = []
    if manifest.sbom is None:
        packages = find_package_list(base / "out")
        rpms = [manifest.path_of(a) for a in manifest.artifacts if a.type in ("rpm", "srpm")]
        if packages is None and rpms:
            packages = packages_of_rpms(rpms)
        if packages is not None:
            main = manifest.artifacts[0] if manifest.artifacts else None
            document = spdx_document(
                manifest.target,
                packages,
                created=rfc3339(record.finished_at if record else time.time()) or "",
                subject_sha256=main.sha256 if main else None,
                build_id=manifest.build_id,
            )
            path = base / "sbom" / f"build-{manifest.build_id or 'local'}.spdx.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
            path.write_bytes(data)
            manifest = replace(manifest, sbom=path.relative_to(base).as_posix())
            entries.append(("", "sbom", str(path), hashlib.sha256(data).hexdigest()))
    context = BuildContext(
        started_at=rfc3339(record.started_at) if record else None,
        finished_at=rfc3339(record.finished_at) if record else None,
        tool_versions=dict(record.tool_versions) if record else {},
        host=platform.node(),
        host_arch=platform.machine(),
        invocation=invocation(),
        rendered=rendered_digests(render_dir),
        kiln_version=__version__,
    )
    manifest = write_provenance(manifest, context, signer, runner)
    for name, listed in (manifest.provenance or {}).items():
        entries.append((name, "provenance", str(base / listed["statement"]), listed["sha256"]))
        if listed.get("signature"):
            entries.append((name, "signature", str(base / listed["signature"]), ""))
    if ledger is not None and manifest.build_id is not None and entries:
        ledger.record_attestations(manifest.build_id, entries)
    return manifest
