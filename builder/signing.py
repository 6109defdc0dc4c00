"""The site's GPG signing key (RPMs and repomd.xml), generated once, without a passphrase.

The key lives in the site's own GNUPGHOME, never in the user's keyring. A production site points
``repo.signing_key`` at its own key instead.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .host.run import Runner, processes_matching, stop_processes

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
    hold_keyring(gnupghome)
    with (gnupghome / ".kiln-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_key_locked(gnupghome, public_key, uid)


def _ensure_key_locked(gnupghome: Path, public_key: Path, uid: str) -> SigningKey:
    listing = _gpg(gnupghome, "--with-colons", "--list-secret-keys")
    fingerprint = first_fingerprint(listing)
    if fingerprint is None:
        _gpg(gnupghome, "--passphrase", "", "--quick-gen-key", uid, "rsa3072", "sign", "never")
        fingerprint = first_fingerprint(_gpg(gnupghome, "--with-colons", "--list-secret-keys"))
        if fingerprint is None:
            raise RuntimeError(f"gpg created no key in {gnupghome}")
    public_key.parent.mkdir(parents=True, exist_ok=True)
    armoured = _gpg(gnupghome, "--armor", "--export", fingerprint)
    if not public_key.exists() or public_key.read_text() != armoured + "\n":
        tmp = public_key.with_name(f".{public_key.name}.{os.getpid()}.tmp")
        tmp.write_text(armoured + "\n")
        tmp.replace(public_key)
    return SigningKey(gnupghome, fingerprint, public_key)


def first_fingerprint(colons: str) -> str | None:
    match = re.search(r"^fpr:(?:[^:]*:){8}([0-9A-F]{40}):", colons, re.MULTILINE)
    return match.group(1) if match else None


# --- gpg's daemons -------------------------------------------------------------------------------------

GPG_DAEMONS = ("gpg-agent", "scdaemon", "dirmngr", "keyboxd")


def daemon_homedir(argv: Sequence[str]) -> str | None:
    """The keyring a gpg daemon serves, from its command line (None: not one of gpg's daemons).

    gpg starts its daemons with ``--homedir`` (also when it was given GNUPGHOME, as rpmsign and
    gpgme do), and they detach from the process group that started them."""
    if not argv or Path(argv[0]).name not in GPG_DAEMONS:
        return None
    for arg, value in itertools.pairwise(argv):
        if arg == "--homedir":
            return value.rstrip("/")
    for arg in argv:
        if arg.startswith("--homedir="):
            return arg.removeprefix("--homedir=").rstrip("/")
    return None


def daemon_pids(gnupghome: Path) -> list[int]:
    """gpg's daemons serving ``gnupghome`` (however the path was spelled when they started)."""
    homes = {str(gnupghome), str(gnupghome.absolute()), str(gnupghome.resolve())}
    return sorted(processes_matching(lambda argv: daemon_homedir(argv) in homes))


def stop_daemons(gnupghome: Path, runner: Runner | None = None, grace_s: float = 5.0) -> list[int]:
    """Stop the gpg daemons of ``gnupghome`` (the site's, or a throwaway keyring's); their pids.

    ``gpgconf --kill all`` alone is not enough: it looks for the agent's socket where it would be
    *now* -- ``/run/user/UID/gnupg/d.HASH`` when that directory exists, else the homedir -- so an
    agent started while that differed (a login session created ``/run/user/0`` later, tmpfiles
    removed it, the homedir was moved) is never reached, and gpgconf still exits 0. It also
    returns before the daemons have exited. So it asks first (they remove their sockets), then
    whatever still runs with ``--homedir`` naming this keyring is stopped by pid."""
    pids = daemon_pids(gnupghome)
    if not pids:
        return []
    if gnupghome.is_dir():
        (runner or Runner()).capture(["gpgconf", "--homedir", str(gnupghome), "--kill", "all"], query=False)
    stop_processes(pids, grace_s)
    return pids


# --- Kiln's own keyrings: their daemons end with the last command that used them ----------------------

# A keyring Kiln owns (the local site's) gets a gpg-agent as soon as gpg or rpmsign signs with it, and
# the agent detaches: left alone it would outlive the command (a `kiln rpm rebuild --publish` while
# no site is up) and nothing would stop it. Each command that uses such a keyring holds a shared
# lock on it; when it ends, it lets go and tries for the lock alone: the last user gets it and stops
# the daemons, while a command still signing keeps them.
_HELD: dict[Path, IO[str]] = {}
USERS_LOCK = ".kiln-users"


def hold_keyring(gnupghome: Path) -> None:
    """This process uses Kiln's own keyring ``gnupghome`` until :func:`release_keyrings`."""
    home = gnupghome.absolute()
    if home in _HELD or not home.is_dir():
        return
    handle = (home / USERS_LOCK).open("a")
    fcntl.flock(handle, fcntl.LOCK_SH)
    _HELD[home] = handle


def release_keyrings(runner: Runner | None = None) -> list[int]:
    """Let go of every keyring this process holds; the last user of one stops its daemons. The pids
    stopped."""
    stopped: list[int] = []
    for home, handle in list(_HELD.items()):
        del _HELD[home]
        with handle:
            fcntl.flock(handle, fcntl.LOCK_UN)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another command still signs with it: the last one out stops them
            stopped += stop_daemons(home, runner)
    return stopped
