"""Which rebuild recipes build after which: the ``peers`` hook of the ``rpm-rebuild`` kind.

A recipe builds after another when one of its SRPM's BuildRequires names the other's source
package or one of its subpackages (``NAME`` or ``NAME-<anything>``, e.g. ``liba-devel`` from
``liba``; the longest matching name wins). Only SRPMs in the workspace (``source.path``) have
their headers read here; a recipe whose SRPM is fetched at build time is ordered by its package
name only (``source.package``) and orders nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import KilnError
from .source import read_header


def rebuild_order(recipes: Sequence[tuple[str, Any]], root: Path) -> dict[str, tuple[str, ...]]:

    source_names: dict[str, str] = {}  # source package name -> recipe
    requires: dict[str, tuple[str, ...]] = {}
    for name, build in recipes:
        source = build.source
        if source.path is not None:
            try:
                header = read_header(root / str(source.path))
            except (KilnError, OSError):
                continue  # validation or the build reports an unreadable SRPM
            source_names[header.name] = name
            requires[name] = header.build_requires
        elif source.package is not None:
            source_names[str(source.package)] = name
    out: dict[str, tuple[str, ...]] = {}
    for name, wanted in requires.items():
        after = []
        for requirement in wanted:
            matches = [s for s in source_names if requirement == s or requirement.startswith(s + "-")]
            if matches:
                other = source_names[max(matches, key=len)]
                if other != name and other not in after:
                    after.append(other)
        if after:
            out[name] = tuple(after)
    return out
