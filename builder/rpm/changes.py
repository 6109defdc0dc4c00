"""What Kiln changes in a spec (pure: text in, text out).

- ``Release:`` gets the recipe's suffix (``1%{?dist}`` → ``1%{?dist}.kiln1``).
- Each recipe patch is declared as ``Source9000+`` (so the rebuilt SRPM carries it, and
  ``%autosetup``/``%autopatch`` leave it alone) and applied at the end of ``%prep``, after
  upstream's, with ``patch --fuzz=0``; one that does not apply fails the build with
  ``kiln: patch NAME does not apply``.
- A ``%changelog`` entry (the newest) names what Kiln changed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..errors import InvalidInput, Problem

FIRST_PATCH = 9000
PATCH_FAILED = "kiln: patch {name} does not apply"
_SECTION = re.compile(
    r"^%(build|install|check|clean|files|changelog|package|description|pre|post|preun|postun|"
    r"pretrans|posttrans|triggerin|triggerun|verifyscript|generate_buildrequires|conf)\b"
)
_RELEASE = re.compile(r"^(Release\s*:\s*)(\S.*?)\s*$", re.IGNORECASE)
_TAG = re.compile(r"^(Source|Patch)\d*\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Changes:
    release_suffix: str
    patches: tuple[str, ...]  # file names (in SOURCES)
    defines: tuple[tuple[str, str], ...] = ()
    without: tuple[str, ...] = ()
    arch: str = ""

    @property
    def suffix(self) -> str:
        return self.release_suffix if self.release_suffix.startswith(".") else "." + self.release_suffix

    def summary(self) -> list[str]:
        lines = [f"Rebuilt by Kiln for {self.arch}" if self.arch else "Rebuilt by Kiln"]
        lines.append(f"Release suffix {self.suffix}")
        lines += [f"Patch: {name}" for name in self.patches]
        lines += [f"Macro: %{name} {value}" for name, value in self.defines]
        lines += [f"Without: {name}" for name in self.without]
        return lines


def apply_changes(spec: str, changes: Changes, spec_name: str = "spec", now: float | None = None) -> str:
    lines = spec.splitlines()
    lines = _suffix_release(lines, changes.suffix, spec_name)
    if changes.patches:
        lines = _declare_patches(lines, changes.patches)
        lines = _apply_in_prep(lines, changes.patches, spec_name)
    lines = _changelog(lines, changes, now)
    return "\n".join(lines) + "\n"


def _suffix_release(lines: list[str], suffix: str, spec_name: str) -> list[str]:
    for i, line in enumerate(lines):
        match = _RELEASE.match(line)
        if match:
            return [*lines[:i], f"{match.group(1)}{match.group(2)}{suffix}", *lines[i + 1 :]]
    raise InvalidInput(Problem(f"{spec_name}: has no Release: tag"))


def _declare_patches(lines: list[str], patches: tuple[str, ...]) -> list[str]:
    last = max((i for i, line in enumerate(lines) if _TAG.match(line)), default=None)
    if last is None:  # no Source/Patch tags: after Release
        last = next(i for i, line in enumerate(lines) if _RELEASE.match(line))
    added = [f"Source{FIRST_PATCH + n}: {name}" for n, name in enumerate(patches)]
    return [*lines[: last + 1], *added, *lines[last + 1 :]]


def _apply_in_prep(lines: list[str], patches: tuple[str, ...], spec_name: str) -> list[str]:
    start = next((i for i, line in enumerate(lines) if re.match(r"^%prep\b", line)), None)
    if start is None:
        raise InvalidInput(Problem(f"{spec_name}: has no %prep section to apply build.patches in"))
    end = next((i for i in range(start + 1, len(lines)) if _SECTION.match(lines[i])), len(lines))
    applying = ["# Kiln: build.patches, after upstream's"]
    for n, name in enumerate(patches):
        failed = PATCH_FAILED.format(name=name)
        applying.append(
            f"if ! patch -p1 --fuzz=0 --no-backup-if-mismatch -s -i %{{SOURCE{FIRST_PATCH + n}}}; "
            f"then echo '{failed}' >&2; exit 1; fi"
        )
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return [*lines[:end], *applying, "", *lines[end:]]


def _changelog(lines: list[str], changes: Changes, now: float | None) -> list[str]:
    stamp = time.strftime("%a %b %d %Y", time.gmtime(now if now is not None else time.time()))
    entry = [f"* {stamp} Kiln <kiln@localhost>", *(f"- {line}" for line in changes.summary()), ""]
    at = next((i for i, line in enumerate(lines) if re.match(r"^%changelog\b", line)), None)
    if at is None:
        return [*lines, "", "%changelog", *entry]
    return [*lines[: at + 1], *entry, *lines[at + 1 :]]


def patch_failure(output: str) -> str | None:
    """The patch named by a failed %prep, if one did not apply."""
    match = re.search(PATCH_FAILED.format(name=r"(\S+)"), output)
    return match.group(1) if match else None
