"""Writing files under a directory Kiln was given: only below it, never through a symlink, atomically;
and reading a file a record names only from below the directory it must lie in (``read_below``).

The directory named on the command line (``kiln render -o DIR``) is taken as the user gave it; below
it, every directory is opened with ``O_NOFOLLOW`` relative to its parent's descriptor, so a symlink
planted in the tree (``DIR/<target>`` -> ``/etc``) is refused instead of followed. Each file is
written to a fresh temporary name beside its destination (``O_CREAT | O_EXCL | O_NOFOLLOW``: a
planted ``.x.tmp`` link cannot redirect it) and renamed over it, which replaces a symlink at the
destination instead of writing through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .errors import EnvironmentProblem, InvalidInput, Problem


def _refused(path: Path, why: str) -> InvalidInput:
    return InvalidInput(Problem(f"{path}: {why}"))


def prepare_root(root: Path, *, what: str = "output directory") -> Path:
    """``root`` as a directory that exists (created if missing); refuses files, /proc and the like."""
    try:
        if root.exists() and not root.is_dir():
            raise _refused(root, f"the {what} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        probe = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        os.close(probe)
    except InvalidInput:
        raise
    except OSError as exc:
        raise _refused(root, f"cannot use as the {what}: {exc.strerror or exc}") from None
    return root


def _open_dir(parent_fd: int, name: str, where: Path, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent_fd)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if os.path.islink(where) else "not a directory"
            raise _refused(where, f"{kind} inside the output directory; Kiln writes only below it") from None
        raise


def _relative(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return path


def write_below(root: Path, files: Iterable[tuple[str, bytes, int]]) -> list[Path]:
    """Write each (relative path, content, mode) below ``root``; returns the written paths."""
    root = prepare_root(root)
    written = []
    for rel, content, mode in files:
        path = _relative(rel)
        fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
        try:
            where = root
            for part in path.parts[:-1]:
                where = where / part
                fds.append(_open_dir(fds[-1], part, where, create=True))
            _write_at(fds[-1], path.name, content, mode, root / rel)
        except OSError as exc:
            raise EnvironmentProblem(f"{root / rel}: cannot write: {exc.strerror or exc}") from None
        finally:
            for fd in reversed(fds):
                os.close(fd)
        written.append(root / rel)
    return written


def write_file(path: Path, content: bytes, mode: int = 0o644) -> Path:
    """One file, atomically, into a directory that must exist (a clear error when it does not)."""
    parent = path.parent
    if not parent.is_dir():
        raise _refused(parent, "no such directory")
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _refused(parent, f"cannot open: {exc.strerror or exc}") from None
    try:
        _write_at(fd, path.name, content, mode, path)
    except OSError as exc:
        raise EnvironmentProblem(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return path


def _write_at(dir_fd: int, name: str, content: bytes, mode: int, shown: Path) -> None:
    if os.path.isdir(shown) and not os.path.islink(shown):
        raise _refused(shown, "a directory is where Kiln writes a file")
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            os.fchmod(handle.fileno(), mode)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


# --- reading what a record names -------------------------------------------------------------------------


def read_below(
    root: Path, recorded: str, *, tail: int | None = None, limit: int | None = None
) -> bytes | None:
    """The bytes of a file a record (a ledger row, a manifest) names, when it lies below ``root`` once
    symlinks are resolved and is a regular file; None otherwise (``/etc/shadow``, a symlink out of
    the tree, a FIFO, a file over ``limit`` bytes). With ``tail``, only the last ``tail`` bytes.

    A path from a record is data, not permission: the resolved path is opened again component by
    component from ``root`` with ``O_NOFOLLOW``, so a directory swapped for a symlink after the check
    is refused too."""
    try:
        base = root.resolve(strict=True)
        resolved = Path(recorded).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        return None
    if not resolved.is_relative_to(base) or resolved == base:
        return None
    parts = resolved.relative_to(base).parts
    fds: list[int] = []
    try:
        fds.append(os.open(base, os.O_RDONLY | os.O_DIRECTORY))
        for part in parts[:-1]:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds[-1])
    except OSError:
        return None
    finally:
        for opened in reversed(fds):
            os.close(opened)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (limit is not None and info.st_size > limit):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        if tail is not None:
            handle.seek(max(0, info.st_size - tail))
        return handle.read()
