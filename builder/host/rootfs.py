"""Debian root filesystems made with debootstrap, cached by content under ``~/.cache/kiln/<store>/``.

A root is keyed by the sha256 of what goes into it (release, arch, variant, packages): a warm build
finds it and does not bootstrap again; two builds that need the same missing root bootstrap it once
(a lock), the other waits. Used by the RPM build roots (builder/rpm/buildroot.py) and the container
bases (builder/backends/container.py). A foreign arch bootstraps in one pass under qemu-user
(binfmt_misc).
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

if TYPE_CHECKING:
    from .run import Runner

DEBIAN_RELEASE = "bookworm"  # the release this host runs
VARIANT = "minbase"
READY = ".kiln-root-ready"
BOOTSTRAP_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class RootSpec:
    arch: Arch
    release: str = DEBIAN_RELEASE
    packages: tuple[str, ...] = ()
    store: str = "roots"  # the directory under the cache

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
        return cache_dir / self.store / f"{self.release}-{self.arch.debian}-{self.key}"


BOOTSTRAP_KILL_GRACE_S = 30.0


def bootstrap_argv(spec: RootSpec, into: Path, mirror: str) -> tuple[str, ...]:
    return (
        "debootstrap",
        f"--arch={spec.arch.debian}",
        f"--variant={VARIANT}",
        *(["--include=" + ",".join(sorted(spec.packages))] if spec.packages else []),
        spec.release,
        str(into),
        mirror,
    )


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
    argv = bootstrap_argv(spec, partial, mirror)
    runner.run(argv, timeout=BOOTSTRAP_TIMEOUT_S, log_path=log, kill_grace_s=BOOTSTRAP_KILL_GRACE_S)
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):  # debootstrap keeps them: ~110 MB
        deb.unlink()
    (partial / READY).write_text(json.dumps({"spec": spec.key, "packages": list(spec.packages)}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final
