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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arch import Arch
from ..core.kind import Backend, BuildJob, BuildRun, ExpectedOutput
from ..errors import InvalidInput, Problem
from ..host import compat as hostcompat
from ..host.command import Command
from ..manifest import Artifact
from . import dib_base
from .base import Step, clear_outputs, collect_outputs, place_copies, run_command, write_build_facts

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
    )
    return command, outputs


class DibBackend(Backend):
    tool = "disk-image-create"
    needs_host_adaptations = True  # device-mapper shims, sudo, binfmt: probed before planning

    def plan(self, job: BuildJob) -> BuildRun:
        site_env, copies, notes = self.site_environment(job)
        command, outputs = plan_command(job.rendered, job.out_dir, site_env)
        if base_cache_applies(job):
            command = replace(command, argv=(*command.argv, dib_base.ELEMENT))
            notes = (*notes, BASE_NOTE)
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
        compression = site.dib.qcow2_compression
        if compression == "none":
            site_env["COMPRESS_IMAGE"] = ""  # what disk-image-create -u sets
        elif compression == "zstd":
            site_env["QEMU_IMG_OPTIONS"] = "compression_type=zstd"
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
        image_cache = dib_cache(job.cache_dir, job.target.arch)
        spot = dib_base.spot_name(
            str(getattr(job.target.build, "distro", "")), job.target.release, job.target.arch
        )
        try:
            with cache_lock(image_cache, job.target.id, on_step):
                # Inside the lock: the spot (the tarball DIB starts from) is this build's alone.
                inputs = self.base_inputs(command)
                base = choose_base(job, command, inputs, image_cache, spot, runner, on_step)
                try:
                    run_command(replace(command, env={**command.env, **base.env}), runner, log, progress.line)
                except BaseException:
                    base.abandon()
                    raise
                finally:
                    dib_base.settle_spot(image_cache, spot)
                base.finish()
        finally:
            for action in hostcompat.cleanup_after_interrupt(job.tmp_dir):
                on_step(f"cleanup: {action}")
            shutil.rmtree(job.tmp_dir, ignore_errors=True)
        phases = progress.clock.durations()
        on_step(f"{job.target.id}: dib phases: {format_phases(phases)}")
        write_build_facts(job.out_dir, {"base": base.as_json(), "phases": phases})
        return collect_outputs(run, log)

    def base_inputs(self, command: Command) -> BaseInputs:
        """What of this build's command shapes its base tree (disk-image-create's own argv)."""
        elements, packages = elements_and_packages(command.argv)
        argv = list(command.argv)
        env = {"ARCH": argv[argv.index("-a") + 1]} if "-a" in argv else {}  # disk-image-create's export
        return BaseInputs(elements, packages, {**env, **command.env})

    def tool_versions(self, runner: Runner) -> dict[str, str]:

        try:
            return {"diskimage-builder": version("diskimage-builder")}
        except PackageNotFoundError:
            return {"diskimage-builder": "unknown"}


# --- the base tree (builder/backends/dib_base.py) --------------------------------------------------------

BASE_NOTE = "base tree: reused or recorded, decided at build time (site.yaml dib.base_cache)"


def base_cache_applies(job: BuildJob) -> bool:
    """Debian builds from debian-minimal, with the base cache switched on in site.yaml."""
    build = job.target.build
    return job.site.dib.base_cache.enabled and getattr(build, "distro", "") == "debian"


@dataclass(frozen=True)
class BaseInputs:
    """A build's elements (as disk-image-create gets them), its ``-p`` packages, the environment
    DIB starts from, and element directories beyond Kiln's (IPA's)."""

    elements: list[str]
    packages: list[str]
    env: dict[str, str]
    elements_path: str = ""


@dataclass
class BaseUse:
    """The base tree one build uses: ``reused``, ``recorded`` (built by this build), or ``off``."""

    state: str
    reason: str = ""
    key: str | None = None
    spec: dib_base.BaseSpec | None = None
    store: dib_base.BaseStore | None = None
    env: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None

    def finish(self) -> None:
        if self.state != "recorded" or self.store is None or self.key is None or self.spec is None:
            return
        if not self.store.tree(self.key).is_file():
            self.state, self.reason = "off", "the build did not record the tree (no kiln-base-tree run)"
            self.store.discard(self.key)
            return
        self.seconds = time.monotonic() - self.started
        self.store.commit(self.key, self.spec, self.seconds)

    def abandon(self) -> None:
        """A failed build: a tree it recorded is discarded, never reused half-trusted."""
        if self.state == "recorded" and self.store is not None and self.key is not None:
            self.store.discard(self.key)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "digest": self.key, "reason": self.reason}


def choose_base(
    job: BuildJob,
    command: Command,
    inputs: BaseInputs,
    image_cache: Path,
    spot: str,
    runner: Runner,
    on_step: Step,
) -> BaseUse:
    """Reuse the base tree whose key matches, or record it in this build; point the spot."""
    if not base_cache_applies(job) or dib_base.ELEMENT not in command.argv:
        dib_base.point_spot(image_cache, spot, None)
        return BaseUse("off", "site.yaml dib.base_cache or a distro other than debian")
    settings = job.site.dib.base_cache
    build: Any = job.target.build
    env = inputs.env
    try:
        state = dib_base.mirror_state(mirror_suites(env, job.target.release))
    except OSError as exc:
        dib_base.point_spot(image_cache, spot, None)
        on_step(f"{job.target.id}: base tree off: the mirror's state is unknown ({exc})")
        return BaseUse("off", f"mirror state unknown: {exc}", env={"KILN_BASE_TREE_MODE": "off"})
    try:
        spec = dib_base.base_spec(
            distro=build.distro,
            release=job.target.release,
            arch=job.target.arch,
            elements=inputs.elements,
            elements_dir=job.elements_dir,
            elements_path=inputs.elements_path,
            env=env,
            runner=runner,
            recipe_packages=inputs.packages,
            shared_packages=settings.packages,
            distro_elements={DISTRO_ELEMENTS[build.distro], "debootstrap"},
            mirror_state=state,
        )
    except Exception as exc:  # DIB's element resolver: the DIB run itself reports a real problem
        dib_base.point_spot(image_cache, spot, None)
        on_step(f"{job.target.id}: base tree off: its elements could not be resolved ({exc})")
        return BaseUse("off", f"elements not resolved: {exc}", env={"KILN_BASE_TREE_MODE": "off"})
    key = dib_base.base_key(spec)
    root = Path(os.path.expanduser(settings.store)) if settings.store else job.cache_dir / "dib-base"
    store = dib_base.BaseStore(root / job.target.arch.debian, int(settings.max_gb * 1024**3))
    if store.has(key):
        store.touch(key)
        dib_base.point_spot(image_cache, spot, store.tree(key))
        on_step(f"{job.target.id}: base tree {key[:12]} reused ({len(spec.packages)} packages)")
        return BaseUse("reused", key=key, spec=spec, store=store, env={"KILN_BASE_TREE_MODE": "reuse"})
    out = store.prepare(key)
    dib_base.point_spot(image_cache, spot, None)
    on_step(f"{job.target.id}: base tree {key[:12]} not cached: recording it in this build")
    return BaseUse(
        "recorded",
        key=key,
        spec=spec,
        store=store,
        env={
            "KILN_BASE_TREE_MODE": "record",
            "KILN_BASE_TREE_OUT": str(out),
            "KILN_BASE_PACKAGES": " ".join(spec.packages),
        },
    )


_VALUED_OPTIONS = {"-a", "-o", "-t", "-p", "--image-size", "--qemu-img-options", "-x"}


def elements_and_packages(argv: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """The elements and the ``-p`` packages of a disk-image-create argv (options and their values
    left out; Kiln's own base-tree element too: it records the tree, it does not shape it)."""
    elements: list[str] = []
    packages: list[str] = []
    words = list(argv[1:])
    while words:
        word = words.pop(0)
        if word in _VALUED_OPTIONS and words:
            value = words.pop(0)
            if word == "-p":
                packages += [p for p in value.split(",") if p]
        elif not word.startswith("-") and word != dib_base.ELEMENT:
            elements.append(word)
    return elements, packages


def mirror_suites(env: dict[str, str], release: str) -> list[str]:
    """The suites whose state the tree depends on: the release and its updates, and security
    when the build includes it (DIB_DEBIAN_SECURITY_MIRROR)."""
    mirror = env.get("DIB_DISTRIBUTION_MIRROR", "http://deb.debian.org/debian").rstrip("/")
    suites = [f"{mirror}/dists/{release}", f"{mirror}/dists/{release}-updates"]
    security = env.get("DIB_DEBIAN_SECURITY_MIRROR")
    if security and f"{release}-security" in env.get("DIB_APT_SOURCES_CONF", f"{release}-security"):
        suites.append(f"{security.rstrip('/')}/dists/{release}-security")
    return suites


def format_phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items()) or "none seen"


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


class PhaseClock:
    """How long each DIB phase took, from the output as it arrives: a phase runs from its first
    ``dib-run-parts`` line to the next phase's; the image conversion from its milestone to the end."""

    def __init__(self, clock: Any = time.monotonic):
        self.clock = clock
        self.current: str | None = None
        self.since = 0.0
        self.totals: dict[str, float] = {}

    def line(self, text: str) -> None:
        match = _RUN_PARTS.search(text)
        if match:
            self.enter(f"{match.group(1)}.d")
        elif "Converting image using qemu-img convert" in text:
            self.enter("qemu-img convert")

    def enter(self, phase: str) -> None:
        if phase == self.current:
            return
        now = self.clock()
        if self.current is not None:
            self.totals[self.current] = self.totals.get(self.current, 0.0) + now - self.since
        self.current, self.since = phase, now

    def durations(self) -> dict[str, float]:
        totals = dict(self.totals)
        if self.current is not None:
            totals[self.current] = totals.get(self.current, 0.0) + self.clock() - self.since
        return {name: round(seconds, 1) for name, seconds in totals.items()}


class DibProgress:
    """Turns DIB's output into progress steps: one per phase script, and the milestones."""

    def __init__(self, on_step: Step):
        self.on_step = on_step
        self.last: str | None = None
        self.clock = PhaseClock()

    def line(self, text: str) -> None:
        self.clock.line(text)
        message = progress_message(text)
        if message is not None and message != self.last:
            self.last = message
            self.on_step(f"dib: {message}")
