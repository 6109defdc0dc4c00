"""Trust before anything is unpacked: rpm's own signature check, decided by its exit status.

``rpmkeys --checksig`` runs against a private rpm database (``--dbpath`` in a temporary directory)
that holds only the keys the recipe configures (``build.trusted_keys``), so the host's rpm
database, empty on Debian or full of unrelated keys elsewhere, never decides. It runs with
``_pkgverify_level signature``: rpm then exits non-zero unless a signature by one of those keys
verifies (plain ``--checksig`` exits 0 for an unsigned package whose digests are fine).

The verdict comes from exit statuses only, never from rpm's text, which repeats the file's name
(a package named ``foo-signatures OK.src.rpm`` must not be able to vouch for itself); and the
package is checked as a copy under a name Kiln chooses. When the signature check fails, two more
structured questions say why, for the message: do the digests verify (else the file is damaged),
and does the package carry a signature at all (a query format whose only output is Kiln's own
words).
"""

from __future__ import annotations

import shutil
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CommandFailed, InvalidInput, Problem

if TYPE_CHECKING:
    from ..host.run import Runner

CHECKED_NAME = "checked.rpm"  # the copy rpm sees: a name nobody else chose
# Prints "signed" when the header carries any OpenPGP signature rpm knows of, else "unsigned".
_HAS_SIGNATURE = (
    "%|RSAHEADER?{signed}:{%|DSAHEADER?{signed}:{%|SIGPGP?{signed}:{%|SIGGPG?{signed}:{unsigned}|}|}|}|"
)


class Verdict(StrEnum):
    SIGNED = "signed"  # a signature by a trusted key verifies
    UNKNOWN_KEY = "unknown-key"  # signed, but by no key in the private database
    UNSIGNED = "unsigned"  # digests fine, no signature at all
    DAMAGED = "damaged"  # its digests do not verify: changed after it was made, or not an RPM
    UNCHECKED = "unchecked"  # rpmkeys missing, a key it would not import, a time-out

    @property
    def reason(self) -> str:
        return {
            Verdict.SIGNED: "is signed by a trusted key",
            Verdict.UNKNOWN_KEY: "is signed by a key not in build.trusted_keys",
            Verdict.UNSIGNED: "is not signed",
            Verdict.DAMAGED: "does not match its own digests (damaged, altered, or not an RPM)",
            Verdict.UNCHECKED: "could not be checked",
        }[self]


def _rpmkeys(db: Path, package: Path, *, signatures: bool) -> list[str]:
    """``--checksig`` that fails unless a signature verifies, or (``signatures=False``) that checks
    the digests alone."""
    level = ["--define", "_pkgverify_level signature"] if signatures else ["--nosignature"]
    return ["rpmkeys", "--dbpath", str(db), *level, "--checksig", "--", str(package)]


def signature_verdict(package: Path, keys: list[Path], runner: Runner, work: Path) -> tuple[Verdict, str]:
    """(verdict, detail) for ``package`` against a private rpm database holding ``keys``
    (armoured exports). Never raises for the package's sake: callers decide what a verdict means."""
    work.mkdir(parents=True, exist_ok=True)
    db, copy = work / "rpmdb", work / CHECKED_NAME
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir(parents=True)
    try:
        shutil.copyfile(package, copy)
        for key in keys:
            importing = ["rpmkeys", "--dbpath", str(db), "--import", "--", str(key)]
            imported = runner.capture(importing, timeout=60)
            if not imported.ok:
                why = imported.error or imported.output.strip() or f"exit status {imported.returncode}"
                return Verdict.UNCHECKED, f"rpmkeys --import {key.name}: {why}"
        signed = runner.capture(_rpmkeys(db, copy, signatures=True), timeout=120)
        if signed.returncode is None:
            return Verdict.UNCHECKED, f"rpmkeys --checksig: {signed.error}"
        if signed.returncode == 0:
            return Verdict.SIGNED, f"signature verified with {len(keys)} trusted key(s)"
        digests = runner.capture(_rpmkeys(db, copy, signatures=False), timeout=120)
        if digests.returncode != 0:
            return Verdict.DAMAGED, f"rpmkeys --checksig: {digests.error or 'digests do not verify'}"
        query = ["rpm", "-qp", "--dbpath", str(db), "--nosignature", "--nodigest", "--qf", _HAS_SIGNATURE,
                 "--", str(copy)]  # fmt: skip
        has = runner.capture(query, timeout=60)
        if has.ok and has.stdout == "unsigned":
            return Verdict.UNSIGNED, "no signature in the package's header"
        return Verdict.UNKNOWN_KEY, f"no signature verifies with the {len(keys)} trusted key(s)"
    finally:
        shutil.rmtree(db, ignore_errors=True)
        copy.unlink(missing_ok=True)


def check_signature(
    srpm: Path, keys: list[Path], runner: Runner, work: Path, shown: str | None = None
) -> str:
    """``signed`` or an InvalidInput that says why the SRPM is not trusted (before anything of it is
    unpacked). ``shown``: the name to give it in messages."""
    verdict, detail = signature_verdict(srpm, keys, runner, work)
    name = shown or srpm.name
    if verdict is Verdict.SIGNED:
        return verdict.value
    if verdict is Verdict.UNCHECKED:
        raise CommandFailed(f"{name}: the signature {verdict.reason} ({detail}); nothing was unpacked")
    raise InvalidInput(
        Problem(
            f"{name} {verdict.reason} ({detail}); refused before unpacking "
            "(set build.verify_signature: false to rebuild it anyway)"
        )
    )


def package_signature(package: Path, keys: list[Path], runner: Runner, work: Path) -> tuple[str, str]:
    """(verdict, detail) for ``kiln verify``: ``signed``, ``unknown-key``, ``unsigned``, ``damaged``
    or ``unchecked``. Never raises: ``kiln verify`` reports it as one check."""
    verdict, detail = signature_verdict(package, keys, runner, work)
    return verdict.value, detail
