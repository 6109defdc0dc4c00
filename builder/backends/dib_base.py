"""The base tree: a DIB build's tree after the distro bootstrap and the shared packages, cached by
the digest of its inputs so that the next build on the same base installs only what it adds.

How it plugs into diskimage-builder (no fork of DIB's scripts):

- DIB's ``debootstrap`` element starts a build from ``$DIB_IMAGE_CACHE/debootstrap-<distro>-
  <release>-<arch>.tar.gz`` when that file exists (``DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE``). Kiln owns
  that name in its per-arch DIB cache ("the spot"): before each run, inside the per-arch cache lock,
  it points the spot at the chosen base tree (reuse), or at the plain debootstrap tarball (record,
  or the cache switched off); after the run no link is left. A tarball DIB wrote there itself is
  moved aside as the plain one, so no build ever starts from a tree it did not choose.
- Kiln's element ``kiln-base-tree`` (``root.d/76-kiln-base-tree``, after the distro's
  ``75-*-baseinstall``) records: it installs the base packages into the chroot and writes the tree
  to the store, atomically. Reusing, it does nothing: the tree came in through the spot.

The key (:func:`base_key`) covers everything that shapes the tree up to that point: distro, release,
arch, the text of every ``root.d`` script of the build's elements (so a changed or added element
with such a script is a new base), the values those scripts read of the environment that the
elements' ``environment.d`` files make (sourced as DIB sources them: what an ``environment.d`` file
changes reaches the tree only through the environment), the base packages, the mirror's state (the
sha256 of each suite's ``InRelease``) and the stage's own version (this module's and the element's
script). Builds share a base exactly when all of it agrees: a guest image and an IPA ramdisk of one
distro, release and arch do, though IPA's elements bring ``environment.d`` files of their own. When
the ``environment.d`` files cannot be sourced here, their text is part of the key instead (a base
shared by fewer builds, never a wrong one).

The store keeps base trees under ``<cache>/dib-base/<arch>/<key>/`` (``tree.tar.gz`` and
``base.json``, written last: a directory without it is never reused), up to a size limit, evicting
the least recently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..arch import Arch
from ..host.run import Runner

if TYPE_CHECKING:
    from ..host.run import Runner

STAGE_VERSION = 2  # bump when the recorded tree's layout or the recording changes
ELEMENT = "kiln-base-tree"
TREE = "tree.tar.gz"
RECORD = "base.json"

# Environment variables that name per-run paths or Kiln's own switches: they never shape the tree.
_NOT_INPUTS = {
    "DIB_IMAGE_CACHE",
    "TMPDIR",
    "PATH",
    "ELEMENTS_PATH",
    "DIB_DEBOOTSTRAP_CACHE",
    "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE",
    "KILN_BASE_TREE_MODE",
    "KILN_BASE_TREE_OUT",
    "KILN_BASE_PACKAGES",
}


@dataclass(frozen=True)
class BaseSpec:
    """What a base tree is made of (pure data; :func:`base_key` hashes it)."""

    distro: str
    release: str
    arch: Arch
    packages: tuple[str, ...]
    scripts: tuple[tuple[str, str], ...]  # (element/phase/name, sha256) of root.d and environment.d
    env: tuple[tuple[str, str], ...]  # the variables those scripts read, with their values
    mirror_state: tuple[tuple[str, str], ...] = ()  # (suite URL, sha256 of its InRelease)
    stage: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "distro": self.distro,
            "release": self.release,
            "arch": self.arch.value,
            "packages": list(self.packages),
            "scripts": [list(s) for s in self.scripts],
            "env": dict(self.env),
            "mirror_state": [list(m) for m in self.mirror_state],
            "stage": self.stage,
        }


def base_key(spec: BaseSpec) -> str:
    return hashlib.sha256(json.dumps(spec.as_json(), sort_keys=True).encode()).hexdigest()


def stage_version(elements_dir: Path) -> str:
    """This stage's version: the constant and the recording script's bytes."""
    script = elements_dir / ELEMENT / "root.d" / f"76-{ELEMENT}"
    return f"{STAGE_VERSION}:{hashlib.sha256(script.read_bytes()).hexdigest()[:16]}"


# --- the inputs, from the elements (reads element files; no network) --------------------------------


def dib_elements_dir() -> Path:
    import diskimage_builder  # on first use, not at start-up: a heavy import

    return Path(diskimage_builder.__file__).parent / "elements"


def expanded_elements(elements: Iterable[str], elements_path: str) -> list[tuple[str, Path]]:
    """(name, directory) of every element DIB will use for ``elements`` (with ``base``, which
    disk-image-create adds), dependencies resolved by DIB's own resolver."""
    from diskimage_builder.element_dependencies import (
        get_elements,  # on first use, not at start-up: a heavy import
    )

    wanted = ["base", *elements]
    if not any(e.startswith("block-device-") for e in elements):
        wanted.append("block-device-mbr")  # what disk-image-create adds by default
    found = get_elements(wanted, f"{elements_path}:{dib_elements_dir()}")
    return sorted((name, Path(path)) for name, path in found)


def tree_scripts(
    elements: list[tuple[str, Path]], phases: tuple[str, ...] = ("root.d",)
) -> list[tuple[str, str, str]]:
    """(element/phase/name, sha256, text) of the scripts of ``phases`` (those that run before the
    tree is recorded: root.d; environment.d's effect is taken through :func:`sourced_environment`)."""
    out = []
    for name, directory in elements:
        for phase in phases:
            for script in sorted((directory / phase).glob("*")) if (directory / phase).is_dir() else []:
                if script.is_file():
                    data = script.read_bytes()
                    out.append(
                        (
                            f"{name}/{phase}/{script.name}",
                            hashlib.sha256(data).hexdigest(),
                            data.decode(errors="replace"),
                        )
                    )
    return out


# dib-run-parts' own order (lib/dib-run-parts, source_environment): every element's environment.d
# files in one directory, names matching its pattern, `LANG=C sort -n`. Paths come as arguments.
_SOURCE_ENVIRONMENT = r"""
set +eu
files=$(find "$1" -maxdepth 1 -xtype f | grep -E "/[0-9A-Za-z_\.-]+$" | LANG=C sort -n)
for file in $files; do source "$file" >/dev/null 2>&1 </dev/null; done
env -0
"""


def environment_files(elements: list[tuple[str, Path]]) -> list[Path]:
    """Every element's ``environment.d`` files (DIB copies them into one directory: by name)."""
    files: dict[str, Path] = {}
    for _, directory in elements:
        folder = directory / "environment.d"
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_file():
                files[path.name] = path
    return list(files.values())


def sourced_environment(files: list[Path], env: Mapping[str, str], runner: Runner) -> dict[str, str] | None:
    """The environment after sourcing ``files`` on top of ``env`` in DIB's order; None when bash
    could not do it here (the caller keys on the files' text instead)."""

    with tempfile.TemporaryDirectory(prefix="kiln-envd-") as folder:
        for path in files:
            (Path(folder) / path.name).symlink_to(path.resolve())
        result = runner.capture(
            ["bash", "-c", _SOURCE_ENVIRONMENT, "kiln-environment", folder],
            env={**env},
            timeout=30,
        )
    if not result.ok:
        return None
    out: dict[str, str] = {}
    for entry in result.stdout.split("\0"):
        name, sep, value = entry.partition("=")
        if sep and name.isidentifier():
            out[name] = value
    return out


def env_read_by(texts: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` whose names appear in any of ``texts``: what those scripts can read."""
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "\n".join(texts)))
    return {k: v for k, v in sorted(env.items()) if k not in _NOT_INPUTS and k in named and k != "_"}


def _arch_matches(entry: Mapping[str, Any], arch: Arch) -> bool:
    def names(value: Any) -> set[str]:
        return {str(a).strip() for a in str(value).split(",")} if value else set()

    spellings = {arch.debian, arch.value, arch.dib}
    if entry.get("arch") and not names(entry["arch"]) & spellings:
        return False
    return not names(entry.get("not-arch")) & spellings


def distro_packages(elements: list[tuple[str, Path]], distro_elements: set[str], arch: Arch) -> list[str]:
    """The packages the distro's own elements install (``package-installs.yaml``; entries for other
    arches, uninstalls and conditional ones left out): every build on this distro gets them."""
    packages = []
    for name, directory in elements:
        if name not in distro_elements:
            continue
        path = directory / "package-installs.yaml"
        if not path.is_file():
            continue
        data = yaml.safe_load(path.read_text()) or {}
        for package, entry in data.items():
            entry = entry or {}
            if not isinstance(entry, dict) or entry.get("uninstall") or entry.get("when"):
                continue
            if _arch_matches(entry, arch):
                packages.append(str(package))
    return packages


def base_element_packages(elements: list[tuple[str, Path]], family: str, env: Mapping[str, str]) -> list[str]:
    """What DIB's ``base`` element installs in every build (``install.d/00-baseline-environment``:
    pkg-map's ``iscsi_package``, unless ``DIB_SKIP_BASE_PACKAGE_INSTALL=1``). Its postinst rebuilds
    the initramfs: in the base tree, a warm build does not."""
    if str(env.get("DIB_SKIP_BASE_PACKAGE_INSTALL", "0")) != "0":
        return []
    directory = dict(elements).get("base")
    if directory is None or not (directory / "pkg-map").is_file():
        return []
    mapping = json.loads((directory / "pkg-map").read_text())
    package = (mapping.get("family", {}).get(family) or mapping.get("default") or {}).get("iscsi_package")
    return [package] if package else []


def base_spec(
    *,
    distro: str,
    release: str,
    arch: Arch,
    elements: list[str],
    elements_dir: Path,
    env: Mapping[str, str],
    recipe_packages: Iterable[str],
    shared_packages: Iterable[str],
    distro_elements: set[str],
    mirror_state: Iterable[tuple[str, str]] = (),
    elements_path: str = "",
    runner: Runner | None = None,
) -> BaseSpec:
    """What the base of a build is made of. ``elements_path``: more element directories after
    Kiln's (IPA's); ``env``: the build's environment before DIB sources environment.d."""

    path = f"{elements_dir}:{elements_path}" if elements_path else str(elements_dir)
    expanded = expanded_elements(elements, path)
    scripts = tree_scripts(expanded)
    sourced = sourced_environment(environment_files(expanded), env, runner or Runner())
    if sourced is None:  # key on what the environment.d files say instead of what they do
        scripts = tree_scripts(expanded, ("environment.d", "root.d"))
        sourced = dict(env)
    shared = set(shared_packages)
    packages = (
        set(distro_packages(expanded, distro_elements, arch))
        | set(base_element_packages(expanded, "debian", env))
        | {p for p in recipe_packages if p in shared}
    )
    return BaseSpec(
        distro=distro,
        release=release,
        arch=arch,
        packages=tuple(sorted(packages)),
        scripts=tuple((where, digest) for where, digest, _ in scripts),
        env=tuple(env_read_by((text for _, _, text in scripts), sourced).items()),
        mirror_state=tuple(mirror_state),
        stage=stage_version(elements_dir),
    )


# --- the mirror's state (network) ----------------------------------------------------------------------


def mirror_state(suites: Iterable[str], timeout_s: float = 30.0) -> list[tuple[str, str]]:
    """(suite URL, sha256 of its InRelease) per suite (``<mirror>/dists/<suite>``): a mirror that
    moved on is a new base. Raises OSError when a suite cannot be read."""
    import requests  # on first use, not at start-up: a heavy import

    out = []
    for suite in suites:
        url = f"{suite.rstrip('/')}/InRelease"
        try:
            reply = requests.get(url, timeout=timeout_s)
        except requests.RequestException as exc:
            raise OSError(f"{url}: {exc}") from None
        if reply.status_code != 200:
            raise OSError(f"{url}: HTTP {reply.status_code}")
        out.append((suite, hashlib.sha256(reply.content).hexdigest()))
    return out


# --- the store -------------------------------------------------------------------------------------------


@dataclass
class BaseStore:
    """Base trees of one arch under ``root`` (``<cache>/dib-base/<debian arch>``)."""

    root: Path
    max_bytes: int = 20 * 1024**3
    evicted: list[str] = field(default_factory=list)

    def directory(self, key: str) -> Path:
        return self.root / key

    def tree(self, key: str) -> Path:
        return self.directory(key) / TREE

    def has(self, key: str) -> bool:
        """A whole base: its record is written last, after the tree is complete."""
        return (self.directory(key) / RECORD).is_file() and self.tree(key).is_file()

    def touch(self, key: str) -> None:
        os.utime(self.directory(key) / RECORD)  # the LRU clock: last use

    def prepare(self, key: str) -> Path:
        """An empty directory for a base about to be recorded (a half-written one is discarded)."""
        directory = self.directory(key)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return self.tree(key)

    def commit(self, key: str, spec: BaseSpec, seconds: float) -> None:
        record = {"key": key, "spec": spec.as_json(), "seconds": round(seconds, 1), "created": time.time()}
        tmp = self.directory(key) / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.directory(key) / RECORD)
        self.evict(keep=key)

    def discard(self, key: str) -> None:
        shutil.rmtree(self.directory(key), ignore_errors=True)

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, key) of every base, oldest first; unfinished ones count as oldest."""
        out = []
        for directory in self.root.iterdir() if self.root.is_dir() else []:
            if not directory.is_dir():
                continue
            record = directory / RECORD
            used = record.stat().st_mtime if record.exists() else 0.0
            size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
            out.append((used, size, directory.name))
        return sorted(out)

    def evict(self, keep: str) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, key in entries:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            self.discard(key)
            self.evicted.append(key)
            total -= size


# --- the spot: the debootstrap tarball name DIB looks for ---------------------------------------------


def spot_name(distro: str, release: str, arch: Arch) -> str:
    return f"debootstrap-{distro}-{release}-{arch.debian}.tar.gz"


def settle_spot(image_cache: Path, name: str) -> None:
    """No link at the spot; a tarball DIB wrote there (a fresh debootstrap) becomes the plain one."""
    spot = image_cache / name
    if spot.is_symlink():
        spot.unlink()
    elif spot.is_file():
        plain = image_cache / "kiln-plain" / name
        plain.parent.mkdir(parents=True, exist_ok=True)
        spot.replace(plain)


def point_spot(image_cache: Path, name: str, tree: Path | None) -> Path | None:
    """Point the spot at ``tree`` (reuse), else at the plain debootstrap tarball when there is one.
    Returns what the spot points at (None: DIB debootstraps)."""
    settle_spot(image_cache, name)
    plain = image_cache / "kiln-plain" / name
    chosen = tree if tree is not None else (plain if plain.is_file() else None)
    if chosen is not None:
        (image_cache / name).symlink_to(chosen)
    return chosen
