"""diskimage-builder: the rendered ``disk-image-create`` command of a guest image target.

Everything recipe-derived comes from the rendered files (``build.json``'s argv, ``dib.env``);
everything site-derived (mirrors, CA certificates, caches, host shims) is added by ``plan`` from
the site settings and the host facts, so that the target's digest does not depend on the site.
``plan`` is pure (it reads the rendered bytes, site settings and host facts it is given, and the
host's apt sources for the default mirror); ``run`` writes the shims and CA copies, takes the
per-arch cache lock, runs DIB and cleans up after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arch import Arch
from ..errors import InvalidInput, Problem
from ..host import compat as hostcompat
from ..manifest import Artifact
from .base import (
    BuildJob,
    BuildRun,
    Command,
    ExpectedOutput,
    Step,
    clear_outputs,
    collect_outputs,
    place_copies,
    run_command,
)

if TYPE_CHECKING:
    from ..host.run import Runner

BUILD_TIMEOUT_S = 3 * 3600  # a ppc64el build under emulation takes ~15 min here; leave room
DEFAULT_CA_CERTIFICATES = "/usr/local/share/ca-certificates/*.crt"

# The distro element DIB starts from, per distro.
DISTRO_ELEMENTS = {
    "debian": "debian-minimal",
    "ubuntu": "ubuntu-minimal",
    "centos": "centos",
    "rocky": "rocky-container",
    "almalinux": "almalinux-container",
    "fedora": "fedora",
}


def kiln_elements(build: Any, arch: Arch) -> list[str]:
    """Kiln's own DIB elements (from elements/) that every DIB-based build gets."""
    if arch is Arch.PPC64LE and getattr(build, "distro", "") in ("debian", "ubuntu"):
        return ["kiln-extra-ca", "kiln-ppc64le-boot"]
    return ["kiln-extra-ca"]


def parse_env_file(text: str, where: str = "dib.env") -> dict[str, str]:
    """``KEY=shell-quoted value`` lines, as rendered by templates/dib/environment.j2."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise InvalidInput(Problem(f"{where}:{number}: not a KEY=value line ({exc})")) from None
        if len(words) != 1 or "=" not in words[0]:
            raise InvalidInput(Problem(f"{where}:{number}: not a KEY=value line"))
        key, _, value = words[0].partition("=")
        env[key] = value
    return env


def read_env_file(path: Path) -> dict[str, str]:
    return parse_env_file(path.read_text(), str(path))


def extra_ca_files(patterns: list[str]) -> list[Path]:
    """The site's extra CA certificates (globs; default: the host's local CA directory)."""
    chosen = patterns or [DEFAULT_CA_CERTIFICATES]
    return [Path(f) for pattern in chosen for f in sorted(glob.glob(os.path.expanduser(pattern)))]


def dib_cache(cache_dir: Path, arch: Arch) -> Path:
    # One cache per architecture: DIB bind-mounts its apt cache into the chroot, and apt in two
    # chroots sharing it fails on its lock ("Could not get lock /var/cache/apt/archives/lock").
    return cache_dir / "dib" / arch.debian


def plan_command(
    rendered: dict[str, bytes] | Any, out_dir: Path, site_env: dict[str, str]
) -> tuple[Command, tuple[ExpectedOutput, ...]]:
    """The disk-image-create command and the images it writes, from the rendered files."""
    spec = json.loads(rendered["build.json"])
    argv = [str(a) for a in spec["argv"]]
    output_stem = Path(argv[argv.index("-o") + 1])  # relative to out_dir, e.g. image/<slug>
    env = {**parse_env_file(rendered[spec["env_file"]].decode()), **site_env}
    formats = spec.get("formats", ["qcow2"])
    outputs = tuple(
        ExpectedOutput(
            out_dir / f"{output_stem}.{fmt}",
            f"image-{fmt}" if len(formats) > 1 else "image",
            "disk-image",
            fmt,
        )
        for fmt in formats
    )
    command = Command(
        tuple(argv),
        env,
        cwd=out_dir,
        timeout_s=BUILD_TIMEOUT_S,
        kill_grace_s=60,  # on SIGTERM, DIB's own traps unmount its chroot
        shown_env=("DIB_", "ELEMENTS", "KILN", "TMPDIR"),
    )
    return command, outputs


class DibBackend:
    tool = "disk-image-create"
    needs_host_adaptations = True  # device-mapper shims, sudo, binfmt: probed before planning

    def plan(self, job: BuildJob) -> BuildRun:
        site_env, copies, notes = self.site_environment(job)
        command, outputs = plan_command(job.rendered, job.out_dir, site_env)
        return BuildRun(self.tool, (command,), outputs, job.out_dir.parent, copies=copies, notes=notes)

    def site_environment(
        self, job: BuildJob
    ) -> tuple[dict[str, str], tuple[tuple[Path, Path], ...], tuple[str, ...]]:
        """What the site and host add to DIB's environment (mirrors, CA copies, caches, shims, PATH),
        the CA files to copy before the run, and what a dry run cannot know."""
        target, site = job.target, job.site
        ca_files = extra_ca_files(list(site.extra_ca_certificates))
        ca_dir = job.tmp_dir / "extra-ca"
        site_env = hostcompat.dib_environment(
            mirror=site.mirrors.debian,
            security_mirror=site.mirrors.debian_security,
            include_security=site.mirrors.include_security(target.arch),
            extra_ca_dir=ca_dir if ca_files else None,
            image_cache=dib_cache(job.cache_dir, target.arch),
            tmpdir=job.tmp_dir,
            release=target.release,
            debootstrap_cache=True,  # a base tarball per release/arch: ~25% faster warm builds
        )
        # disk-image-create lives next to the Python running Kiln (the venv), which need not be on PATH.
        host_path = os.environ.get("PATH", hostcompat.DEFAULT_SECURE_PATH)
        path = f"{Path(sys.executable).parent}{os.pathsep}{host_path}"
        shim_dir = self.shim_dir(job)
        if hostcompat.shim_scripts(shim_dir, list(job.host.adaptations)):
            path = f"{shim_dir}{os.pathsep}{path}"
        site_env["PATH"] = path
        site_env["ELEMENTS_PATH"] = str(job.elements_dir)
        copies = tuple((src, ca_dir / f"{i:02d}-{src.stem}.crt") for i, src in enumerate(ca_files))
        notes = (
            ()
            if job.host.probed
            else ("host adaptations (device-mapper shims, sudo) are detected at build time",)
        )
        return site_env, copies, notes

    @staticmethod
    def shim_dir(job: BuildJob) -> Path:
        return job.build_root / ".shims"

    def run(self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        shutil.rmtree(job.tmp_dir, ignore_errors=True)
        job.tmp_dir.mkdir(parents=True)
        hostcompat.prepare_shims(self.shim_dir(job), list(job.host.adaptations))
        place_copies(run)
        clear_outputs(run)
        [command] = run.commands
        progress = DibProgress(on_step)
        try:
            with cache_lock(dib_cache(job.cache_dir, job.target.arch), job.target.id, on_step):
                run_command(command, runner, log, on_line=progress.line)
        finally:
            for action in hostcompat.cleanup_after_interrupt(job.tmp_dir):
                on_step(f"cleanup: {action}")
            shutil.rmtree(job.tmp_dir, ignore_errors=True)
        return collect_outputs(run, log)

    def tool_versions(self, runner: Runner) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"diskimage-builder": version("diskimage-builder")}
        except PackageNotFoundError:
            return {"diskimage-builder": "unknown"}


@contextlib.contextmanager
def cache_lock(cache: Path, who: str, on_step: Step) -> Iterator[None]:
    """Builds of one architecture on one host take turns with its DIB cache; others run on."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".kiln-lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_step(f"{who}: waiting for another build using {cache}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- progress: DIB's phase and script lines ----------------------------------------------------------

# "dib-run-parts Running /tmp/dib_build.x/hooks/root.d/08-debootstrap" (timestamps may precede it)
_RUN_PARTS = re.compile(r"dib-run-parts Running \S*/([a-z0-9-]+)\.d/(\S+)")
_MILESTONES = (
    (re.compile(r"Building elements: (.*)"), "elements: {0}"),
    (re.compile(r"Converting image using qemu-img convert"), "converting the image (qemu-img)"),
    (re.compile(r"Image file (\S+) created"), "image written: {0}"),
)


def progress_message(line: str) -> str | None:
    """The progress worth showing in one line of DIB output: phase/script, or a milestone."""
    match = _RUN_PARTS.search(line)
    if match:
        return f"{match.group(1)}: {match.group(2)}"
    for pattern, text in _MILESTONES:
        found = pattern.search(line)
        if found:
            return text.format(*(g[:120] for g in found.groups()))
    return None


class DibProgress:
    """Turns DIB's output into progress steps: one per phase script, and the milestones."""

    def __init__(self, on_step: Step):
        self.on_step = on_step
        self.last: str | None = None

    def line(self, text: str) -> None:
        message = progress_message(text)
        if message is not None and message != self.last:
            self.last = message
            self.on_step(f"dib: {message}")
