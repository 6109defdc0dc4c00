"""Errors that reach a user, and the exit codes the CLI maps them to.

Every user-facing error carries enough to act on it: the file, line and column, and the key path
inside the recipe (``publish.glance.visibility``), printed as
``recipes/guest/debian-12.yaml:14:5: publish.glance.visibility: must be one of ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

KeyPath = tuple[str | int, ...]


class ExitCode(IntEnum):
    OK = 0
    INVALID_INPUT = 1  # a recipe, site file or argument value is wrong: fix the input
    USAGE = 2  # the command line itself is malformed (argparse uses 2 too)
    ENVIRONMENT = 3  # a required tool or service is missing or unreachable
    FAILED = 4  # a build, verification or publish ran and failed
    INTERNAL = 70  # a Kiln bug (sysexits' EX_SOFTWARE): the message points at the saved traceback


def format_key_path(path: KeyPath) -> str:
    """Render ``("publish", "glance", "keep")`` as ``publish.glance.keep`` and indices as ``[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


@dataclass(frozen=True)
class Location:
    file: str  # as the user should see it: relative to the working directory when possible
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located as precisely as Kiln knows."""

    message: str
    location: Location | None = None
    key_path: KeyPath = ()
    # A Kiln bug met while reading this input (an unexpected exception), not a fault of the input:
    # the CLI can tell the two apart (its own exit code), and the other inputs are still checked.
    internal: bool = False

    def __str__(self) -> str:
        prefix = f"{self.location}: " if self.location else ""
        key = format_key_path(self.key_path)
        return f"{prefix}{key + ': ' if key else ''}{self.message}"

    def as_json(self) -> dict[str, object]:
        loc = self.location
        return {
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "key": format_key_path(self.key_path) or None,
            "message": self.message,
            **({"internal": True} if self.internal else {}),
        }


class KilnError(Exception):
    """Base of every error Kiln reports to a user without a traceback."""

    exit_code: ExitCode = ExitCode.FAILED


class InvalidInput(KilnError):
    """One or more problems in user input (recipes, site config, arguments)."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = problems
        super().__init__("\n".join(str(p) for p in problems))


class EnvironmentProblem(KilnError):
    """A tool or service Kiln needs is missing or not answering."""

    exit_code = ExitCode.ENVIRONMENT


class CommandFailed(KilnError):
    """A subprocess run through the runner exited non-zero or timed out."""

    exit_code = ExitCode.FAILED


# Terminal controls and line separators: a message quoting a server's text shows "?" for them.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class RemoteDataError(CommandFailed):
    """Data from a server Kiln does not control, refused or unreadable: over a limit, malformed, or not
    served. Exit 4; the message names the URL (never with its userinfo) and what was wrong.
    ``http_status``: the server's HTTP error status, when that is what was wrong (404: not there)."""

    def __init__(self, what: str, url: str | None = None, *, http_status: int | None = None):
        what = _UNPRINTABLE.sub("?", what)  # it may quote the server's text: no terminal controls
        self.what, self.url, self.http_status = what, url, http_status
        super().__init__(f"{url}: {what}" if url else what)

    def at(self, url: str) -> RemoteDataError:
        """This error, naming ``url`` unless it names one already (its class and status kept)."""
        return self if self.url else type(self)(self.what, url, http_status=self.http_status)


class LedgerError(InvalidInput, RuntimeError):
    """The ledger file cannot be used: not a ledger, damaged, or written by a newer Kiln. The message
    names the file and what to do. (A RuntimeError too, as the schema check raised before.)"""

    def __init__(self, path: object, what: str, todo: str):
        self.path = str(path)
        super().__init__(Problem(f"ledger {self.path}: {what}; {todo}"))
