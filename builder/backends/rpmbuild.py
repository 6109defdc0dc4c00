"""SRPM rebuilds in a ``debian-chroot`` root (builder/rpm/buildroot.py).

``plan`` (pure) gives the commands a dry run prints: bootstrap the cached root (skipped when it is
there), lay an overlay on it, then unpack, ``-bs`` and ``--rebuild`` inside it. ``run`` does, in
order, and stops at the first refusal:

1. fetch the SRPM (a download's size, time and sha256 are checked before anything else runs) and
   copy it under a name Kiln chooses;
2. rpm's own signature check against a private rpm database holding ``build.trusted_keys``
   (unless ``verify_signature: false``), decided by exit status, before anything is unpacked;
3. read its header (createrepo_c) and refuse an ExclusiveArch/ExcludeArch that rules the arch out;
4. map BuildRequires (table, recipe override, the published repo) — an unmapped one is refused;
5. ensure the cached root, overlay it, install the BuildRequires there (as root, from the Debian
   mirror and Kiln's own repo: nothing of the SRPM runs yet);
6. in the sandbox (builder/rpm/sandbox.py: nobody, no network, namespaces of its own, nothing of
   the host's filesystem): unpack the SRPM; Kiln reads the spec back without following links,
   changes it (builder/rpm/changes.py) and places it; the sandbox copies the recipe's patches into
   SOURCES, makes the changed SRPM with ``rpmbuild -bs`` and rebuilds it with ``--nodeps``, the
   rendered ``kiln.macros`` and a ``dist`` define; ``%check`` runs (its failure fails the build).
   Every spec macro, ``%(...)`` and ``%{lua:...}`` included, is evaluated there, never on the host.
   The packages are copied out as regular files only; /proc and the overlay are unmounted whatever
   happens.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.kind import Backend, BuildJob, BuildRun
from ..endpoints import local_endpoints, repo_base_url
from ..errors import CommandFailed, EnvironmentProblem, InvalidInput, Problem, RemoteDataError
from ..host.command import Command
from ..host.compat import NO_BINFMT, binfmt_adaptation
from ..host.run import tool_version
from ..manifest import Artifact, artifact_for
from ..rpm import buildroot
from ..rpm.brmap import map_build_requires
from ..rpm.changes import Changes, apply_changes, patch_failure
from ..rpm.credentials import RepoLogins
from ..rpm.sandbox import (
    INSIDE,
    copy_out,
    directories,
    give_to_sandbox,
    read_inside,
    regular_files,
    sandbox_argv,
)
from ..rpm.source import RepoNotFound, arch_refusal, download, fetch_source, read_header, repo_packages
from ..rpm.trust import check_signature
from ..rpm.versions import newest
from .base import Step, debian_mirror

if TYPE_CHECKING:
    from ..host.run import Runner

RPMBUILD_TIMEOUT_S = 4 * 3600
SOURCE_NAME = "source.src.rpm"  # the fetched SRPM as every tool sees it: never the upstream file name
SPEC_NAME = "package.spec"  # the changed spec, placed by Kiln in /kiln (not writable by the sandbox)
TOP = f"{INSIDE}/top"  # rpm's _topdir inside the root, owned by the sandbox user
MAX_SPEC_BYTES = 4 << 20  # a spec read back from the sandbox (the biggest real ones are ~200 KiB)
MAX_PACKAGE_BYTES = 8 << 30  # one package copied out of the sandbox


def dist_of(build: Any) -> str:
    if build.dist:
        return str(build.dist)
    return f".el{str(build.release).split('.')[0]}" if build.distro == "el" else f".fc{build.release}"


def _rendered_options(job: BuildJob) -> list[str]:
    """The rendered argv's options (``--target``, ``--without``, ``--nocheck``), ``--load`` in /kiln."""
    rendered = json.loads(job.rendered["build.json"])
    options = [a for a in rendered["argv"][1:] if a not in ("-ba", "SPECS/package.spec")]
    return [f"{INSIDE}/kiln.macros" if a == "kiln.macros" else a for a in options]


def _common_defines(build: Any) -> list[str]:
    return ["--define", f"_topdir {TOP}", "--define", f"dist {dist_of(build)}", *_defines(build)]


def unpack_argv() -> tuple[str, ...]:
    """``rpm -i`` of the fetched SRPM into _topdir (a database of its own: the root's stays as is)."""
    return ("rpm", "--dbpath", f"{INSIDE}/home/rpmdb", "--define", f"_topdir {TOP}", "-i",
            f"{INSIDE}/{SOURCE_NAME}")  # fmt: skip


def source_rpm_argv(job: BuildJob) -> tuple[str, ...]:
    """``rpmbuild -bs`` of the changed spec: the changed SRPM, in _topdir/SRPMS."""
    return ("rpmbuild", "--load", f"{INSIDE}/kiln.macros", *_common_defines(job.target.build), "--nodeps",
            "-bs", f"{INSIDE}/{SPEC_NAME}")  # fmt: skip


def rebuild_argv(job: BuildJob, srpm_name: str) -> tuple[str, ...]:
    """rpmbuild --rebuild of the changed SRPM: the rendered options, --nodeps, dist, the defines."""
    return (
        "rpmbuild", *_rendered_options(job), "--nodeps",
        *_common_defines(job.target.build),
        "--define", "debug_package %{nil}",
        "--define", "_build_id_links none",
        "--rebuild", f"{TOP}/SRPMS/{srpm_name}",
    )  # fmt: skip


def mock_argv(job: BuildJob, srpm: Path, result: Path) -> tuple[str, ...]:
    """mock with the rendered config; ``--forcearch`` when this host emulates the target arch."""
    build = job.target.build
    argv = [
        "mock",
        "-r",
        str(job.render_dir / "mock.cfg"),
        "--rebuild",
        str(srpm),
        "--resultdir",
        str(result),
    ]
    if job.host.placement == "emulated":
        argv += ["--forcearch", job.target.arch.rpm]
    for name in build.without:
        argv += ["--without", name]
    if not build.run_check:
        argv.append("--nocheck")
    return tuple(argv)


def _defines(build: Any) -> list[str]:
    out = []
    for name, value in sorted(build.defines.items()):
        out += ["--define", f"{name} {value}"]
    return out


def _repo_path(job: BuildJob) -> str:
    """This target's repo below the repo's base: ``<repo>/<distro>/<release>/<arch>/``."""
    build, publish = job.target.build, job.target.publish
    repo = publish.repo
    name = repo.repo if repo else "kiln"
    distro = (repo.layout_distro if repo else None) or build.distro
    return f"{name}/{distro}/{build.release}/{job.target.arch.rpm}/"


def repo_url(job: BuildJob) -> str:
    """Where this target's rebuilt packages are published (earlier builds' results are read there)."""
    return f"{repo_base_url(job.site, job.workspace_root)}/{_repo_path(job)}"


def embedded_repo_dir(job: BuildJob) -> Path | None:
    """The directory the embedded site serves this target's repo from, when that is where it is
    published (site.yaml's repo: the local backend, no URL of its own); None for any other repo."""

    site = job.site.repo
    if site.backend != "local" or site.base_url or (site.s3 and site.s3.public_url):
        return None
    return local_endpoints(job.site, job.workspace_root).repo_root / _repo_path(job)


class RpmbuildBackend(Backend):
    tool = "rpmbuild"
    needs_host_adaptations = False  # DIB's shims are not needed; binfmt is checked in run()

    def __init__(self) -> None:
        self.last_signature = ""

    def plan(self, job: BuildJob) -> BuildRun:
        spec = buildroot.RootSpec(job.target.arch)
        base = spec.directory(job.cache_dir)
        work_root = job.tmp_dir / "root"
        sandboxed = (unpack_argv(), source_rpm_argv(job))
        commands = [
            buildroot.bootstrap_command(spec, base, debian_mirror(job)),
            Command(buildroot.overlay_argv(base, work_root)),
            *(Command(sandbox_argv(work_root, argv), timeout_s=600) for argv in sandboxed),
        ]
        notes = [
            f"build root {base} is bootstrapped only when it is not cached",
            "the SRPM is fetched, its signature checked, then unpacked and built inside the root as nobody, "
            "without network; Kiln changes the spec between the unpack and rpmbuild -bs",
        ]
        if job.target.build.build_root == "mock":
            result = job.out_dir / "mock"
            commands.append(Command(mock_argv(job, Path("SRPM"), result), timeout_s=RPMBUILD_TIMEOUT_S))
            notes.append("mock runs only where it is on PATH (EL/Fedora hosts); not run in Kiln's CI")
        else:
            rebuild = sandbox_argv(work_root, rebuild_argv(job, "SRPM"))
            commands.append(Command(rebuild, timeout_s=RPMBUILD_TIMEOUT_S))
        return BuildRun(self.tool, tuple(commands), (), job.out_dir.parent, notes=tuple(notes))

    def run(self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        work = job.tmp_dir
        if not _unmount(work / "root", runner, log):
            raise CommandFailed(f"{work / 'root'}: still mounted from an earlier build; unmount it first")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.rmtree(job.out_dir, ignore_errors=True)
        try:
            return self._run(job, runner, log, on_step, work)
        finally:
            if _unmount(work / "root", runner, log):  # never delete through a mount point
                shutil.rmtree(work, ignore_errors=True)

    def _run(self, job: BuildJob, runner: Runner, log: Path, on_step: Step, work: Path) -> list[Artifact]:
        target, build, arch = job.target, job.target.build, job.target.arch
        if build.build_root == "mock" and shutil.which("mock") is None:
            raise EnvironmentProblem(
                f"{target.id}: build.build_root mock: mock is not on PATH (EL/Fedora build hosts only; "
                "use build_root: debian-chroot here)"
            )
        if job.host.placement == "emulated":
            binfmt = binfmt_adaptation(arch)
            if binfmt.name == NO_BINFMT:
                raise EnvironmentProblem(
                    f"{target.id}: {binfmt.reason} "
                    "(scripts/bootstrap.sh sets up binfmt_misc for qemu-user-static)"
                )
            on_step(f"{target.id}: rpm: {binfmt.reason}")
        on_step(f"{target.id}: rpm: source")
        logins = RepoLogins(tuple(job.site.login_urls()))  # a repo's login comes from site.yaml only
        fetched = fetch_source(build.source, job.workspace_root, work / "download", logins)
        srpm = work / SOURCE_NAME
        shutil.copyfile(fetched, srpm)
        if build.verify_signature:
            keys = [job.workspace_root / str(k) for k in build.trusted_keys]
            self.last_signature = check_signature(srpm, keys, runner, work / "trust", shown=fetched.name)
            on_step(f"{target.id}: rpm: {fetched.name}: signature OK ({len(keys)} trusted key(s))")
        else:
            self.last_signature = "not checked (build.verify_signature: false)"
            on_step(f"{target.id}: rpm: {fetched.name}: signature {self.last_signature}")
        header = read_header(srpm)
        refusal = arch_refusal(header, arch)
        if refusal:
            raise InvalidInput(Problem(f"{target.recipe_file}: build.source: {refusal}"))
        job.out_dir.mkdir(parents=True, exist_ok=True)
        (job.out_dir / "signature.txt").write_text(self.last_signature + "\n")

        url = repo_url(job)
        published: list[Any] = []
        mapped = None
        if build.build_root == "debian-chroot":  # mock installs BuildRequires itself, with dnf
            published = _published(url, logins, embedded_repo_dir(job))
            mapped = map_build_requires(
                header.build_requires,
                build.build_requires_map,
                {p for pkg in published for p in (pkg.name, *pkg.provides)},
                where=f"{target.recipe_file}: build.source ({header.nevr})",
            )

        # -- the root (its packages installed as root, from the Debian mirror and Kiln's repo) --------
        spec = buildroot.RootSpec(arch)
        on_step(f"{target.id}: rpm: build root {spec.directory(job.cache_dir).name}")
        base, fresh = buildroot.ensure_root(spec, job.cache_dir, debian_mirror(job), runner, log)
        on_step(f"{target.id}: rpm: build root {'bootstrapped' if fresh else 'cached'}")
        root = work / "root"
        if not buildroot.overlay_root(base, root, runner, log):
            buildroot.copy_root(base, root, runner, log)
        inside = root / INSIDE.lstrip("/")
        (inside / "patches").mkdir(parents=True)
        shutil.copyfile(srpm, inside / SOURCE_NAME)
        (inside / "kiln.macros").write_bytes(job.rendered["kiln.macros"])
        patch_names = []
        for patch in build.patches:
            source = job.workspace_root / str(patch)
            shutil.copyfile(source, inside / "patches" / source.name)
            patch_names.append(source.name)
        for argv in buildroot.mount_argvs(root):
            runner.run(argv, timeout=60, log_path=log)
        if mapped is not None:
            self._install_build_requires(
                job, mapped, spec, root, url, logins, published, runner, log, on_step
            )

        # -- the sandbox: everything that reads the SRPM or evaluates its spec -------------------------
        give_to_sandbox(inside / "top")
        give_to_sandbox(inside / "home")
        on_step(f"{target.id}: rpm: unpack {fetched.name} (sandbox)")
        runner.run(sandbox_argv(root, unpack_argv()), timeout=600, log_path=log)
        specs = regular_files(root, f"{INSIDE.lstrip('/')}/top/SPECS", ".spec")
        if len(specs) != 1:
            raise InvalidInput(Problem(f"{fetched.name}: holds {len(specs)} spec files, not one"))
        text = read_inside(root, f"{INSIDE.lstrip('/')}/top/SPECS/{specs[0]}", MAX_SPEC_BYTES)
        changes = Changes(
            str(build.release_suffix), tuple(patch_names), tuple(sorted(build.defines.items())),
            tuple(build.without), arch.rpm,
        )  # fmt: skip
        # surrogateescape: a spec in Latin-1 goes back byte for byte; only Kiln's lines are added.
        changed_spec = apply_changes(text.decode("utf-8", "surrogateescape"), changes, specs[0])
        (inside / SPEC_NAME).write_bytes(changed_spec.encode("utf-8", "surrogateescape"))
        for name in patch_names:
            runner.run(
                sandbox_argv(root, ["cp", "--", f"{INSIDE}/patches/{name}", f"{TOP}/SOURCES/{name}"]),
                timeout=60, log_path=log,
            )  # fmt: skip
        runner.run(sandbox_argv(root, source_rpm_argv(job)), timeout=600, log_path=log)
        made = regular_files(root, f"{TOP.lstrip('/')}/SRPMS", ".src.rpm")
        if len(made) != 1:
            raise CommandFailed(f"rpmbuild -bs made {len(made)} source packages, not one (log: {log})")
        sources = job.out_dir / "source"
        sources.mkdir(parents=True, exist_ok=True)
        changed = copy_out(root, f"{TOP.lstrip('/')}/SRPMS/{made[0]}", sources / made[0], MAX_PACKAGE_BYTES)
        on_step(f"{target.id}: rpm: {changed.name} (changed SRPM)")

        if mapped is None:
            return self._mock(job, changed, runner, log, on_step)

        on_step(f"{target.id}: rpm: rpmbuild --rebuild {changed.name} ({job.host.placement}, sandbox)")
        try:
            runner.run(
                sandbox_argv(root, rebuild_argv(job, changed.name)),
                timeout=RPMBUILD_TIMEOUT_S, log_path=log,
            )  # fmt: skip
        except CommandFailed as exc:
            raise CommandFailed(_why_rebuild_failed(str(exc), log)) from exc

        # -- artifacts: regular files only, copied without following a link ----------------------------
        artifacts: list[Artifact] = []
        binaries = job.out_dir / arch.rpm
        binaries.mkdir(parents=True, exist_ok=True)
        rpms_dir = f"{TOP.lstrip('/')}/RPMS"
        for sub in directories(root, rpms_dir):
            for name in regular_files(root, f"{rpms_dir}/{sub}", ".rpm"):
                copy_out(root, f"{rpms_dir}/{sub}/{name}", binaries / name, MAX_PACKAGE_BYTES)
                artifacts.append(artifact_for(job.out_dir.parent, binaries / name, name, "rpm"))
        if not artifacts:
            raise CommandFailed(f"rpmbuild --rebuild {changed.name} wrote no package (log: {log})")
        artifacts.append(artifact_for(job.out_dir.parent, changed, changed.name, "srpm"))
        return artifacts

    def _install_build_requires(
        self, job: BuildJob, mapped: Any, spec: buildroot.RootSpec, root: Path, url: str, logins: RepoLogins,
        published: list[Any], runner: Runner, log: Path, on_step: Step,
    ) -> None:  # fmt: skip
        """The mapped BuildRequires, as root with network: Debian packages, then Kiln's own RPMs."""
        target = job.target
        debs = [d for d in mapped.debian if d not in spec.packages]
        if debs:
            shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
            on_step(f"{target.id}: rpm: apt-get install {' '.join(debs)}")
            runner.run(buildroot.chroot_argv(root, ["apt-get", "update", "-q"]), timeout=1800, log_path=log)
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *debs]
            runner.run(
                buildroot.chroot_argv(root, install),
                env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=3600, log_path=log,
            )  # fmt: skip
        if mapped.from_repo:
            inside = root / INSIDE.lstrip("/")
            rpms = _download_from_repo(url, logins, published, mapped.from_repo, inside / "deps")
            on_step(f"{target.id}: rpm: from the repo: {' '.join(p.name for p in rpms)}")
            runner.run(
                buildroot.chroot_argv(
                    root, ["rpm", "-i", "--nodeps", "--noscripts", *(f"{INSIDE}/deps/{p.name}" for p in rpms)]
                ),
                timeout=600, log_path=log,
            )  # fmt: skip

    def _mock(self, job: BuildJob, changed: Path, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        """``build_root: mock`` (EL hosts): the changed SRPM (made in Kiln's sandbox, like every other
        build's) rebuilt by mock with the rendered config, in mock's own chroot."""
        result = job.out_dir / "mock"
        on_step(f"{job.target.id}: rpm: mock --rebuild {changed.name}")
        try:
            runner.run(mock_argv(job, changed, result), timeout=RPMBUILD_TIMEOUT_S, log_path=log)
        except CommandFailed as exc:
            raise CommandFailed(_why_rebuild_failed(str(exc), log)) from exc
        artifacts = []
        for rpm in sorted(result.glob("*.rpm")):
            kind = "srpm" if rpm.name.endswith(".src.rpm") else "rpm"
            artifacts.append(artifact_for(job.out_dir.parent, rpm, rpm.name, kind))  # type: ignore[arg-type]
        return artifacts

    def tool_versions(self, runner: Runner) -> dict[str, str]:

        return {
            "rpmbuild": tool_version(["rpmbuild", "--version"], runner),
            "srpm-signature": self.last_signature,
        }


def _published(url: str, logins: RepoLogins, served_from: Path | None = None) -> list[Any]:
    """The packages published at ``url`` (this target's repo): none when there is no repo there yet
    (its repomd.xml is HTTP 404, or, for the embedded site's repo (``served_from``), not in its tree,
    whether the site is up or not). Anything else (a server error or none answering, metadata over a
    limit or tampered with) fails the build, exit 4 naming the URL: it is not an empty repo."""
    if served_from is not None and not (served_from / "repodata" / "repomd.xml").exists():
        return []
    try:
        return repo_packages(url, logins=logins)
    except RepoNotFound:
        return []
    except RemoteDataError as exc:
        if served_from is None or exc.http_status is not None:
            raise
        raise RemoteDataError(f"{exc.what}; the local site serves it (kiln site up)", exc.url) from None


def _download_from_repo(
    url: str, logins: RepoLogins, published: list[Any], names: tuple[str, ...], into: Path
) -> list[Path]:

    out = []
    for name in names:
        matching = [p for p in published if p.arch != "src" and (p.name == name or name in p.provides)]
        best = newest(matching)
        out.append(
            download(url + best.href, into / Path(best.href).name, checksum=best.checksum, logins=logins)
        )
    return out


def _why_rebuild_failed(error: str, log: Path) -> str:
    try:
        text = log.read_text(errors="replace")[-200_000:]
    except OSError:
        text = error
    patch = patch_failure(text)
    if patch:
        return f"patch {patch} does not apply (log: {log})"
    if re.search(r"Bad exit status from \S+ \(%check\)", text):
        return f"%check failed: the package's own tests did not pass (log: {log})"
    return error


def _unmount(root: Path, runner: Runner, log: Path) -> bool:
    """Unmount what a build mounted in its root; True when nothing is mounted there any more."""
    clean = True
    for point in buildroot.mount_points(root):
        if point.exists() and runner.capture(["mountpoint", "-q", str(point)]).ok:
            runner.run(["umount", str(point)], timeout=60, log_path=log, check=False)
            clean = clean and not runner.capture(["mountpoint", "-q", str(point)]).ok
    return clean
