"""``debian-chroot`` build roots: a Debian minbase with rpm and a toolchain, per release and arch.

A root is cached under ``~/.cache/kiln/rpm-roots/<release>-<arch>-<key>`` where the key is the
sha256 of what goes into it (release, arch, variant, packages): a warm rebuild finds it and does not
bootstrap again. A build never changes the cached root: it works in an overlay on it (a copy,
``cp -a``, where overlayfs cannot be mounted), installs
the mapped BuildRequires there and runs rpmbuild in it with ``chroot`` (under qemu-user on a foreign
host, through binfmt_misc). What it guarantees: the binaries link against Debian's glibc; the
pipeline (sources, trust, changes, rpmbuild, %check, signing, repo) is proven, not EL ABI
compatibility.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..arch import Arch
from ..backends.base import Command

if TYPE_CHECKING:
    from ..host.run import Runner

DEBIAN_RELEASE = "bookworm"  # the build root's Debian release (the release this host runs)
VARIANT = "minbase"
ROOT_PACKAGES = ("gcc", "libc6-dev", "make", "patch", "rpm")
READY = ".kiln-root-ready"
BOOTSTRAP_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class RootSpec:
    arch: Arch
    release: str = DEBIAN_RELEASE
    packages: tuple[str, ...] = ROOT_PACKAGES

    @property
    def key(self) -> str:
        content = {
            "release": self.release,
            "arch": self.arch.debian,
            "variant": VARIANT,
            "packages": sorted(self.packages),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def directory(self, cache_dir: Path) -> Path:
        return cache_dir / "rpm-roots" / f"{self.release}-{self.arch.debian}-{self.key}"


def bootstrap_command(spec: RootSpec, into: Path, mirror: str) -> Command:
    argv = (
        "debootstrap",
        f"--arch={spec.arch.debian}",
        f"--variant={VARIANT}",
        "--include=" + ",".join(sorted(spec.packages)),
        spec.release,
        str(into),
        mirror,
    )
    return Command(argv, timeout_s=BOOTSTRAP_TIMEOUT_S, kill_grace_s=30)


def is_ready(spec: RootSpec, cache_dir: Path) -> bool:
    return (spec.directory(cache_dir) / READY).exists()


def ensure_root(spec: RootSpec, cache_dir: Path, mirror: str, runner: Runner, log: Path) -> tuple[Path, bool]:
    """The cached root for ``spec`` (bootstrapped once). Returns (directory, whether it was bootstrapped)."""
    final = spec.directory(cache_dir)
    if (final / READY).exists():
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    with final.with_name(final.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build bootstrapping the same root: wait for it
        if (final / READY).exists():
            return final, False
        return _bootstrap(spec, final, mirror, runner, log), True


def _bootstrap(spec: RootSpec, final: Path, mirror: str, runner: Runner, log: Path) -> Path:
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    command = bootstrap_command(spec, partial, mirror)
    runner.run(command.argv, timeout=command.timeout_s, log_path=log, kill_grace_s=command.kill_grace_s)
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):  # debootstrap keeps them: ~110 MB
        deb.unlink()
    (partial / READY).write_text(json.dumps({"spec": spec.key, "packages": list(spec.packages)}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def overlay_argv(base: Path, work: Path) -> tuple[str, ...]:
    upper, scratch = work.with_name(work.name + ".upper"), work.with_name(work.name + ".work")
    options = f"lowerdir={base},upperdir={upper},workdir={scratch}"
    return ("mount", "-t", "overlay", "overlay", "-o", options, str(work))


def overlay_root(base: Path, work: Path, runner: Runner, log: Path) -> bool:
    """``work`` as an overlay on the cached root (writes go to a directory beside it); False where
    this kernel or container cannot mount one (then :func:`copy_root`)."""
    from ..errors import CommandFailed

    upper, scratch = work.with_name(work.name + ".upper"), work.with_name(work.name + ".work")
    for directory in (work, upper, scratch):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    try:
        runner.run(overlay_argv(base, work), timeout=60, log_path=log)
    except CommandFailed:
        return False
    return True


def copy_root(base: Path, work: Path, runner: Runner, log: Path) -> None:
    """A throw-away copy of a cached root for one build (the cache stays as bootstrapped)."""
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    runner.run(["cp", "-a", "--reflink=auto", str(base), str(work)], timeout=1800, log_path=log)


def chroot_argv(root: Path, argv: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A command inside ``root`` with a clean environment (no host PATH, TMPDIR or locale leaks)."""
    return (
        "chroot",
        str(root),
        "/usr/bin/env",
        "-i",
        "HOME=/root",
        "LC_ALL=C.UTF-8",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        *argv,
    )


def mount_argvs(root: Path) -> list[tuple[str, ...]]:
    """Only /proc is mounted (debootstrap made /dev's nodes): nothing of the host's /dev is bound in."""
    return [("mount", "-t", "proc", "proc", str(root / "proc"))]


def mount_points(root: Path) -> list[Path]:
    """What a build may have mounted, innermost first (/proc, then the overlay itself)."""
    return [root / "proc", root]
