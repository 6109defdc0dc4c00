"""BuildRequires → what to install in a ``debian-chroot`` root.

Kiln ships :data:`TABLE` (EL/Fedora names → Debian packages; an empty tuple: the root already has
it). A recipe overrides or adds entries with ``build.build_requires_map``. A BuildRequire neither
maps nor finds in the published repo (a package Kiln rebuilt earlier, e.g. another recipe's
``-devel``) is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InvalidInput, Problem

TABLE: dict[str, tuple[str, ...]] = {
    "gcc": ("gcc",),
    "gcc-c++": ("g++",),
    "make": ("make",),
    "glibc-devel": ("libc6-dev",),
    "glibc-headers": ("libc6-dev",),
    "kernel-headers": ("linux-libc-dev",),
    "autoconf": ("autoconf",),
    "automake": ("automake",),
    "libtool": ("libtool",),
    "pkgconfig": ("pkgconf",),
    "pkgconf-pkg-config": ("pkgconf",),
    "pkgconf": ("pkgconf",),
    "cmake": ("cmake",),
    "ninja-build": ("ninja-build",),
    "meson": ("meson",),
    "bison": ("bison",),
    "flex": ("flex",),
    "gettext": ("gettext",),
    "perl": ("perl",),
    "python3": ("python3",),
    "python3-devel": ("python3-dev",),
    "zlib-devel": ("zlib1g-dev",),
    "openssl-devel": ("libssl-dev",),
    "ncurses-devel": ("libncurses-dev",),
    "libffi-devel": ("libffi-dev",),
    "bzip2-devel": ("libbz2-dev",),
    "xz-devel": ("liblzma-dev",),
    "pkgconfig(zlib)": ("zlib1g-dev",),
    "pkgconfig(openssl)": ("libssl-dev",),
    "pkgconfig(libffi)": ("libffi-dev",),
    "pkgconfig(ncurses)": ("libncurses-dev",),
    "pkgconfig(liblzma)": ("liblzma-dev",),
    "patch": ("patch",),
    "tar": (),
    "gzip": (),
    "coreutils": (),
    "sed": (),
    "grep": (),
    "findutils": (),
    "bash": (),
    "rpm-build": (),
}

_VERSIONED = re.compile(r"\s*(>=|<=|=|>|<).*$")


@dataclass(frozen=True)
class Mapped:
    debian: tuple[str, ...]  # Debian packages to apt-get install
    from_repo: tuple[str, ...]  # names found in the published repo (installed from there)


def map_build_requires(
    requires: Iterable[str],
    override: Mapping[str, list[str]] | None = None,
    repo_provides: Iterable[str] = (),
    where: str = "build.source",
) -> Mapped:
    debian: list[str] = []
    from_repo: list[str] = []
    unmapped: list[str] = []
    provided = set(repo_provides)
    for requirement in requires:
        name = _VERSIONED.sub("", requirement).strip()
        if override and name in override:
            debian += override[name]
        elif name in TABLE:
            debian += TABLE[name]
        elif name in provided:
            from_repo.append(name)
        else:
            unmapped.append(name)
    if unmapped:
        raise InvalidInput(
            Problem(
                f"{where}: BuildRequires {', '.join(sorted(unmapped))}: no Debian package known for "
                f"{'it' if len(unmapped) == 1 else 'them'} and not in the published repo "
                "(add it to build.build_requires_map)"
            )
        )
    return Mapped(tuple(dict.fromkeys(debian)), tuple(dict.fromkeys(from_repo)))
