"""Publish RPMs to a signed yum/dnf repository: ``<root>/<repo>/<distro>/<release>/<arch>/``.

- Packages are signed (rpmsign; Debian's rpm needs ``%__gpg /usr/bin/gpg``) before they enter the tree.
- Metadata is written into a fresh directory: where the publish only adds packages and Kiln's index
  of the current metadata holds, their entries are appended (``builder.publishers.repodata``: nothing
  already indexed is read or compressed again); otherwise ``createrepo_c --update`` rebuilds it. Then
  ``repomd.xml`` is signed (detached, ASCII-armoured) there, and ``repodata`` -- a symlink -- is
  switched to it with one atomic rename. A reader sees the old metadata or the new, never a mix; a
  failure (a full disk, a killed process) leaves the old metadata served and valid.
- Publishes into one repo directory are serialized by a lock file, so concurrent publishes lose nothing.
- Mirrors (S3, rsync) receive packages first and metadata last (see ``builder.publishers.mirror``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..core.kind import slug_of
from ..core.route import (
    NO_FACTS,
    Candidate,
    Facts,
    Found,
    Publication,
    Publishers,
    Route,
    Routed,
    Step,
    TargetLike,
)
from ..errors import CommandFailed, InvalidInput, Problem
from ..host.run import Runner
from ..provenance import copy_beside
from ..rpm import header as rpmheader
from . import repodata
from .publication_record import PublicationRecord, fetch_record, write_record

KEEP_OLD_METADATA = 1  # previous metadata dirs kept for readers still fetching them


@dataclass(frozen=True)
class RepoKey:
    gnupghome: Path
    fingerprint: str
    public_key_url: str  # what .repo files point dnf at


@dataclass(frozen=True)
class RepoResult:
    repo_dir: Path  # the arch directory (repo base URL)
    packages: tuple[str, ...]  # relative to repo_dir
    repo_file: Path
    metadata_dir: str
    metadata_update: str  # "appended" (entries added to the old metadata) or "rebuilt" (createrepo_c)


def _keep_served_files(served: Path, new: Path) -> None:
    """Hard-link the files the served repomd.xml lists into the new metadata directory.

    A client that fetched the old repomd.xml just before the switch asks for its checksum-named
    files next, through the same ``repodata/`` URL: they must still be there. Files of older
    generations are not carried on, so this keeps exactly one previous set."""
    for href, _ in repodata.served_records(served).values():
        name = Path(href).name
        if (new / name).exists() or not (served / name).is_file():
            continue
        with suppress(FileExistsError):
            os.link(served / name, new / name)


RECORDS_DIR = "kiln-published"  # beside Packages/ and repodata/ in an arch directory


@dataclass(frozen=True)
class ServedRepo:
    """The repo as any runner reads it, over HTTP from its base URL: no key, no local tree."""

    base_url: str

    def published(
        self, repo: str, distro: str, release: str, arch: str, target_id: str
    ) -> tuple[str, PublicationRecord | None]:
        """(URL, the publication record the repo serves for ``target_id`` in ``arch``'s directory,
        None when there is none)."""
        arch_dir = f"{self.base_url.rstrip('/')}/{repo}/{distro}/{release}/{arch}"
        url = f"{arch_dir}/{RECORDS_DIR}/{slug_of(target_id)}.json"
        return url, fetch_record(url)


class RepoPublisher:
    def __init__(self, root: Path, key: RepoKey, base_url: str, runner: Runner | None = None):
        self.root = root
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.runner = runner or Runner()

    def repo_dir(self, repo: str, distro: str, release: str, arch: str) -> Path:
        return self.root / repo / distro / release / arch

    @contextmanager
    def _locked(self, repo_dir: Path) -> Iterator[None]:
        repo_dir.mkdir(parents=True, exist_ok=True)
        with (repo_dir / ".kiln-lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(self, rpms: list[Path], *, repo: str, distro: str, release: str, arch: str) -> RepoResult:
        repo_dir = self.repo_dir(repo, distro, release, arch)
        destinations = [self._destination(rpm, repo_dir) for rpm in rpms]  # refuses bad input first
        duplicates = sorted({d.name for d in destinations if destinations.count(d) > 1})
        if duplicates:
            raise InvalidInput(
                Problem(f"the same package file twice in one publish: {', '.join(duplicates)}")
            )
        # Under the lock, the current metadata (and the packages on disk) are read on the other core
        # while the new packages are signed -- and before any of them is placed.
        with self._locked(repo_dir), ThreadPoolExecutor(1, thread_name_prefix="kiln-repodata") as pool:
            reading = pool.submit(repodata.load_current, repo_dir)
            # createrepo_c --update trusts an old entry whose file has the same size and mtime (in
            # seconds): a package replaced within the second of the last index would keep its old
            # checksum. Replacing a package therefore re-reads every package.
            replacing = any(dest.exists() for dest in destinations)
            staged: list[Path] = []
            try:
                for rpm in rpms:
                    staged.append(self._stage(rpm, repo_dir))
                current = reading.result()
                added = [
                    self._place(path, dest, repo_dir) for path, dest in zip(staged, destinations, strict=True)
                ]
            finally:
                for path in staged:
                    path.unlink(missing_ok=True)
            if replacing:
                current = None
            metadata_dir, how = self._refresh_metadata(repo_dir, added, current, from_scratch=replacing)
        repo_file = self._write_repo_file(repo, distro, release)
        return RepoResult(repo_dir, tuple(added), repo_file, metadata_dir, how)

    # -- packages -------------------------------------------------------------------------------------

    @staticmethod
    def _destination(rpm: Path, repo_dir: Path) -> Path:
        """``Packages/<first letter of NAME>/<file name>``; refuses what is not an RPM or not named so
        (createrepo_c indexes ``*.rpm`` files only)."""
        name, _ = rpmheader.name_and_arch(rpm)
        if not rpm.name.endswith(".rpm") or rpm.name.startswith("."):
            raise InvalidInput(Problem(f"{rpm}: a package file name must end in .rpm, not start with ."))
        return repo_dir / "Packages" / name[0].lower() / rpm.name

    def _stage(self, rpm: Path, repo_dir: Path) -> Path:
        """A signed copy of ``rpm`` as a dot-file beside the packages: same file system, so placing
        it is one atomic rename, and createrepo_c never indexes a leftover from a crash (not *.rpm)."""
        staged = repo_dir / f".incoming-{uuid.uuid4().hex}.part"
        try:
            shutil.copyfile(rpm, staged)
            self._sign(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    @staticmethod
    def _place(staged: Path, dest: Path, repo_dir: Path) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)  # same file system: atomic
        return dest.relative_to(repo_dir).as_posix()

    def _sign(self, rpm: Path) -> None:
        self.runner.run(
            [
                "rpmsign",
                "--define",
                f"_gpg_name {self.key.fingerprint}",
                "--define",
                f"_gpg_path {self.key.gnupghome}",
                "--define",
                "__gpg /usr/bin/gpg",  # Debian's rpm points at a gpg2 that does not exist
                "--addsign",
                str(rpm),
            ],
            timeout=120,
        )

    # -- metadata -------------------------------------------------------------------------------------

    def _refresh_metadata(
        self,
        repo_dir: Path,
        added: Sequence[str] = (),
        current: repodata.CurrentMetadata | None = None,
        from_scratch: bool = False,
    ) -> tuple[str, str]:
        """New signed metadata for the packages now in ``repo_dir``, switched in atomically.

        ``added``: the packages this publish put in place; ``current``: the metadata served before
        they were placed (:func:`repodata.load_current`); None means createrepo_c rebuilds it,
        re-reading every package with ``from_scratch``, else only those that changed.
        Returns the metadata directory's name and how it was made ("appended" or "rebuilt")."""
        name = f".meta-{uuid.uuid4().hex[:12]}"
        new_meta = repo_dir / name
        served = repo_dir / "repodata"
        try:
            new_meta.mkdir()
            how = "appended" if self._append_metadata(repo_dir, added, current, new_meta) else "rebuilt"
            if how == "rebuilt":
                from_scratch = from_scratch or bool(repodata.changed_in_place(repo_dir))
                self._rebuild_metadata(repo_dir, new_meta, from_scratch)
            _keep_served_files(served, new_meta / "repodata")
            repomd = new_meta / "repodata" / "repomd.xml"
            self._detach_sign(repomd)
            link = repo_dir / f".repodata-{uuid.uuid4().hex[:8]}"
            link.symlink_to(f"{name}/repodata")
            if served.is_dir() and not served.is_symlink():  # a tree from before Kiln managed it
                served.rename(repo_dir / f".meta-legacy-{uuid.uuid4().hex[:8]}")
            os.replace(link, served)  # the one atomic switch readers see
        except BaseException as exc:
            shutil.rmtree(new_meta, ignore_errors=True)
            for leftover in repo_dir.glob(".repodata-*"):
                leftover.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # a full disk, a read-only tree: say where, keep the old metadata
                where = f" ({exc.filename})" if exc.filename else ""
                message = f"writing repo metadata in {repo_dir}{where}: {exc.strerror or exc}"
                raise CommandFailed(message) from exc
            raise
        self._prune_old_metadata(repo_dir, keep={name})
        return name, how

    def _append_metadata(
        self,
        repo_dir: Path,
        added: Sequence[str],
        current: repodata.CurrentMetadata | None,
        new_meta: Path,
    ) -> bool:
        """Append the entries of the ``added`` packages to the current metadata, if that is all that
        changed; False (nothing written) when createrepo_c must look at the whole tree instead."""
        # load_current checked that the tree matched the metadata before these packages were placed;
        # a package published again under an indexed path replaces an entry: createrepo_c's job.
        if not added or current is None or not current.index.packages.keys().isdisjoint(added):
            return False
        repodata.append(current, repodata.new_entries(repo_dir, list(added), self.runner), new_meta)
        return True

    def _rebuild_metadata(self, repo_dir: Path, new_meta: Path, from_scratch: bool = False) -> None:
        """``createrepo_c --update`` over the whole tree (without ``--update``: ``from_scratch``),
        then laid out so that the next publish can append."""
        served = repo_dir / "repodata"
        argv = [
            "createrepo_c",
            "--quiet",
            "--no-database",
            "--general-compress-type",
            "gz",  # older yum cannot read zstd
            "--outputdir",
            str(new_meta),
        ]
        if not from_scratch and (served / "repomd.xml").exists():
            argv += ["--update", "--update-md-path", str(repo_dir)]
        argv.append(str(repo_dir))
        self.runner.run(argv, timeout=3600)
        self._carry_extra_metadata(served, new_meta / "repodata")
        repodata.repack(new_meta, repo_dir)  # a no-op where extra metadata was carried over

    def _carry_extra_metadata(self, served: Path, new: Path) -> None:
        """Updateinfo, comps, modules... that someone added with modifyrepo_c stay in the repo.

        (createrepo_c's --keep-all-metadata does not carry them into a separate --outputdir.) The
        files go in as they are: ``--no-compress`` keeps compressed ones compressed and plain ones
        plain, so their checksums do not change."""
        for kind, (href, _) in sorted(repodata.served_records(served).items()):
            if kind in repodata.KINDS or kind.endswith(("_db", "_zck")):  # rebuilt by createrepo_c
                continue
            source = served / Path(href).name
            argv = ["modifyrepo_c", "--no-compress", "--mdtype", kind, str(source), str(new)]
            self.runner.run(argv, timeout=600)

    def _detach_sign(self, path: Path) -> None:
        asc = path.with_name(path.name + ".asc")
        self.runner.run(
            [
                "gpg",
                "--homedir",
                str(self.key.gnupghome),
                "--batch",
                "--yes",
                "--no-tty",
                "--local-user",
                self.key.fingerprint,
                "--armor",
                "--detach-sign",
                "--output",
                str(asc),
                str(path),
            ],
            timeout=120,
        )
        if not asc.exists() or asc.stat().st_size == 0:
            raise CommandFailed(f"gpg wrote no signature for {path}")

    def _prune_old_metadata(self, repo_dir: Path, keep: set[str]) -> None:
        olds = sorted(
            (p for p in repo_dir.glob(".meta-*") if p.name not in keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in olds[KEEP_OLD_METADATA:]:
            shutil.rmtree(old, ignore_errors=True)

    # -- publication records (publishers/publication_record.py) --------------------------------------

    def record(self, repo: str, distro: str, release: str, arch: str, record: PublicationRecord) -> Path:
        """Write ``record`` for its target into ``arch``'s directory (under the publish lock)."""
        repo_dir = self.repo_dir(repo, distro, release, arch)
        path = repo_dir / RECORDS_DIR / f"{slug_of(record.target)}.json"
        with self._locked(repo_dir):
            write_record(path, record)
        return path

    # -- client configuration -----------------------------------------------------------------------

    def repo_file_text(self, repo: str, distro: str, release: str) -> str:
        section = f"{repo}-{distro}{release}"
        return (
            f"[{section}]\n"
            f"name=Kiln {repo} for {distro} {release} ($basearch)\n"
            f"baseurl={self.base_url}/{repo}/{distro}/{release}/$basearch/\n"
            "enabled=1\n"
            "gpgcheck=1\n"
            "repo_gpgcheck=1\n"
            f"gpgkey={self.key.public_key_url}\n"
        )

    def _write_repo_file(self, repo: str, distro: str, release: str) -> Path:
        path = self.root / repo / f"{repo}-{distro}{release}.repo"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.repo_file_text(repo, distro, release))
        tmp.replace(path)
        return path


# --- the route ------------------------------------------------------------------------------------


class RepoRoute(Route):
    """Rebuilt RPMs (and their SRPMs) to a signed yum repository, then its mirror (S3, rsync).

    Once a target's packages and metadata are served (its arch directory, then ``source``), a
    publication record (publishers/publication_record.py) goes into the arch directory's
    ``kiln-published/<target slug>.json``: what :meth:`published_at` reads back over HTTP."""

    name = "repo"
    destination = "the RPM repo"

    def publish(self, items: list[Routed], publishers: Publishers, on_step: Step) -> list[Publication]:
        out = []
        for item in items:
            manifest, repo = item.manifest, item.settings.repo
            if repo is None:
                continue
            place = _place_of(repo, item.facts, manifest.release)
            arch = Arch.parse(manifest.arch).rpm
            groups = {
                arch: [a for a in manifest.artifacts if a.type == "rpm"],
                "source": [a for a in manifest.artifacts if a.type == "srpm"],
            }
            publisher = publishers.repo()
            results: list[RepoResult] = []
            files: list[str] = []
            for arch_dir, artifacts in groups.items():
                if not artifacts:
                    continue
                on_step(f"repo: {manifest.target} -> {'/'.join(place)}/{arch_dir}")
                result = publisher.publish(
                    [manifest.path_of(a) for a in artifacts],
                    repo=place[0],
                    distro=place[1],
                    release=place[2],
                    arch=arch_dir,
                )
                on_step(f"repo: metadata {result.metadata_update} ({result.metadata_dir})")
                # the provenance beside each package
                for artifact, placed in zip(artifacts, result.packages, strict=False):
                    copy_beside(manifest.path_of(artifact), result.repo_dir / placed)
                results.append(result)
                files += [f"{arch_dir}/{placed}" for placed in result.packages]
                url = f"{publisher.base_url}/{result.repo_dir.relative_to(publisher.root).as_posix()}/"
                out += [Publication(manifest.target, a.name, "repo", url) for a in artifacts]
            # Last: the record says the whole publish is served (a publish killed before it is redone).
            publisher.record(*place, arch, PublicationRecord.now(manifest.target, manifest.digest, files))
            mirror = publishers.mirror()
            for result in results if mirror is not None else ():
                on_step(f"mirror: {result.repo_dir}")
                mirror.sync(result.repo_dir, result.repo_dir.relative_to(publisher.root).as_posix())
                # a client pointed at the mirror needs the .repo file and the key from there too
                mirror.sync_client_files(_client_files(publisher, result))
        return out

    def rename_for_candidate(self, identity: Any, data: dict[str, Any], candidate: Candidate) -> None:
        if data.get("repo") is not None:
            data["repo"]["repo"] = data["repo"]["repo"] + candidate.repo_suffix

    def destination_key(self, target: TargetLike) -> str | None:
        repo = getattr(target.publish, "repo", None)
        return repo.repo if repo is not None else None

    def published_at(
        self,
        target: TargetLike,
        publishers: Publishers,
        candidate: Candidate | None = None,
        facts: Facts = NO_FACTS,
    ) -> Found | None:
        """The target's publication record, served from its arch directory, names its id and input
        digest (the record is written after the packages and metadata of every directory)."""
        repo = self.settings_for(target, target.publish, candidate).repo
        if repo is None:
            return None
        place = _place_of(repo, facts, target.release)
        url, record = publishers.served_repo().published(*place, target.arch.rpm, target.id)
        if record is None or not record.names(target.id, target.digest):
            return None
        return Found(url, record.published_at)


def _place_of(repo: Any, facts: Facts, release: str) -> tuple[str, str, str]:
    """(repo, distro, release) of a target's packages: the layout's distro, else the kind's."""
    return (repo.repo, repo.layout_distro or facts.distro or "el", facts.os_release or release)


def _client_files(publisher: RepoPublisher, result: RepoResult) -> list[tuple[Path, str]]:
    """(local file, path relative to the repo root) of the .repo file and the public key."""
    key_name = str(publisher.key.public_key_url).rsplit("/", 1)[-1]
    return [
        (result.repo_file, result.repo_file.relative_to(publisher.root).as_posix()),
        (publisher.root / key_name, key_name),
    ]


REPO = RepoRoute()
