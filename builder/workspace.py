"""Where recipes, templates, elements and referenced files live, and which paths are allowed.

A workspace is one directory tree (normally this repository's checkout). Every file a recipe
references must resolve, symlinks followed, to a file inside that tree: absolute paths,
``../`` escapes and symlinks that point outside are refused. Paths inside Kiln (digests, rendered
files) are always relative to the workspace root, so they are the same on every machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The checkout this package was imported from: builder/ sits at its top level.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def relative_text(path: Path, root: Path) -> str:
    """``path.relative_to(root)`` as POSIX text. Paths are sequences of names without "/", so for
    a path below the root a prefix test on the text says the same as pathlib's part-by-part one,
    much faster (recipe loading does this per file); anything else goes the pathlib way, which
    raises the same ValueError."""
    text = str(path)
    prefix = str(root).rstrip("/") + "/"
    if len(text) > len(prefix) and text.startswith(prefix):
        return text[len(prefix) :]
    return path.relative_to(root).as_posix()


def _shown(reference: str) -> str:
    """A path from a recipe, quoted for a message, shortened when it is very long."""
    return repr(reference) if len(reference) <= 200 else repr(reference[:200]) + "..."


class PathRefused(ValueError):
    """A referenced path that is absolute, escapes the workspace or does not exist."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def discover(cls, start: Path | None = None) -> Workspace:
        """``$KILN_ROOT``, else the nearest ancestor of ``start`` (default: cwd) holding both
        ``recipes/`` and ``templates/``, else the checkout Kiln itself runs from."""
        env = os.environ.get("KILN_ROOT")
        if env:
            return cls(Path(env).resolve())
        here = (start or Path.cwd()).resolve()
        for candidate in (here, *here.parents):
            if (candidate / "recipes").is_dir() and (candidate / "templates").is_dir():
                return cls(candidate)
        return cls(PACKAGE_ROOT)

    @property
    def recipes_dir(self) -> Path:
        return self.root / "recipes"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def elements_dir(self) -> Path:
        return self.root / "elements"

    def _resolved_root(self) -> Path:
        """``root`` with symlinks resolved; resolved once per workspace when ``root`` is absolute."""
        if not self.root.is_absolute():
            return self.root.resolve()  # depends on the working directory: never cached
        resolved = self.__dict__.get("_root_resolved")
        if resolved is None:
            resolved = self.root.resolve()
            object.__setattr__(self, "_root_resolved", resolved)  # a cache, not a field
        return resolved

    def relative(self, path: Path, *, resolved: bool = False) -> str:
        """Workspace-relative POSIX spelling of a path inside the workspace."""
        return relative_text(path if resolved else path.resolve(), self._resolved_root())

    def resolve_reference(self, reference: str, base_dir: Path, *, want_dir: bool = False) -> Path:
        """Resolve a path written in a recipe (relative to the recipe's directory) safely."""
        if not reference or "\x00" in reference:
            raise PathRefused("empty path or NUL byte")
        pure = PurePosixPath(reference)
        if pure.is_absolute() or reference.startswith("~") or (len(reference) > 1 and reference[1] == ":"):
            raise PathRefused(f"absolute path {reference!r} refused: paths are relative to the recipe file")
        try:
            candidate = (base_dir / pure).resolve()
        except RuntimeError:  # pathlib: "Symlink loop from ..."
            raise PathRefused(f"{_shown(reference)} is a symlink loop") from None
        root = self._resolved_root()
        if not candidate.is_relative_to(root):
            raise PathRefused(f"{_shown(reference)} resolves outside the workspace ({root}); refused")
        try:
            exists = candidate.exists()
            is_dir = exists and candidate.is_dir()
            is_file = exists and candidate.is_file()
        except OSError as exc:  # a name over 255 bytes, a path over PATH_MAX, permissions
            raise PathRefused(f"{_shown(reference)} cannot be used: {exc.strerror or exc}") from None
        if not exists:
            shown = self.relative_or_abs(candidate, resolved=True)
            raise PathRefused(f"{_shown(reference)} does not exist (looked at {shown})")
        if want_dir and not is_dir:
            raise PathRefused(f"{_shown(reference)} is not a directory")
        if not want_dir and not is_file:
            raise PathRefused(f"{_shown(reference)} is not a regular file")
        return candidate

    def relative_or_abs(self, path: Path, *, resolved: bool = False) -> str:
        try:
            return self.relative(path, resolved=resolved)
        except ValueError:
            return str(path)


def source_commit(root: Path) -> str | None:
    """The commit the workspace's checkout is at (``.git/HEAD``), or None outside a git checkout."""
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (root / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return None
