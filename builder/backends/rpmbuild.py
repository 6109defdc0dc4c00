"""SRPM rebuilds in a ``debian-chroot`` root (builder/rpm/buildroot.py).

``plan`` (pure) gives the commands a dry run prints: bootstrap the cached root (skipped when it is
there), copy it, rpmbuild --rebuild inside it. ``run`` does, in order, and stops at the first refusal:

1. fetch the SRPM (a download's sha256 is checked before anything else runs);
2. read its header (createrepo_c) and refuse an ExclusiveArch/ExcludeArch that rules the arch out;
3. ``rpmkeys --checksig`` against a private rpm database holding ``build.trusted_keys`` (unless
   ``verify_signature: false``), before anything is unpacked;
4. map BuildRequires (table, recipe override, the published repo) — an unmapped one is refused;
5. unpack, change the spec (builder/rpm/changes.py), ``rpmbuild -bs``: the modified SRPM;
6. ensure the cached root, copy it, install the BuildRequires, and rebuild the modified SRPM there
   with ``--nodeps``, the rendered ``kiln.macros`` and a ``dist`` define; ``%check`` runs (its
   failure fails the build); /proc and /dev are unmounted whatever happens.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CommandFailed, EnvironmentProblem, InvalidInput, Problem
from ..manifest import Artifact, artifact_for
from ..rpm import buildroot
from ..rpm.brmap import map_build_requires
from ..rpm.changes import Changes, apply_changes, patch_failure
from ..rpm.source import arch_refusal, fetch_source, read_header, repo_packages
from ..rpm.trust import check_signature
from .base import BuildJob, BuildRun, Command, Step, debian_mirror

if TYPE_CHECKING:
    from ..host.run import Runner

RPMBUILD_TIMEOUT_S = 4 * 3600
INSIDE = "/kiln"  # where the build's files are placed inside the root


def dist_of(build: Any) -> str:
    if build.dist:
        return str(build.dist)
    return f".el{str(build.release).split('.')[0]}" if build.distro == "el" else f".fc{build.release}"


def rebuild_argv(job: BuildJob, srpm_name: str) -> tuple[str, ...]:
    """rpmbuild inside the root: the rendered argv's options, --nodeps, dist, --rebuild."""
    rendered = json.loads(job.rendered["build.json"])
    options = [a for a in rendered["argv"][1:] if a not in ("-ba", "SPECS/package.spec")]
    options = [f"{INSIDE}/kiln.macros" if a == "kiln.macros" else a for a in options]
    return (
        "rpmbuild", *options, "--nodeps",
        "--define", f"_topdir {INSIDE}/top",
        "--define", f"dist {dist_of(job.target.build)}",
        "--define", "debug_package %{nil}",
        "--define", "_build_id_links none",
        *_defines(job.target.build),
        "--rebuild", f"{INSIDE}/{srpm_name}",
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


def repo_url(job: BuildJob) -> str:
    """Where this target's rebuilt packages are published (earlier builds' results are read there)."""
    from ..endpoints import local_endpoints

    site = job.site.repo
    base = site.base_url or (
        site.s3.public_url
        if site.s3 and site.s3.public_url
        else local_endpoints(job.site, job.workspace_root).urls.repo
    )
    build, publish = job.target.build, job.target.publish
    repo = publish.repo
    name = repo.repo if repo else "kiln"
    distro = (repo.layout_distro if repo else None) or build.distro
    return f"{str(base).rstrip('/')}/{name}/{distro}/{build.release}/{job.target.arch.rpm}/"


class RpmbuildBackend:
    tool = "rpmbuild"
    needs_host_adaptations = False  # DIB's shims are not needed; binfmt is checked in run()

    def __init__(self) -> None:
        self.last_signature = ""

    def plan(self, job: BuildJob) -> BuildRun:
        if job.target.build.build_root == "mock":
            result = job.out_dir / "mock"
            command = Command(mock_argv(job, Path("SRPM"), result), timeout_s=RPMBUILD_TIMEOUT_S)
            notes = ("mock runs only where it is on PATH (EL/Fedora hosts); not run in Kiln's CI",)
            return BuildRun(self.tool, (command,), (), job.out_dir.parent, notes=notes)
        spec = buildroot.RootSpec(job.target.arch)
        base = spec.directory(job.cache_dir)
        work_root = job.tmp_dir / "root"
        commands = (
            buildroot.bootstrap_command(spec, base, debian_mirror(job)),
            Command(buildroot.overlay_argv(base, work_root)),
            Command(
                buildroot.chroot_argv(work_root, rebuild_argv(job, "SRPM")), timeout_s=RPMBUILD_TIMEOUT_S
            ),
        )
        notes = (
            f"build root {base} is bootstrapped only when it is not cached",
            "the SRPM is fetched, its signature checked and its spec changed before the rebuild",
        )
        return BuildRun(self.tool, commands, (), job.out_dir.parent, notes=notes)

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
        if job.host.placement == "emulated" and build.build_root == "debian-chroot":
            from ..host.compat import NO_BINFMT, _binfmt

            binfmt = _binfmt(arch)
            if binfmt.name == NO_BINFMT:
                raise EnvironmentProblem(
                    f"{target.id}: {binfmt.reason} "
                    "(scripts/bootstrap.sh sets up binfmt_misc for qemu-user-static)"
                )
            on_step(f"{target.id}: rpm: {binfmt.reason}")
        on_step(f"{target.id}: rpm: source")
        srpm = fetch_source(build.source, job.workspace_root, work / "download")
        header = read_header(srpm)
        refusal = arch_refusal(header, arch)
        if refusal:
            raise InvalidInput(Problem(f"{target.recipe_file}: build.source: {refusal}"))
        if build.verify_signature:
            keys = [job.workspace_root / str(k) for k in build.trusted_keys]
            self.last_signature = check_signature(srpm, keys, runner, work, log)
            on_step(f"{target.id}: rpm: {srpm.name}: signature OK ({len(keys)} trusted key(s))")
        else:
            self.last_signature = "not checked (build.verify_signature: false)"
            on_step(f"{target.id}: rpm: {srpm.name}: signature not checked (build.verify_signature: false)")
        (job.out_dir).mkdir(parents=True, exist_ok=True)
        (job.out_dir / "signature.txt").write_text(self.last_signature + "\n")

        url = repo_url(job)
        published: list[Any] = []
        mapped = None
        if build.build_root == "debian-chroot":  # mock installs BuildRequires itself, with dnf
            published = _published(url)
            mapped = map_build_requires(
                header.build_requires,
                build.build_requires_map,
                {p for pkg in published for p in (pkg.name, *pkg.provides)},
                where=f"{target.recipe_file}: build.source ({header.nevr})",
            )

        # -- the changed SRPM --------------------------------------------------------------------
        top = work / "top"
        runner.run(
            ["rpm", "--dbpath", str(work / "unpackdb"), "--define", f"_topdir {top}", "-i", str(srpm)],
            timeout=300, log_path=log,
        )  # fmt: skip
        specs = sorted((top / "SPECS").glob("*.spec"))
        if len(specs) != 1:
            raise InvalidInput(Problem(f"{srpm.name}: holds {len(specs)} spec files, not one"))
        patch_names = []
        for patch in build.patches:
            source = job.workspace_root / str(patch)
            shutil.copy2(source, top / "SOURCES" / source.name)
            patch_names.append(source.name)
        changes = Changes(
            str(build.release_suffix), tuple(patch_names), tuple(sorted(build.defines.items())),
            tuple(build.without), arch.rpm,
        )  # fmt: skip
        specs[0].write_text(apply_changes(specs[0].read_text(), changes, specs[0].name))
        (work / "kiln.macros").write_bytes(job.rendered["kiln.macros"])
        runner.run(
            ["rpmbuild", "--load", str(work / "kiln.macros"), "--define", f"_topdir {top}",
             "--define", f"dist {dist_of(build)}", *_defines(build), "--nodeps", "-bs", str(specs[0])],
            timeout=600, log_path=log,
        )  # fmt: skip
        [changed] = sorted((top / "SRPMS").glob("*.src.rpm"))
        on_step(f"{target.id}: rpm: {changed.name} (changed SRPM)")

        if mapped is None:
            return self._mock(job, changed, runner, log, on_step)

        # -- the root ----------------------------------------------------------------------------
        spec = buildroot.RootSpec(arch)
        mirror = debian_mirror(job)
        on_step(f"{target.id}: rpm: build root {spec.directory(job.cache_dir).name}")
        base, fresh = buildroot.ensure_root(spec, job.cache_dir, mirror, runner, log)
        on_step(f"{target.id}: rpm: build root {'bootstrapped' if fresh else 'cached'}")
        root = work / "root"
        if not buildroot.overlay_root(base, root, runner, log):
            buildroot.copy_root(base, root, runner, log)
        inside = root / INSIDE.lstrip("/")
        inside.mkdir(parents=True)
        shutil.copy2(changed, inside / changed.name)
        shutil.copy2(work / "kiln.macros", inside / "kiln.macros")
        for argv in buildroot.mount_argvs(root):
            runner.run(argv, timeout=60, log_path=log)
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
            rpms = _download_from_repo(url, published, mapped.from_repo, inside / "deps")
            on_step(f"{target.id}: rpm: from the repo: {' '.join(p.name for p in rpms)}")
            runner.run(
                buildroot.chroot_argv(
                    root, ["rpm", "-i", "--nodeps", "--noscripts", *(f"{INSIDE}/deps/{p.name}" for p in rpms)]
                ),
                timeout=600, log_path=log,
            )  # fmt: skip
        on_step(f"{target.id}: rpm: rpmbuild --rebuild {changed.name} ({job.host.placement})")
        try:
            runner.run(
                buildroot.chroot_argv(root, rebuild_argv(job, changed.name)),
                timeout=RPMBUILD_TIMEOUT_S, log_path=log,
            )  # fmt: skip
        except CommandFailed as exc:
            raise CommandFailed(_why_rebuild_failed(str(exc), log)) from exc

        # -- artifacts ---------------------------------------------------------------------------
        artifacts: list[Artifact] = []
        binaries = job.out_dir / arch.rpm
        binaries.mkdir(parents=True, exist_ok=True)
        for rpm in sorted((inside / "top" / "RPMS").glob("*/*.rpm")):
            shutil.copy2(rpm, binaries / rpm.name)
            artifacts.append(artifact_for(job.out_dir.parent, binaries / rpm.name, rpm.name, "rpm"))
        if not artifacts:
            raise CommandFailed(f"rpmbuild --rebuild {changed.name} wrote no package (log: {log})")
        sources = job.out_dir / "source"
        sources.mkdir(parents=True, exist_ok=True)
        shutil.copy2(changed, sources / changed.name)
        artifacts.append(artifact_for(job.out_dir.parent, sources / changed.name, changed.name, "srpm"))
        return artifacts

    def _mock(self, job: BuildJob, changed: Path, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        """``build_root: mock`` (EL hosts): mock with the rendered config; refused where mock is absent."""
        if shutil.which("mock") is None:
            raise EnvironmentProblem(
                f"{job.target.id}: build.build_root mock: mock is not on PATH (EL/Fedora build hosts only; "
                "use build_root: debian-chroot here)"
            )
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
        from ..host.run import tool_version

        return {
            "rpmbuild": tool_version(["rpmbuild", "--version"], runner),
            "srpm-signature": self.last_signature,
        }


def _published(url: str) -> list[Any]:
    try:
        return repo_packages(url)
    except CommandFailed:
        return []  # nothing published there yet


def _download_from_repo(url: str, published: list[Any], names: tuple[str, ...], into: Path) -> list[Path]:
    from ..rpm.source import download
    from ..rpm.versions import newest

    out = []
    for name in names:
        matching = [p for p in published if p.arch != "src" and (p.name == name or name in p.provides)]
        best = newest(matching)
        out.append(download(url + best.href, into / Path(best.href).name, checksum=best.checksum))
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
