"""Trust before anything is unpacked: ``rpmkeys --checksig`` against a private rpm database.

The database lives in a temporary directory (``--dbpath``) and holds only the keys the recipe
configures (``build.trusted_keys``), so the host's rpm database, empty on Debian, or full of
unrelated keys elsewhere, never decides. The verdict names what was checked, for the manifest and
the ledger: ``signed`` (by a configured key), or ``not checked`` when the recipe says
``verify_signature: false``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CommandFailed, InvalidInput, Problem

if TYPE_CHECKING:
    from ..host.run import Runner


def signature_verdict(output: str, returncode: int | None) -> str:
    """``signed``, ``unknown-key`` or ``unsigned`` from what ``rpmkeys --checksig`` said."""
    text = output.lower()
    if returncode == 0 and "signatures ok" in text:
        return "signed"
    if "signatures not ok" in text or "nokey" in text or ("not ok" in text and "signature" in text):
        return "unknown-key"
    return "unsigned"


def check_signature(srpm: Path, keys: list[Path], runner: Runner, work: Path, log: Path | None = None) -> str:
    """``signed`` or an InvalidInput that says why the SRPM is not trusted."""
    db = work / "rpmdb"
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir(parents=True)
    try:
        for key in keys:
            runner.run(["rpmkeys", "--dbpath", str(db), "--import", str(key)], timeout=60, log_path=log)
        said = runner.capture(["rpmkeys", "--dbpath", str(db), "--checksig", str(srpm)], timeout=120)
    except CommandFailed as exc:
        raise InvalidInput(Problem(f"{srpm.name}: cannot import the trusted keys: {exc}")) from exc
    finally:
        shutil.rmtree(db, ignore_errors=True)
    if said.returncode is None:
        raise CommandFailed(f"rpmkeys --checksig {srpm.name}: {said.error}")
    verdict = signature_verdict(said.stdout + said.stderr, said.returncode)
    if verdict == "signed":
        return verdict
    why = "is not signed" if verdict == "unsigned" else "is signed by a key not in build.trusted_keys"
    raise InvalidInput(
        Problem(
            f"{srpm.name} {why} ({(said.stdout or said.stderr).strip()}); refused before unpacking "
            "(set build.verify_signature: false to rebuild it anyway)"
        )
    )


def package_signature(package: Path, keys: list[Path], runner: Runner, work: Path) -> tuple[str, str]:
    """(verdict, what rpm said) for any package against a private rpm database holding ``keys``
    (armoured exports): ``signed``, ``unknown-key``, ``unsigned``, or ``unchecked`` when rpmkeys
    is missing or refuses a key. Never raises: ``kiln verify`` reports it as one check."""
    db = work / "rpmdb"
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir(parents=True)
    try:
        for key in keys:
            imported = runner.capture(["rpmkeys", "--dbpath", str(db), "--import", str(key)], timeout=60)
            if not imported.ok:
                why = imported.error or imported.output.strip() or f"exit status {imported.returncode}"
                return "unchecked", f"rpmkeys --import {key.name}: {why}"
        said = runner.capture(["rpmkeys", "--dbpath", str(db), "--checksig", str(package)], timeout=120)
    finally:
        shutil.rmtree(db, ignore_errors=True)
    if said.returncode is None:
        return "unchecked", f"rpmkeys --checksig: {said.error}"
    return signature_verdict(said.output, said.returncode), said.output.strip()
