"""``kiln build``: render, build, verify and (optionally) publish targets, recording each step.

Per target, under ``.kiln/build/<slug>/``: ``render/`` (the rendered files), ``out/`` (artifacts),
``logs/`` (one log per step), ``manifest.json`` (what was built) and ``verify.xml`` (JUnit).

A target whose digest already has a successful build with its artifacts on disk is not built
again; when its artifacts are also recorded as published, the whole target is skipped without
contacting any service.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch import Arch
from .errors import CommandFailed, EnvironmentProblem, InvalidInput, Problem
from .ledger import Ledger, TargetState
from .manifest import BuildManifest, read_manifest
from .render import render_target, write_rendered
from .run import Runner
from .siteconfig import SiteConfig
from .targets import Target
from .workspace import Workspace

BUILDABLE = {("guest-image", "dib"), ("guest-image", "packer")}


class DryRun(Exception):
    """Raised after a --dry-run printed a target's commands: nothing was built."""


@dataclass
class Outcome:
    target: str
    status: str  # built, reused, skipped, failed
    seconds: float = 0.0
    manifest: str | None = None
    verified: bool | None = None
    published: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def buildable(target: Target) -> bool:
    return (target.kind, target.build.get("builder", "")) in BUILDABLE


class Builder:
    def __init__(
        self,
        workspace: Workspace,
        site: SiteConfig,
        ledger: Ledger,
        *,
        runner: Runner | None = None,
        on_step: Callable[[str], None] = lambda _: None,
        build_root: Path | None = None,
    ):
        self.workspace = workspace
        self.site = site
        self.ledger = ledger
        self.runner = runner or Runner()
        self.on_step = on_step
        env_root = os.environ.get("KILN_BUILD_ROOT")
        self.build_root = build_root or (Path(env_root) if env_root else workspace.root / ".kiln" / "build")
        self.cache = Path.home() / ".cache" / "kiln"

    def target_dir(self, target: Target) -> Path:
        return self.build_root / target.slug

    # -- one target -------------------------------------------------------------------------------------

    def existing_manifest(self, target: Target) -> BuildManifest | None:
        """The manifest of an earlier successful build of this exact digest, artifacts intact."""
        path = self.target_dir(target) / "manifest.json"
        if self.ledger.state(target.id, target.digest) is not TargetState.UP_TO_DATE or not path.exists():
            return None
        try:
            manifest = read_manifest(path)
        except InvalidInput:
            return None
        if manifest.digest != target.digest:
            return None
        for artifact in manifest.artifacts:
            file = manifest.path_of(artifact)
            if not file.exists() or file.stat().st_size != artifact.size:
                return None
        return manifest

    def build(self, target: Target) -> BuildManifest:
        if not buildable(target):
            raise InvalidInput(
                Problem(
                    f"{target.id}: kiln build does not build {target.kind}"
                    f"{' with ' + target.build['builder'] if 'builder' in target.build else ''} yet"
                )
            )
        host = _host_arch()
        placement = self.site.placement(target.arch, host)  # refuses before anything is written
        self.on_step(f"{target.id}: {placement} on this {host.value} host")
        directory = self.target_dir(target)
        render_dir, out_dir, logs = directory / "render", directory / "out", directory / "logs"
        shutil.rmtree(render_dir, ignore_errors=True)
        write_rendered(render_target(target, self.workspace.templates_dir), render_dir)
        log = logs / f"build-{time.strftime('%Y%m%dT%H%M%S')}.log"
        build_id = self.ledger.start_build(target, log_path=str(log))
        try:
            artifacts, tools = self._run_backend(target, render_dir, out_dir, log)
        except DryRun:
            self.ledger.finish_build(build_id, "cancelled", error="dry run")
            raise
        except BaseException as exc:
            status = "cancelled" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
            self.ledger.finish_build(build_id, status, error=str(exc)[:4000])
            raise
        manifest = BuildManifest(
            target=target.id,
            recipe=target.recipe,
            kind=target.kind,
            arch=target.arch.value,
            release=target.release,
            variant=target.variant,
            digest=target.digest,
            artifacts=tuple(_rebase(a, out_dir, directory) for a in artifacts),
            publish=target.publish,
            build=target.build,
            build_id=build_id,
            source_commit=_source_commit(self.workspace.root),
            base_dir=directory,
        )
        manifest.write(directory / "manifest.json")
        self.ledger.finish_build(
            build_id,
            "succeeded",
            tool_versions=tools,
            artifacts=[(a.name, str(manifest.path_of(a)), a.sha256, a.size) for a in manifest.artifacts],
        )
        return manifest

    def _run_backend(
        self, target: Target, render_dir: Path, out_dir: Path, log: Path
    ) -> tuple[list[Any], dict]:
        if target.build.get("builder") == "packer":
            return self._run_packer(target, render_dir, out_dir, log)
        return self._run_dib(target, render_dir, out_dir, log)

    def dependency_manifest(self, target: Target, dependency_id: str) -> BuildManifest:
        """The manifest of a target this one builds on: it must have been built (and kept) here."""
        path = self.build_root / slug_of(dependency_id) / "manifest.json"
        try:
            return read_manifest(path)
        except InvalidInput:
            raise InvalidInput(
                Problem(
                    f"{target.id} builds on {dependency_id}, which has no build here yet: "
                    f"run `kiln build {dependency_id.split(':')[0]} --arch {target.arch.value}` first"
                )
            ) from None

    def _run_packer(
        self, target: Target, render_dir: Path, out_dir: Path, log: Path
    ) -> tuple[list[Any], dict]:
        from .backends import packer
        from .verify.boot import choose_accelerator

        base_image = None
        for dependency in target.depends_on:
            base = self.dependency_manifest(target, dependency)
            base_image = next(base.path_of(a) for a in base.artifacts if a.format == "qcow2")
        key = render_dir / "ssh" / "id_ed25519"
        key.parent.mkdir(parents=True, exist_ok=True)
        self.runner.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kiln-{target.slug}", "-f", str(key)]
        )
        public = key.with_suffix(".pub")
        packer.write_seed(render_dir, public.read_text().strip() if public.exists() else "(dry run)")
        run = packer.plan_run(
            render_dir,
            out_dir,
            slug=target.slug,
            fmt=str(target.build.get("formats", ["qcow2"])[0]),
            base_image=base_image,
            workspace_root=self.workspace.root,
            accelerator=choose_accelerator(target.arch),
            ssh_private_key=key,
            cache_dir=self.cache,
        )
        self.on_step(f"{target.id}: packer build (log: {log})")
        if self.runner.dry_run:
            self.runner.run(run.argv, cwd=run.cwd, env=run.env)
            raise DryRun()
        try:
            artifacts = packer.run_build(run, self.runner, log, self.on_step)
        finally:
            shutil.rmtree(key.parent, ignore_errors=True)  # the key was for this build only
        return artifacts, {"packer": _tool_version(["packer", "version"])}

    def _run_dib(self, target: Target, render_dir: Path, out_dir: Path, log: Path) -> tuple[list[Any], dict]:
        from . import hostcompat
        from .backends import dib

        adaptations = hostcompat.detect([target.arch.value])
        for adaptation in adaptations:
            self.on_step(f"host: {adaptation.name}: {adaptation.reason}")
        blocking = [a for a in adaptations if a.name in hostcompat.BLOCKING]
        if blocking:
            raise EnvironmentProblem(
                "; ".join(f"{a.name}: {a.reason}" for a in blocking)
                + " (scripts/bootstrap.sh sets up binfmt_misc for qemu-user-static)"
            )
        tmpdir = self.build_root / ".tmp" / target.slug
        shutil.rmtree(tmpdir, ignore_errors=True)
        tmpdir.mkdir(parents=True)
        site_env = hostcompat.dib_environment(
            mirror=self.site.mirrors.debian,
            security_mirror=self.site.mirrors.debian_security,
            include_security=self.site.mirrors.include_security(target.arch),
            extra_ca_dir=_extra_ca_dir(self.site, tmpdir),
            image_cache=self._dib_cache(target),
            tmpdir=tmpdir,
            release=target.release,
            debootstrap_cache=True,  # a base tarball per release/arch: ~25% faster warm builds
        )
        # disk-image-create lives next to the Python running Kiln (the venv), which need not be on PATH.
        tools_dir = str(Path(sys.executable).parent)
        site_env["PATH"] = f"{tools_dir}{os.pathsep}{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        shims = hostcompat.prepare_shims(self.build_root / ".shims", adaptations)
        if "PATH" in shims:
            site_env["PATH"] = f"{self.build_root / '.shims'}{os.pathsep}{site_env['PATH']}"
        site_env["ELEMENTS_PATH"] = str(self.workspace.elements_dir)
        run = dib.plan_run(render_dir, out_dir, site_env)
        self.on_step(f"{target.id}: disk-image-create (log: {log})")
        if self.runner.dry_run:
            self.runner.run(
                run.argv,
                cwd=run.cwd,
                env={k: v for k, v in run.env.items() if k.startswith(("DIB_", "ELEMENTS", "KILN"))},
            )
            raise DryRun()
        try:
            with self._cache_lock(target):
                artifacts = dib.run_build(run, self.runner, log)
        finally:
            for action in hostcompat.cleanup_after_interrupt(tmpdir):
                self.on_step(f"cleanup: {action}")
            shutil.rmtree(tmpdir, ignore_errors=True)
        return artifacts, {"diskimage-builder": _version("diskimage-builder")}

    def _dib_cache(self, target: Target) -> Path:
        # One cache per architecture: DIB bind-mounts its apt cache into the chroot, and apt in two
        # chroots sharing it fails on its lock ("Could not get lock /var/cache/apt/archives/lock").
        return self.cache / "dib" / target.arch.debian

    @contextlib.contextmanager
    def _cache_lock(self, target: Target) -> Iterator[None]:
        """Builds of one architecture on one host take turns with its DIB cache; others run on."""
        cache = self._dib_cache(target)
        cache.mkdir(parents=True, exist_ok=True)
        with (cache / ".kiln-lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.on_step(
                    f"build: {target.id}: waiting for another {target.arch.value} build using {cache}"
                )
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def verify(self, target: Target, manifest: BuildManifest) -> bool:
        from .verify.boot import boot_check
        from .verify.junit import CaseResult, write_junit

        boot = (target.verify or {}).get("boot") or {}
        if not boot.get("enabled", True):
            return True
        image = next(manifest.path_of(a) for a in manifest.artifacts if a.format == "qcow2")
        self.on_step(f"verify: booting {target.id} (timeout {boot.get('timeout_s', 900)}s)")
        result = boot_check(
            image,
            target.arch,
            self.target_dir(target) / "verify",
            timeout_s=int(boot.get("timeout_s", 900)),
            memory_mb=int(boot.get("memory_mb", 1024)),
            checks=list(boot.get("checks") or []),
            ssh_user=str(target.build.get("ssh_username", "debian")),
            runner=self.runner,
        )
        marker_seen = result.passed or bool(result.checks)  # checks only run after the marker
        cases = [
            CaseResult(
                target.id,
                f"boot ({result.accelerator})",
                result.seconds,
                marker_seen,
                "" if marker_seen else result.reason,
                _tail(result.serial_log),
            )
        ]
        cases += [
            CaseResult(target.id, command, 0.0, ok, "" if ok else "exit non-zero", output)
            for command, ok, output in result.checks
        ]
        write_junit(self.target_dir(target) / "verify.xml", cases)
        if not result.passed:
            raise CommandFailed(
                f"{target.id}: verification failed: {result.reason} (serial log: {result.serial_log})"
            )
        return True


def _host_arch() -> Arch:
    try:
        return Arch.host()
    except ValueError as exc:  # a host Kiln's architecture table does not know (s390x, riscv64)
        raise EnvironmentProblem(f"this host: {exc}") from exc


def _rebase(artifact: Any, out_dir: Path, directory: Path) -> Any:
    from dataclasses import replace

    return replace(artifact, path=(out_dir / artifact.path).relative_to(directory).as_posix())


def _extra_ca_dir(site: SiteConfig, tmpdir: Path) -> Path | None:
    """Copy the site's extra CA certificates (globs) into one directory for the kiln-extra-ca element."""
    import glob

    patterns = site.extra_ca_certificates or ["/usr/local/share/ca-certificates/*.crt"]
    files = [Path(f) for pattern in patterns for f in sorted(glob.glob(os.path.expanduser(pattern)))]
    if not files:
        return None
    directory = tmpdir / "extra-ca"
    directory.mkdir(parents=True, exist_ok=True)
    for index, file in enumerate(files):
        shutil.copyfile(file, directory / f"{index:02d}-{file.stem}.crt")
    return directory


def slug_of(target_id: str) -> str:
    """``recipe:release[+variant]:arch`` -> the directory name Target.slug gives that target."""
    return target_id.replace("+", "_").replace(":", "_")


def _tool_version(argv: list[str]) -> str:
    import subprocess

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def _tool_version(argv: list[str]) -> str:
    import subprocess

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _source_commit(root: Path) -> str | None:
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (root / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
