"""Where an untrusted SRPM is opened: inside the build root, as nobody, with no network.

Everything that reads an SRPM's payload or evaluates its spec (``rpm -i``, ``rpmbuild -bs``,
``rpmbuild --rebuild``, every macro: ``%(...)``, ``%{lua:...}``) runs through :func:`sandbox_argv`:
new mount, PID, network, IPC and UTS namespaces (``unshare``: no interface but a down loopback, a
fresh ``/proc`` that shows only the sandbox's processes, all of them killed when it ends), then
``chroot`` into the build root with the unprivileged ``nobody`` user (no capabilities, so the
classic ways out of a chroot are closed) and an empty environment. The host's filesystem is not
there to be read or written.

What the sandbox leaves behind is just as untrusted: a file it wrote may be a symlink to
``/etc/shadow`` (the host would follow it) or a FIFO. The host reads it back only through
:func:`read_inside`, :func:`regular_files` and :func:`copy_out`, which open every path component
with ``O_NOFOLLOW`` relative to the root's descriptor and accept regular files only, within a size
limit.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from ..errors import InvalidInput, Problem

# Debian's nobody:nogroup. No file of the root belongs to it, so it can write only where Kiln
# gives it a directory (the build's top and home under /kiln).
SANDBOX_UID = 65534
SANDBOX_GID = 65534
INSIDE = "/kiln"  # where the build's files are placed inside the root
SANDBOX_HOME = f"{INSIDE}/home"
SANDBOX_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def sandbox_argv(root: Path, argv: Sequence[str]) -> tuple[str, ...]:
    """``argv`` run inside ``root`` as nobody, without network, in namespaces of its own."""
    return (
        "unshare", "--mount", "--pid", "--fork", "--kill-child", f"--mount-proc={root}/proc",
        "--net", "--ipc", "--uts",
        "chroot", f"--userspec={SANDBOX_UID}:{SANDBOX_GID}", f"--groups={SANDBOX_GID}", str(root),
        "/usr/bin/env", "-i", f"HOME={SANDBOX_HOME}", "LC_ALL=C.UTF-8", f"PATH={SANDBOX_PATH}",
        *argv,
    )  # fmt: skip


def give_to_sandbox(directory: Path) -> Path:
    """A fresh directory (created by Kiln, nothing in it yet) that the sandbox user may write."""
    directory.mkdir(parents=True, exist_ok=False)
    os.chown(directory, SANDBOX_UID, SANDBOX_GID, follow_symlinks=False)
    return directory


def _refused(root: Path, rel: str, why: str) -> InvalidInput:
    return InvalidInput(Problem(f"{rel} (written inside the build root {root}): {why}; not read"))


def _parts(rel: str) -> tuple[str, ...]:
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return path.parts


def _open_dir(root: Path, rel: str) -> int:
    """A descriptor of the directory ``root/rel``, no component followed if it is a symlink."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in _parts(rel) if rel else ():
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refused(root, rel, "a symlink or not a directory") from None
        raise
    return fd


def _open_regular(root: Path, rel: str) -> tuple[int, os.stat_result]:
    parent, name = str(PurePosixPath(rel).parent), PurePosixPath(rel).name
    dir_fd = _open_dir(root, "" if parent == "." else parent)
    try:
        # O_NONBLOCK: opening a FIFO left there must not wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(root, rel, "a symlink") from None
        raise
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refused(root, rel, "not a regular file")
    return fd, info


def _names(root: Path, rel_dir: str, wanted: Callable[[os.DirEntry[str]], bool]) -> list[str]:
    try:
        fd = _open_dir(root, rel_dir)
    except FileNotFoundError:
        return []
    try:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if wanted(e))
    finally:
        os.close(fd)


def regular_files(root: Path, rel_dir: str, suffix: str = "") -> list[str]:
    """Names of the regular files (not symlinks, not directories) in ``root/rel_dir``, sorted."""
    return _names(root, rel_dir, lambda e: e.name.endswith(suffix) and e.is_file(follow_symlinks=False))


def directories(root: Path, rel_dir: str) -> list[str]:
    """Names of the directories (not symlinks to one) in ``root/rel_dir``, sorted."""
    return _names(root, rel_dir, lambda e: e.is_dir(follow_symlinks=False))


def read_inside(root: Path, rel: str, limit: int) -> bytes:
    """The bytes of the regular file ``root/rel``; refused over ``limit`` bytes."""
    fd, info = _open_regular(root, rel)
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit:
            raise _refused(root, rel, f"{info.st_size} bytes, over the limit of {limit}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _refused(root, rel, f"over the limit of {limit} bytes")
    return data


def copy_out(root: Path, rel: str, dest: Path, limit: int) -> Path:
    """Copy the regular file ``root/rel`` to ``dest`` (a path Kiln owns), at most ``limit`` bytes."""
    fd, info = _open_regular(root, rel)
    with os.fdopen(fd, "rb") as source:
        if info.st_size > limit:
            raise _refused(root, rel, f"{info.st_size} bytes, over the limit of {limit}")
        dest.unlink(missing_ok=True)
        with dest.open("xb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            if target.tell() > limit:
                raise _refused(root, rel, f"grew over the limit of {limit} bytes while copied")
    return dest
