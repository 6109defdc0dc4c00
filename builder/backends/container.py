"""Container images: a rendered Dockerfile per target, built by the docker engine for its platform.

What one target's run does, in order:

1. **The base image** for the target's platform, in the engine under a tag named by its content:
   - ``debootstrap:<release>``: a minbase rootfs for the arch (builder/host/rootfs.py, cached by
     content), which Kiln writes as a docker-archive whose image config names the target's
     architecture, then ``docker load`` (``docker import --platform`` records amd64 for a foreign
     rootfs on this engine). The archive is cached beside the rootfs: a warm build only loads it, or
     finds the tag and does nothing.
   - ``{recipe: NAME}``: the parent target's image (its tag, or loaded from its OCI layout);
   - ``{image: REF}``: pulled for the platform.
2. **The build**, through the engine's API (docker-py): the target's platform (binfmt emulation for a
   foreign arch), host networking, the base and the source revision as build arguments; each step's
   output goes to the log and the progress lines to ``on_step``.
3. **Out of the engine**: ``skopeo copy docker-daemon:TAG oci:out/oci`` (the layout the registry
   publisher pushes), the image's package list (``dpkg-query -W`` in the image: the SBOM's source) and
   ``image.json`` (tag, id, architecture, labels, env).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arch import Arch
from ..core.kind import Backend, BuildJob, BuildRun, ExpectedOutput
from ..errors import CommandFailed, EnvironmentProblem
from ..host.command import Command
from ..host.rootfs import BOOTSTRAP_TIMEOUT_S, READY, RootSpec, bootstrap_argv, ensure_root
from ..host.run import tool_version
from ..manifest import Artifact, sha256_file
from ..workspace import source_commit
from .base import Step, clear_outputs, collect_outputs, debian_mirror, place_copies

if TYPE_CHECKING:
    from ..host.run import Runner

BUILD_TIMEOUT_S = 3 * 3600.0  # nvidia-cuda-toolkit under emulation is slow
ENGINE_TIMEOUT_S = 600.0
BASE_PACKAGES = ("ca-certificates",)  # apt over HTTPS mirrors, in every bootstrapped base
DPKG_FORMAT = "${binary:Package}\\t${Version}\\n"
# Paths of a bootstrapped rootfs that do not belong in an image: the engine provides /dev, /proc, /sys.
_SKIPPED_DIRS = ("dev", "proc", "sys")


def local_tag(recipe: str, arch: Arch, digest: str) -> str:
    """The engine tag of one target's built image: recipe, arch and Kiln's input digest."""
    return f"kiln-build/{recipe}:{arch.value}-{digest[:16]}"


def base_tag(release: str, arch: Arch, key: str) -> str:
    return f"kiln-base/debian:{release}-{arch.debian}-{key}"


@dataclass(frozen=True)
class BaseSource:
    """Where a target's base image comes from (resolved in :meth:`ContainerBackend.plan`)."""

    how: str  # debootstrap | parent | pull
    reference: str  # the engine tag (debootstrap, parent) or the registry reference (pull)
    rootfs: Any = None  # host.rootfs.RootSpec for debootstrap
    layout: Path | None = None  # the parent's OCI layout, loaded when its tag is missing


class ContainerBackend(Backend):
    tool = "docker"

    # -- plan (pure) -------------------------------------------------------------------------------

    def plan(self, job: BuildJob) -> BuildRun:
        target = job.target
        build: Any = target.build
        out = job.out_dir
        tag = local_tag(target.recipe, target.arch, target.digest)
        base = self.base_source(job)
        platform = target.arch.oci_platform
        commands: list[Command] = []
        if base.how == "debootstrap":
            root = base.rootfs.directory(job.cache_dir)
            commands += [
                Command(bootstrap_argv(base.rootfs, root, debian_mirror(job)), timeout_s=BOOTSTRAP_TIMEOUT_S),
                Command(("docker", "load", "-i", str(_archive_path(root))), timeout_s=ENGINE_TIMEOUT_S),
            ]
        elif base.how == "parent" and base.layout is not None:
            commands.append(
                Command(
                    ("skopeo", "copy", "--quiet", f"oci:{base.layout}", f"docker-daemon:{base.reference}"),
                    timeout_s=ENGINE_TIMEOUT_S,
                )
            )
        else:
            commands.append(
                Command(
                    ("docker", "pull", "--platform", platform, base.reference), timeout_s=ENGINE_TIMEOUT_S
                )
            )
        commands += [
            Command(
                (
                    "docker", "build", "--platform", platform, "--network", "host", "--pull=false",
                    "--build-arg", f"KILN_BASE_IMAGE={base.reference}",
                    "--build-arg", "KILN_REVISION=<source commit>",
                    "-t", tag, "-f", str(job.render_dir / "Dockerfile"), str(job.render_dir),
                ),
                timeout_s=BUILD_TIMEOUT_S,
            ),
            Command(
                ("skopeo", "copy", "--quiet", f"docker-daemon:{tag}", f"oci:{out / 'oci'}"),
                timeout_s=ENGINE_TIMEOUT_S,
            ),
            Command(
                (
                    "docker", "run", "--rm", "--network", "none", "--platform", platform, tag,
                    "dpkg-query", "-W", "-f", DPKG_FORMAT,
                ),
                timeout_s=ENGINE_TIMEOUT_S,
            ),
        ]  # fmt: skip
        notes = [f"base: {base.how} {base.reference}"]
        if base.how == "debootstrap":
            notes.append(
                "debootstrap and docker load run only when the cached rootfs or the base tag is missing"
            )
        if build.cuda_packages:
            notes.append("held: " + ", ".join(build.cuda_packages))
        keys = tuple(
            (job.workspace_root / repo.key, job.render_dir / "apt-keys" / f"{i}.asc")
            for i, repo in enumerate(build.apt_repositories)
        )
        return BuildRun(
            tool=self.tool,
            commands=tuple(commands),
            copies=keys,  # the extra repositories' keys, into the build context
            # Beside the layout: packages.dpkg (the SBOM's source) and image.json (tag, id, labels).
            outputs=(ExpectedOutput(out / "oci", "image", "oci-layout", "oci"),),
            base_dir=out.parent,
            notes=tuple(notes),
        )

    def base_source(self, job: BuildJob) -> BaseSource:

        build: Any = job.target.build
        arch = job.target.arch
        parent = getattr(build, "parent", None)
        if parent is not None:
            [(dependency, layout)] = list(job.dependencies.items())[:1] or [("", None)]
            if not dependency:
                raise CommandFailed(
                    f"{job.target.id}: builds on recipe {parent.recipe}, which is not a dependency"
                )
            return BaseSource("parent", _parent_tag(layout), layout=layout)
        if build.base is not None and not isinstance(build.base, str):
            return BaseSource("pull", build.base.image)
        spec = RootSpec(arch, release=build.release, packages=BASE_PACKAGES, store="container-roots")
        return BaseSource("debootstrap", base_tag(build.release, arch, spec.key), rootfs=spec)

    # -- run (I/O) ---------------------------------------------------------------------------------

    def run(self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        target = job.target
        shutil.rmtree(job.out_dir / "oci", ignore_errors=True)
        clear_outputs(run)
        for stale in ("packages.dpkg", "image.json"):
            (job.out_dir / stale).unlink(missing_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        engine_ok(runner)
        place_copies(run)
        base = self.base_source(job)
        self._ensure_base(base, job, runner, log, on_step)
        tag = local_tag(target.recipe, target.arch, target.digest)
        on_step(f"{target.id}: docker build for {target.arch.oci_platform} on {base.reference}")
        build_image(
            job.render_dir,
            tag,
            target.arch.oci_platform,
            {
                "KILN_BASE_IMAGE": base.reference,
                "KILN_REVISION": source_commit(job.workspace_root) or "unknown",
            },
            log,
            on_step,
        )
        export, packages = run.commands[-2], run.commands[-1]
        on_step(f"{target.id}: exporting {tag} as an OCI layout")
        runner.run(export.argv, timeout=export.timeout_s, log_path=log)
        listed = runner.capture(packages.argv, timeout=packages.timeout_s)
        if not listed.ok:
            raise CommandFailed(f"{target.id}: dpkg-query in the built image failed: {listed.stderr[-500:]}")
        (job.out_dir / "packages.dpkg").write_text(listed.stdout)
        (job.out_dir / "image.json").write_text(
            json.dumps(image_facts(tag, runner), indent=2, sort_keys=True) + "\n"
        )
        return collect_outputs(run, log)

    def _ensure_base(self, base: BaseSource, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> None:
        if has_image(base.reference, runner):
            on_step(f"{job.target.id}: base {base.reference} is in the engine")
            return
        if base.how == "debootstrap":
            on_step(
                f"{job.target.id}: base rootfs {base.rootfs.release} {job.target.arch.debian}"
                " (debootstrap unless cached)"
            )
            root, fresh = ensure_root(base.rootfs, job.cache_dir, debian_mirror(job), runner, log)
            on_step(f"{job.target.id}: base rootfs {'bootstrapped' if fresh else 'reused from the cache'}")
            archive = _archive_path(root)
            if fresh or not archive.exists():
                write_docker_archive(root, job.target.arch, base.reference, archive)
            runner.run(["docker", "load", "-i", str(archive)], timeout=ENGINE_TIMEOUT_S, log_path=log)
        elif base.how == "parent":
            if base.layout is None or not base.layout.is_dir():
                raise CommandFailed(
                    f"{job.target.id}: the parent image {base.reference} is neither in the engine nor on disk"
                )
            on_step(f"{job.target.id}: loading the parent image {base.reference} from its OCI layout")
            runner.run(
                ["skopeo", "copy", "--quiet", f"oci:{base.layout}", f"docker-daemon:{base.reference}"],
                timeout=ENGINE_TIMEOUT_S,
                log_path=log,
            )
        else:
            on_step(f"{job.target.id}: pulling {base.reference} for {job.target.arch.oci_platform}")
            runner.run(
                ["docker", "pull", "--platform", job.target.arch.oci_platform, base.reference],
                timeout=ENGINE_TIMEOUT_S,
                log_path=log,
            )

    def tool_versions(self, runner: Runner) -> dict[str, str]:

        return {
            "docker": tool_version(["docker", "version", "--format", "{{.Server.Version}}"], runner),
            "skopeo": tool_version(["skopeo", "--version"], runner),
        }


# --- the engine ------------------------------------------------------------------------------------


def engine_ok(runner: Runner) -> None:
    if shutil.which("docker") is None:
        raise EnvironmentProblem("container builds need the docker engine: apt-get install docker.io")
    if not runner.capture(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=60).ok:
        raise EnvironmentProblem(
            "the docker engine does not answer (`docker info` failed): start it (`dockerd &`, or "
            "`systemctl start docker`) and build again"
        )


def has_image(reference: str, runner: Runner) -> bool:
    return runner.capture(["docker", "image", "inspect", "--format", "{{.Id}}", reference], timeout=60).ok


def image_facts(tag: str, runner: Runner) -> dict[str, Any]:
    found = runner.capture(["docker", "image", "inspect", tag], timeout=60)
    if not found.ok:
        raise CommandFailed(f"docker image inspect {tag} failed: {found.stderr[-300:]}")
    [info] = json.loads(found.stdout)
    config = info.get("Config") or {}
    return {
        "tag": tag,
        "id": info.get("Id"),
        "architecture": info.get("Architecture"),
        "os": info.get("Os"),
        "labels": config.get("Labels") or {},
        "env": config.get("Env") or [],
        "size": info.get("Size"),
    }


def build_image(
    context: Path, tag: str, platform: str, build_args: dict[str, str], log: Path, on_step: Step
) -> None:
    """``docker build`` through the engine API, each output line to the log, steps to ``on_step``."""
    import docker  # on first use, not at start-up: a heavy import
    from docker.errors import APIError, DockerException  # on first use, not at start-up: a heavy import

    try:
        client = docker.APIClient(timeout=int(BUILD_TIMEOUT_S))
        stream = client.build(
            path=str(context),
            dockerfile="Dockerfile",
            tag=tag,
            platform=platform,
            network_mode="host",
            buildargs=build_args,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        with log.open("a", encoding="utf-8") as out:
            out.write(f"$ docker build --platform {platform} -t {tag} {context}\n")
            for chunk in stream:
                if "error" in chunk:
                    out.write(f"ERROR: {chunk['error']}\n")
                    raise CommandFailed(
                        f"docker build of {tag} failed: {str(chunk['error']).strip()[:500]} (log: {log})"
                    )
                text = str(chunk.get("stream") or chunk.get("status") or "")
                if text:
                    out.write(text if text.endswith("\n") else text + "\n")
                    out.flush()
                    if text.startswith("Step "):
                        on_step(f"  {text.strip()[:160]}")
    except (APIError, DockerException) as exc:
        raise CommandFailed(f"docker build of {tag}: {exc} (log: {log})") from None


# --- the base image from a rootfs ----------------------------------------------------------------------


def _archive_path(root: Path) -> Path:
    return root.with_name(root.name + ".docker.tar")


def write_docker_archive(rootfs: Path, arch: Arch, tag: str, dest: Path) -> str:
    """A one-layer docker-archive (what ``docker load`` reads) of ``rootfs``, whose image config names
    ``arch``; entries sorted and owners numeric, so the same rootfs gives the same image id.
    Returns the image's config digest."""

    partial = dest.with_name(dest.name + ".partial")
    layer = dest.with_name(dest.name + ".layer")
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk(rootfs):
            dirs.sort()
            here = Path(directory)
            relative = here.relative_to(rootfs)
            if relative.parts and relative.parts[0] in _SKIPPED_DIRS and len(relative.parts) > 1:
                dirs.clear()
                continue
            if relative.parts:
                tar.add(here, arcname=relative.as_posix(), recursive=False, filter=_numeric_owner)
            if relative.parts and relative.parts[0] in _SKIPPED_DIRS:
                dirs.clear()
                continue
            for name in sorted(files):
                if not relative.parts and name == READY:
                    continue
                tar.add(
                    here / name, arcname=(relative / name).as_posix(), recursive=False, filter=_numeric_owner
                )
            for name in list(dirs):  # symlinks to directories are entries, not walked
                if (here / name).is_symlink():
                    tar.add(
                        here / name,
                        arcname=(relative / name).as_posix(),
                        recursive=False,
                        filter=_numeric_owner,
                    )
                    dirs.remove(name)
    diff_id = sha256_file(layer)
    config = {
        "architecture": arch.oci,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["bash"],
            "Labels": {"io.kiln.base": tag},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": f"kiln: debootstrap rootfs {rootfs.name}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(layer, arcname=f"{diff_id}/layer.tar")
        for name, data in (
            (f"{config_id}.json", config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    layer.unlink()
    partial.replace(dest)
    return f"sha256:{config_id}"


def _numeric_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    return info


# --- small helpers -------------------------------------------------------------------------------------


def _parent_tag(layout: Path | None) -> str:
    """The parent's engine tag, from the image.json its build wrote beside its layout."""
    if layout is None:
        raise CommandFailed("the parent image has no build here yet")
    facts = layout.parent / "image.json"
    try:
        return str(json.loads(facts.read_text())["tag"])
    except (OSError, ValueError, KeyError):
        # A dry run before the parent was built: the tag its build will have is not known here.
        return f"kiln-build/(the parent's image: {layout.parent.parent.name})"
