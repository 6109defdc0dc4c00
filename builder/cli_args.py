"""Checks of command-line values that argparse applies as they are parsed (``type=``): a value that
cannot be what it stands for is invalid input (exit 1, as for every wrong argument value) naming the
argument, before any command runs. ``kiln``'s ``main`` reports it (builder/cli.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from .errors import InvalidInput, Problem

PATH_MAX_BYTES = 4095  # Linux PATH_MAX (4096) less the terminating NUL
NAME_MAX_BYTES = 255  # one path component
# C0 and C1 controls, DEL, U+2028/U+2029: a path holding one is a pasting accident (or an attack on
# whoever reads the logs), never a file a user means.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a path Kiln reads or writes, or None. Pure."""
    if not value:
        return "an empty path (give a file or directory, e.g. '.')"
    control = _CONTROL.search(value)
    if control is not None:
        return f"a path with a control character (U+{ord(control.group()):04X}) is not accepted"
    encoded = os.fsencode(value)
    if len(encoded) > PATH_MAX_BYTES:
        return f"a path of {len(encoded)} bytes; at most {PATH_MAX_BYTES} are possible"
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > NAME_MAX_BYTES:
        return f"a path with a {longest}-byte name in it; at most {NAME_MAX_BYTES} are possible"
    return None


def path_type(argument: str) -> Callable[[str], str]:
    """argparse ``type`` for the path ``argument`` (``--html``, ``ARTIFACT``): the value unchanged, or
    InvalidInput naming the argument and what is wrong (not argparse's own error: exit 1, not 2)."""

    def checked(value: str) -> str:
        problem = path_problem(value)
        if problem is not None:
            shown = f"{value[:60]!r}{'...' if len(value) > 60 else ''}"
            raise InvalidInput(Problem(f"{argument}: {problem} (got {shown})"))
        return value

    return checked
