"""The one architecture table: every spelling of an architecture that Kiln's tools use.

Recipes may name an architecture in any ecosystem's spelling (``amd64``, ``ppc64el``, ``arm64``);
everything inside Kiln works with the canonical :class:`Arch` and asks it for the spelling a tool
wants. Adding an architecture means adding one row to ``_TABLE``, nothing else.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class ArchSpellings:
    rpm: str  # rpm --target, repo directory names
    debian: str  # dpkg, debootstrap, DIB's -a
    oci: str  # OCI/Docker platform "linux/<oci>"
    qemu_system: str  # qemu-system-* binary
    qemu_machine: str  # -M for full-system emulation
    qemu_user: str  # qemu-<x>-static binary for binfmt
    glance: str  # Glance/Nova "architecture" property
    runner_tag: str  # GitLab runner tag
    uname: tuple[str, ...]  # what `uname -m` may print on a native host
    multiarch: str  # Debian's multiarch triplet: /usr/lib/<multiarch>
    nvidia: str  # the directory of NVIDIA's CUDA apt repositories (.../repos/<distro>/<nvidia>/)
    aliases: tuple[str, ...]  # extra spellings accepted in recipes


class Arch(StrEnum):
    X86_64 = "x86_64"
    PPC64LE = "ppc64le"
    AARCH64 = "aarch64"

    @property
    def spellings(self) -> ArchSpellings:
        return _TABLE[self]

    @property
    def rpm(self) -> str:
        return self.spellings.rpm

    @property
    def debian(self) -> str:
        return self.spellings.debian

    @property
    def dib(self) -> str:
        # DIB takes Debian's spellings for every distro (it maps them itself for rpm distros).
        return self.spellings.debian

    @property
    def oci(self) -> str:
        return self.spellings.oci

    @property
    def oci_platform(self) -> str:
        return f"linux/{self.spellings.oci}"

    @property
    def qemu_system(self) -> str:
        return self.spellings.qemu_system

    @property
    def qemu_machine(self) -> str:
        return self.spellings.qemu_machine

    @property
    def qemu_user(self) -> str:
        return self.spellings.qemu_user

    @property
    def glance(self) -> str:
        return self.spellings.glance

    @property
    def multiarch(self) -> str:
        return self.spellings.multiarch

    @property
    def runner_tag(self) -> str:
        return self.spellings.runner_tag

    @classmethod
    def parse(cls, spelling: str) -> Arch:
        """Return the architecture for any known spelling; raise ValueError naming the choices."""
        key = spelling.strip().lower()
        found = _BY_SPELLING.get(key)
        if found is None:
            canonical = ", ".join(a.value for a in cls)
            raise ValueError(
                f"unknown architecture {spelling!r}; known: {canonical} (or their rpm/Debian/OCI spellings)"
            )
        return found

    @classmethod
    def host(cls) -> Arch:
        return cls.parse(platform.machine())


_TABLE: dict[Arch, ArchSpellings] = {
    Arch.X86_64: ArchSpellings(
        rpm="x86_64",
        debian="amd64",
        oci="amd64",
        qemu_system="qemu-system-x86_64",
        qemu_machine="q35",
        qemu_user="qemu-x86_64-static",
        glance="x86_64",
        runner_tag="x86_64",
        uname=("x86_64",),
        multiarch="x86_64-linux-gnu",
        nvidia="x86_64",
        aliases=("amd64", "x64", "x86-64"),
    ),
    Arch.PPC64LE: ArchSpellings(
        rpm="ppc64le",
        debian="ppc64el",
        oci="ppc64le",
        qemu_system="qemu-system-ppc64",
        qemu_machine="pseries",
        qemu_user="qemu-ppc64le-static",
        glance="ppc64le",
        runner_tag="ppc64le",
        uname=("ppc64le",),
        multiarch="powerpc64le-linux-gnu",
        nvidia="ppc64el",
        aliases=("ppc64el", "powerpc64le", "power"),
    ),
    Arch.AARCH64: ArchSpellings(
        rpm="aarch64",
        debian="arm64",
        oci="arm64",
        qemu_system="qemu-system-aarch64",
        qemu_machine="virt",
        qemu_user="qemu-aarch64-static",
        glance="aarch64",
        runner_tag="aarch64",
        uname=("aarch64", "arm64"),
        multiarch="aarch64-linux-gnu",
        nvidia="sbsa",
        aliases=("arm64", "armv8"),
    ),
}


def _index() -> dict[str, Arch]:
    index: dict[str, Arch] = {}
    for arch, sp in _TABLE.items():
        for spelling in (arch.value, sp.rpm, sp.debian, sp.oci, f"linux/{sp.oci}", *sp.uname, *sp.aliases):
            index[spelling.lower()] = arch
    return index


_BY_SPELLING = _index()


def known_spellings() -> list[str]:
    return sorted(_BY_SPELLING)
