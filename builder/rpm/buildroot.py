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

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CommandFailed
from ..host import rootfs
from ..host.command import Command

if TYPE_CHECKING:
    from ..host.run import Runner

ROOT_PACKAGES = ("gcc", "libc6-dev", "make", "patch", "rpm")


@dataclass(frozen=True)
class RootSpec(rootfs.RootSpec):
    """A build root: Debian minbase with rpm and a toolchain, cached under ``rpm-roots``."""

    packages: tuple[str, ...] = ROOT_PACKAGES
    store: str = "rpm-roots"


def bootstrap_command(spec: rootfs.RootSpec, into: Path, mirror: str) -> Command:
    """What a dry run shows for a root that is not cached yet."""
    return Command(
        rootfs.bootstrap_argv(spec, into, mirror),
        timeout_s=rootfs.BOOTSTRAP_TIMEOUT_S,
        kill_grace_s=rootfs.BOOTSTRAP_KILL_GRACE_S,
    )


ensure_root = rootfs.ensure_root
is_ready = rootfs.is_ready


def overlay_argv(base: Path, work: Path) -> tuple[str, ...]:
    upper, scratch = work.with_name(work.name + ".upper"), work.with_name(work.name + ".work")
    options = f"lowerdir={base},upperdir={upper},workdir={scratch}"
    return ("mount", "-t", "overlay", "overlay", "-o", options, str(work))


def overlay_root(base: Path, work: Path, runner: Runner, log: Path) -> bool:
    """``work`` as an overlay on the cached root (writes go to a directory beside it); False where
    this kernel or container cannot mount one (then :func:`copy_root`)."""

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
