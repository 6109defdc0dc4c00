"""Provenance: an in-toto Statement v1 with a SLSA v1 provenance predicate per artifact.

``statement(...)`` is pure: what was built (subject name + sha256), from what (recipe, input digest,
source commit, rendered files' digests), with what (tool versions), where (host, arch), when, and
the gate's verdict (passed, or off and by what, e.g. ``kiln build --no-verify``).
``write_provenance`` stores it beside the artifact as ``<artifact>.intoto.json`` and, when a site
key is configured, a detached ASCII-armoured GPG signature ``<artifact>.intoto.json.asc``.
``check_artifact`` (``kiln verify ARTIFACT``) checks an artifact's bytes against its statement and
the statement against its signature.

An RPM subject carries a second digest, ``rpmContentSha256`` (in-toto's DigestSet allows an
algorithm of one's own: lowercase hex sha256 of the main header and the payload, i.e. every byte
after the 96-byte lead and the signature header padded to 8 bytes). The repo publisher re-signs its
copy with rpmsign, which rewrites only the signature header: that copy's file sha256 differs, its
content digest does not. ``kiln verify`` accepts it by that digest, says so, and checks the copy's
own RPM signature with the site key when it has one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .host.run import Runner
from .manifest import Artifact, BuildManifest, sha256_file
from .rpm import header as rpmheader
from .rpm.trust import package_signature
from .signing import stop_daemons

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://kiln.invalid/build/v1"  # Kiln's own build type: the recipe-driven build
BUILDER_ID = "https://kiln.invalid/builder"
SUFFIX = ".intoto.json"
SIGNATURE_SUFFIX = ".asc"
RPM_CONTENT_DIGEST = "rpmContentSha256"  # a DigestSet algorithm of Kiln's: see the module's docstring


@dataclass(frozen=True)
class BuildContext:
    """What the ledger and the host know about one build, beyond its manifest."""

    started_at: str | None = None  # RFC 3339, UTC
    finished_at: str | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    host: str = ""
    host_arch: str = ""
    invocation: str = ""  # the command line that built (or verified) it
    rendered: dict[str, str] = field(default_factory=dict)  # rendered file -> sha256
    kiln_version: str = ""


@dataclass(frozen=True)
class Signer:
    """The site key: a GNUPGHOME and the fingerprint to sign with."""

    gnupghome: Path
    fingerprint: str


def measured(path: Path) -> str:
    """An artifact's sha256 as the manifest records it (an OCI layout: its index.json)."""
    return sha256_file(path / "index.json" if path.is_dir() else path)


def _base_tree(manifest: BuildManifest) -> list[dict[str, Any]]:
    """The cached base tree a DIB build started from (builder/backends/dib_base.py), by its key."""
    base = (manifest.build_facts or {}).get("base") or {}
    if not base.get("digest"):
        return []
    return [
        {
            "name": "kiln-base-tree",
            "digest": {"sha256": base["digest"]},
            "annotations": {"state": base.get("state", "")},
        }
    ]


def subject_digests(path: Path) -> dict[str, str]:
    """The digests a subject carries besides the file's sha256: an RPM's content digest."""
    if not rpmheader.is_rpm(path):
        return {}
    try:
        return {RPM_CONTENT_DIGEST: rpmheader.content_sha256(path)}
    except InvalidInput:  # an RPM lead on something rpm could not read: the file's sha256 alone
        return {}


def statement(
    manifest: BuildManifest,
    artifact: Artifact,
    context: BuildContext,
    extra_digests: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    verification = dict(manifest.verification or {"status": "pending"})
    verification.setdefault("by", "")
    digests = {**(extra_digests or {}), "sha256": artifact.sha256}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": Path(artifact.path).name, "digest": digests}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": manifest.recipe,
                    "target": manifest.target,
                    "kind": manifest.kind,
                    "arch": manifest.arch,
                    "release": manifest.release,
                    "variant": manifest.variant,
                    "build": manifest.build,
                },
                "internalParameters": {
                    "inputDigest": manifest.digest,
                    "verification": verification,
                    "invocation": context.invocation,
                },
                "resolvedDependencies": [
                    *(
                        [{"uri": "git+source", "digest": {"gitCommit": manifest.source_commit}}]
                        if manifest.source_commit
                        else []
                    ),
                    *(
                        {"name": f"render/{name}", "digest": {"sha256": digest}}
                        for name, digest in sorted(context.rendered.items())
                    ),
                    *_base_tree(manifest),
                ],
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {"kiln": context.kiln_version, **context.tool_versions},
                },
                "metadata": {
                    "invocationId": str(manifest.build_id) if manifest.build_id is not None else "",
                    "startedOn": context.started_at,
                    "finishedOn": context.finished_at,
                    "host": context.host,
                    "hostArch": context.host_arch,
                },
                "byproducts": [{"name": artifact.name, "mediaType": artifact.type}],
            },
        },
    }


def rendered_digests(render_dir: Path) -> dict[str, str]:
    if not render_dir.is_dir():
        return {}
    return {
        p.relative_to(render_dir).as_posix(): sha256_file(p)
        for p in sorted(render_dir.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def write_provenance(
    manifest: BuildManifest,
    context: BuildContext,
    signer: Signer | None = None,
    runner: Runner | None = None,
) -> BuildManifest:
    """Write each artifact's statement (and signature) beside it; the manifest listing them."""
    listed: dict[str, Any] = {}
    for artifact in manifest.artifacts:
        path = manifest.path_of(artifact)
        target = path.with_name(path.name + SUFFIX)
        document = statement(manifest, artifact, context, subject_digests(path))
        data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        signature = target.with_name(target.name + SIGNATURE_SUFFIX)
        signature.unlink(missing_ok=True)
        if signer is not None:
            sign(target, signature, signer, runner or Runner())
        listed[artifact.name] = {
            "statement": target.relative_to(manifest.base_dir).as_posix(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "signature": signature.relative_to(manifest.base_dir).as_posix() if signature.exists() else None,
        }
    return replace(manifest, provenance=listed)


def sign(path: Path, signature: Path, signer: Signer, runner: Runner) -> None:
    tmp = signature.with_name(f".{signature.name}.tmp")
    tmp.unlink(missing_ok=True)
    runner.run(
        [
            "gpg", "--homedir", str(signer.gnupghome), "--batch", "--no-tty", "--yes",
            "--local-user", signer.fingerprint, "--armor", "--detach-sign", "--output", str(tmp), str(path),
        ],
        timeout=120,
    )  # fmt: skip
    tmp.replace(signature)


# --- kiln verify ----------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "message": self.message}


@dataclass
class VerifyReport:
    artifact: str
    statement: str | None
    checks: list[Check] = field(default_factory=list)
    signed_by: str | None = None
    verification: dict[str, Any] | None = None  # the gate's verdict, as the statement records it
    matched_by: str | None = None  # the subject's digest that matched: "sha256", or RPM_CONTENT_DIGEST

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "statement": self.statement,
            "ok": self.ok,
            "signed_by": self.signed_by,
            "verification": self.verification,
            "matched_by": self.matched_by,
            "checks": [c.as_json() for c in self.checks],
        }


def check_artifact(
    artifact: Path,
    statement_path: Path | None = None,
    *,
    keyring: Path | None = None,
    public_keys: Iterable[Path] = (),
    require_signature: bool = False,
    runner: Runner | None = None,
) -> VerifyReport:
    """Check ``artifact`` against its statement (default ``<artifact>.intoto.json``) and the
    statement against its detached signature (``<statement>.asc``), with the keys of ``keyring``
    (a GNUPGHOME) or ``public_keys`` (armoured exports)."""
    statement_path = statement_path or artifact.with_name(artifact.name + SUFFIX)
    report = VerifyReport(str(artifact), str(statement_path))
    if not artifact.exists():
        report.checks.append(Check("artifact", False, f"{artifact}: no such artifact"))
        return report
    try:
        raw = statement_path.read_bytes()
    except OSError:
        report.checks.append(
            Check("provenance", False, f"{statement_path}: no provenance statement beside the artifact")
        )
        return report
    report.checks.append(_check_statement(raw, artifact, statement_path, report))
    if report.matched_by == RPM_CONTENT_DIGEST:  # a re-signed copy: is its own signature the site's?
        report.checks.append(_check_rpm_signature(artifact, keyring, list(public_keys), runner or Runner()))
    signature = statement_path.with_name(statement_path.name + SIGNATURE_SUFFIX)
    if signature.exists():
        check, report.signed_by = _check_signature(
            statement_path, signature, keyring, list(public_keys), runner or Runner()
        )
        report.checks.append(check)
    elif require_signature:
        report.checks.append(Check("signature", False, f"{signature}: missing (a signature was required)"))
    else:
        report.checks.append(
            Check("signature", True, "not signed (no .asc beside it; --require-signature refuses that)")
        )
    return report


def _check_statement(raw: bytes, artifact: Path, where: Path, report: VerifyReport) -> Check:
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return Check("provenance", False, f"{where}: not a JSON provenance statement ({exc})")
    if data.get("_type") != STATEMENT_TYPE or data.get("predicateType") != PREDICATE_TYPE:
        return Check(
            "provenance",
            False,
            f"{where}: not an in-toto v1 statement with a SLSA v1 provenance predicate "
            f"(_type {data.get('_type')!r}, predicateType {data.get('predicateType')!r})",
        )
    try:
        report.verification = data["predicate"]["buildDefinition"]["internalParameters"]["verification"]
    except (KeyError, TypeError):
        report.verification = None
    subjects = [s for s in data.get("subject") or [] if isinstance(s, dict)]
    subject = next((s for s in subjects if s.get("name") == artifact.name), None)
    if subject is None:
        names = ", ".join(str(s.get("name")) for s in subjects) or "none"
        return Check("provenance", False, f"{where}: does not name {artifact.name} as its subject ({names})")
    digests = subject.get("digest") if isinstance(subject.get("digest"), dict) else {}
    expected = str(digests.get("sha256", ""))
    actual = measured(artifact)
    if actual == expected:
        report.matched_by = "sha256"
        return Check("digest", True, f"sha256 {actual} matches its provenance")
    if artifact.is_file() and rpmheader.is_rpm(artifact):
        return _check_rpm_content(artifact, str(digests.get(RPM_CONTENT_DIGEST, "")), actual, report)
    return Check(
        "digest",
        False,
        f"{artifact}: sha256 {actual} does not match its provenance ({expected}): "
        "the artifact changed after it was built",
    )


def _check_rpm_content(artifact: Path, expected: str, file_sha256: str, report: VerifyReport) -> Check:
    """An RPM whose bytes differ from the built package's: a copy re-signed by the repo publisher
    passes when its main header and payload are the ones built."""
    if not expected:
        return Check(
            "digest",
            False,
            f"{artifact}: sha256 {file_sha256} does not match its provenance, which records no "
            f"{RPM_CONTENT_DIGEST} to check a signed copy by (written by an older Kiln: "
            "verify the built package, or rebuild)",
        )
    try:
        actual = rpmheader.content_sha256(artifact)
    except InvalidInput as exc:
        return Check("digest", False, f"{exc}: the package changed after it was built")
    if actual != expected:
        return Check(
            "digest",
            False,
            f"{artifact}: the package's content (main header and payload) does not match its provenance "
            f"({RPM_CONTENT_DIGEST} {actual}, recorded {expected}): the package changed after it was built",
        )
    report.matched_by = RPM_CONTENT_DIGEST
    return Check(
        "digest",
        True,
        f"signed copy: content matches, signature header differs ({RPM_CONTENT_DIGEST} {actual} "
        f"matches its provenance; the file's sha256 {file_sha256} is not the built package's)",
    )


def _check_rpm_signature(
    artifact: Path, keyring: Path | None, public_keys: list[Path], runner: Runner
) -> Check:
    """The re-signed copy's own RPM signature, with the site key (the repo publisher signs with it)."""

    work = Path(tempfile.mkdtemp(prefix="kiln-verify-rpm-"))
    try:
        keys = _armoured_keys(keyring, public_keys, work, runner)
        if not keys:
            return Check("rpm-signature", True, "not checked (no site key or --key to check it with)")
        verdict, said = package_signature(artifact, keys, runner, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if verdict == "signed":
        return Check("rpm-signature", True, "the package's own signature verifies with the site key")
    if verdict == "unchecked":
        return Check("rpm-signature", True, f"not checked ({said})")
    why = {
        "unknown-key": "is signed by a key that is not the site's",
        "damaged": "does not match its own digests",
    }.get(verdict, "is not signed, though its signature header differs from the built package's")
    return Check("rpm-signature", False, f"{artifact}: the package {why} (rpmkeys: {said})")


def _armoured_keys(keyring: Path | None, public_keys: list[Path], work: Path, runner: Runner) -> list[Path]:
    """The armoured public keys to check with: ``public_keys``, and ``keyring``'s exported into ``work``."""
    keys = list(public_keys)
    if keyring is not None:
        exported = runner.capture(["gpg", "--homedir", str(keyring), "--batch", "--armor", "--export"])
        if exported.ok and exported.stdout.strip():
            (work / "site.asc").write_text(exported.stdout)
            keys.append(work / "site.asc")
    return keys


def _check_signature(
    statement_path: Path, signature: Path, keyring: Path | None, public_keys: list[Path], runner: Runner
) -> tuple[Check, str | None]:

    home = Path(tempfile.mkdtemp(prefix="kiln-verify-"))
    home.chmod(0o700)
    try:
        keys = _armoured_keys(keyring, public_keys, home, runner)
        if not keys:
            return Check(
                "signature", False, f"{signature}: no public key to check it with (give --key)"
            ), None
        for key in keys:
            runner.capture(["gpg", "--homedir", str(home), "--batch", "--import", str(key)])
        result = runner.capture(
            ["gpg", "--homedir", str(home), "--batch", "--status-fd", "1", "--verify", str(signature),
             str(statement_path)]
        )  # fmt: skip
        fingerprint = next(
            (line.split()[2] for line in result.stdout.splitlines() if line.startswith("[GNUPG:] VALIDSIG ")),
            None,
        )
        if result.ok and fingerprint:
            return Check("signature", True, f"good signature by {fingerprint}"), fingerprint
        if "[GNUPG:] BADSIG" in result.stdout:
            why = "BAD signature: the provenance statement changed after it was signed"
        elif "[GNUPG:] NO_PUBKEY" in result.stdout:
            why = "signed by a key that is not the site's"
        elif "[GNUPG:] NODATA" in result.stdout or "no valid OpenPGP data" in result.stderr:
            why = "not a valid OpenPGP signature (damaged)"
        else:
            why = "does not verify: " + (result.stderr.strip().splitlines() or ["gpg failed"])[-1]
        return Check("signature", False, f"{signature}: {why}"), None
    finally:
        stop_daemons(home)
        shutil.rmtree(home, ignore_errors=True)


def find_statement(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SUFFIX)


def copy_beside(artifact: Path, published: Path) -> list[Path]:
    """Copy an artifact's statement (and signature) beside its published copy (a repo's package)."""
    copied = []
    source, dest = find_statement(artifact), find_statement(published)
    pairs = [
        (source, dest),
        (source.with_name(source.name + SIGNATURE_SUFFIX), dest.with_name(dest.name + SIGNATURE_SUFFIX)),
    ]
    for src, to in pairs:
        if src.exists():
            tmp = to.with_name(f".{to.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(to)
            copied.append(to)
    return copied
