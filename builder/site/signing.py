"""The site's GPG signing key (RPMs and repomd.xml), generated once, without a passphrase.

The key lives in the site's own GNUPGHOME, never in the user's keyring. A production site points
``repo.signing_key`` at its own key instead.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..run import Runner

KEY_UID = "Kiln local site <kiln@localhost>"


@dataclass(frozen=True)
class SigningKey:
    gnupghome: Path
    fingerprint: str
    public_key: Path  # ASCII-armoured export, published next to the repos

    @property
    def name(self) -> str:
        return self.fingerprint


def _gpg(gnupghome: Path, *args: str) -> str:
    return (
        Runner().run(["gpg", "--homedir", str(gnupghome), "--batch", "--no-tty", *args], timeout=120).output
    )


def ensure_key(gnupghome: Path, public_key: Path, uid: str = KEY_UID) -> SigningKey:
    """The key in ``gnupghome`` (created on first use) with its public half exported to ``public_key``.

    Serialized by a lock file: concurrent publishers must not each generate a key."""
    gnupghome.mkdir(parents=True, exist_ok=True, mode=0o700)
    gnupghome.chmod(0o700)
    with (gnupghome / ".kiln-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_key_locked(gnupghome, public_key, uid)


def _ensure_key_locked(gnupghome: Path, public_key: Path, uid: str) -> SigningKey:
    listing = _gpg(gnupghome, "--with-colons", "--list-secret-keys")
    fingerprint = _first_fingerprint(listing)
    if fingerprint is None:
        _gpg(gnupghome, "--passphrase", "", "--quick-gen-key", uid, "rsa3072", "sign", "never")
        fingerprint = _first_fingerprint(_gpg(gnupghome, "--with-colons", "--list-secret-keys"))
        if fingerprint is None:
            raise RuntimeError(f"gpg created no key in {gnupghome}")
    public_key.parent.mkdir(parents=True, exist_ok=True)
    armoured = _gpg(gnupghome, "--armor", "--export", fingerprint)
    if not public_key.exists() or public_key.read_text() != armoured + "\n":
        tmp = public_key.with_name(f".{public_key.name}.{os.getpid()}.tmp")
        tmp.write_text(armoured + "\n")
        tmp.replace(public_key)
    return SigningKey(gnupghome, fingerprint, public_key)


def _first_fingerprint(colons: str) -> str | None:
    match = re.search(r"^fpr:(?:[^:]*:){8}([0-9A-F]{40}):", colons, re.MULTILINE)
    return match.group(1) if match else None
