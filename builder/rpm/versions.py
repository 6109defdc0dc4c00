"""rpm's version order, from rpm itself (``rpm.labelCompare``), for picking the newest package and for
``kiln rpm missing``.

A hand-written port disagreed with rpm (``1.0^git1`` vs ``1.0.1``) and was quadratic; rpm's own
bindings are Debian's ``python3-rpm``, which PyPI's ``rpm`` shim (a Kiln dependency) loads into the
venv. Lengths are capped before comparing (builder/limits.py): repo metadata is refused above them
already, so a longer value here comes from elsewhere and is refused too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache, cmp_to_key
from typing import Any

from ..errors import EnvironmentProblem, InvalidInput, Problem
from ..limits import MAX_EPOCH_DIGITS, MAX_RELEASE_CHARS, MAX_VERSION_CHARS

Evr = tuple[str, str, str]  # (epoch, version, release)


@cache
def _label_compare() -> Callable[[Any, Any], int]:
    try:
        import rpm  # on first use (start-up time); the PyPI shim loads Debian's python3-rpm
    except ImportError as exc:
        raise EnvironmentProblem(
            f"rpm's Python bindings are not importable ({exc}): install Debian's python3-rpm "
            "(apt-get install python3-rpm) and run scripts/bootstrap.sh, which installs the `rpm` shim "
            "into .venv"
        ) from None
    compare: Callable[[Any, Any], int] = rpm.labelCompare
    return compare


def _checked(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise InvalidInput(Problem(f"{what} {shown!r}: longer than {limit:,} characters"))
    return value


def evr_cmp(a: Evr, b: Evr) -> int:
    """-1, 0 or 1 as rpm orders two (epoch, version, release); an empty epoch is 0."""
    left = (
        _checked(a[0] or "0", "epoch", MAX_EPOCH_DIGITS),
        _checked(a[1], "version", MAX_VERSION_CHARS),
        _checked(a[2], "release", MAX_RELEASE_CHARS),
    )
    right = (
        _checked(b[0] or "0", "epoch", MAX_EPOCH_DIGITS),
        _checked(b[1], "version", MAX_VERSION_CHARS),
        _checked(b[2], "release", MAX_RELEASE_CHARS),
    )
    return int(_label_compare()(left, right))


def vercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as rpm orders two version (or release) strings."""
    return evr_cmp(("0", a, ""), ("0", b, ""))


evr_key = cmp_to_key(evr_cmp)


def format_evr(evr: Evr) -> str:
    """``epoch:version-release``, the epoch left out when it is 0 (as rpm prints it)."""
    epoch, version, release = evr
    return f"{epoch}:{version}-{release}" if epoch not in ("", "0") else f"{version}-{release}"


def newest(packages: Sequence[Any]) -> Any:
    """The package with the highest (epoch, version, release)."""
    return max(packages, key=lambda p: evr_key(p.evr))
