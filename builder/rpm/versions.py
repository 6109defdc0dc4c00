"""rpm's version comparison (rpmvercmp), for picking the newest package and for ``kiln rpm missing``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cmp_to_key
from typing import Any

_SEGMENT = re.compile(r"(\d+|[A-Za-z]+|~|\^)")


def vercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as rpm orders two version (or release) strings."""
    if a == b:
        return 0
    left, right = _SEGMENT.findall(a), _SEGMENT.findall(b)
    while left or right:
        x = left.pop(0) if left else None
        y = right.pop(0) if right else None
        if x == "~" or y == "~":
            if x != y:
                return -1 if x == "~" else 1
            continue
        if x == "^" or y == "^":
            if x is None:
                return -1
            if y is None:
                return 1
            if x != y:
                return 1 if x == "^" else -1
            continue
        if x is None:
            return -1
        if y is None:
            return 1
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1
        if x.isdigit():
            xi, yi = int(x), int(y)
            if xi != yi:
                return 1 if xi > yi else -1
        elif x != y:
            return 1 if x > y else -1
    return 0


def evr_cmp(a: tuple[str, str, str], b: tuple[str, str, str]) -> int:
    for x, y in zip(a, b, strict=True):
        result = vercmp(x or "0", y or "0")
        if result:
            return result
    return 0


def newest(packages: Sequence[Any]) -> Any:
    """The package with the highest (epoch, version, release)."""
    return max(packages, key=cmp_to_key(lambda p, q: evr_cmp(p.evr, q.evr)))
