"""Ironic Python Agent ramdisks: the rendered ``ironic-python-agent-builder`` command (which runs
disk-image-create with the IPA elements), on DIB's site environment, caches and host shims.

What IPA adds to a DIB build:

* **Sources without the upstream git host**: the IPA elements git-clone ironic-python-agent,
  requirements and glean. ``run`` makes local git repos from the PyPI sdists of the pinned releases
  (builder/ipa_sources.py: cached, tagged so pbr reads the version) and points
  ``DIB_REPOLOCATION_*``/``DIB_REPOREF_*`` at them; a site whose ``ipa.upstream_git`` is true clones
  upstream at the same tags. An unpinned release is the newest on PyPI when the build runs.
* **The recipe's additions** to the ramdisk (packages, mdadm for RAID, hardware managers; Kiln's
  ``kiln-ipa-extras`` element) and the ISO's kernel arguments (``DIB_DEPLOY_ISO_KERNEL_CMDLINE_ARGS``,
  read by DIB's ``iso`` element) come rendered in ``dib.env`` (templates/ipa/environment.j2).
* **Outputs**: ``<name>.kernel`` (Glance ``aki``), ``<name>.initramfs`` (``ari``) and ``<name>.iso``
  when asked, each with a ``.sha256`` beside it (``HEX  NAME``, as Bifrost and ``sha256sum -c`` read).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.kind import BuildJob, BuildRun, ExpectedOutput
from ..host.command import Command
from ..ipa_sources import SourcePin, ensure_repo, environment, latest_version, plan_repos, upstream_refs
from ..manifest import Artifact, sha256_file
from . import dib_base
from .base import Step, clear_outputs, collect_outputs
from .dib import BASE_NOTE, BUILD_TIMEOUT_S, BaseInputs, DibBackend, base_cache_applies, parse_env_file

if TYPE_CHECKING:
    from ..host.run import Runner


def releases(build: Any) -> list[tuple[str, str | None]]:
    """(PyPI project, the recipe's pinned release or None: the newest at build time) of each source."""
    return [("ironic-python-agent", build.ipa_version), ("glean", build.glean_version)]


def ipa_pins(build: Any) -> list[Any]:
    """The releases the recipe pins; unpinned ones are resolved at run time."""

    return [SourcePin(project, version) for project, version in releases(build) if version]


class IpaBackend(DibBackend):
    tool = "ironic-python-agent-builder"

    def plan(self, job: BuildJob) -> BuildRun:

        build: Any = job.target.build
        site_env, copies, notes = self.site_environment(job)
        spec = json.loads(job.rendered["build.json"])
        argv = [str(a) for a in spec["argv"]]
        # Absolute: DIB's ramdisk-create writes <output>.sha256 from another working directory.
        stem = job.out_dir / argv[argv.index("-o") + 1]
        argv[argv.index("-o") + 1] = str(stem)
        if base_cache_applies(job):  # the base tree guest images of this distro/release/arch share
            argv[-1:-1] = ["-e", dib_base.ELEMENT]
            notes += (BASE_NOTE,)
        env = {**parse_env_file(job.rendered[spec["env_file"]].decode()), **site_env}
        upstream = self._upstream_git(job)
        pins = ipa_pins(build)
        env.update(environment(plan_repos(pins, job.cache_dir, upstream_git=upstream)))
        if upstream:
            env.update(upstream_refs(pins))
        unpinned = [project for project, version in releases(build) if not version]
        if unpinned and not upstream:
            notes += (
                f"unpinned ({', '.join(unpinned)}): the newest release on PyPI at build time, "
                "as a local git repo",
            )
        command = Command(
            tuple(argv),
            env,
            cwd=job.out_dir,
            timeout_s=BUILD_TIMEOUT_S,
            kill_grace_s=60,
        )
        outputs = [
            ExpectedOutput(stem.with_name(stem.name + ".kernel"), "kernel", "kernel", "aki"),
            ExpectedOutput(stem.with_name(stem.name + ".initramfs"), "initramfs", "ramdisk", "ari"),
        ]
        commands = [command]
        if spec.get("iso"):
            iso = stem.with_name(stem.name + ".iso")
            outputs.append(ExpectedOutput(iso, "iso", "iso", "iso"))
            commands.append(iso_command(iso, iso_root(job)))
            notes += (
                f"{iso_root(job)}: vmlinuz, initrd and boot/grub/grub.cfg (rendered) before grub-mkrescue",
            )
        return BuildRun(
            self.tool, tuple(commands), tuple(outputs), job.out_dir.parent, copies=copies, notes=notes
        )

    @staticmethod
    def _upstream_git(job: BuildJob) -> bool:
        return job.site.ipa.upstream_git

    def run(self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        command, *iso = run.commands
        clear_outputs(run)  # the ISO too: never a stale one from an earlier build
        if not self._upstream_git(job):
            command = replace(command, env={**command.env, **self._local_sources(job, runner, log, on_step)})
        ramdisk = tuple(o for o in run.outputs if o.type != "iso")
        artifacts = super().run(replace(run, commands=(command,), outputs=ramdisk), job, runner, log, on_step)
        if iso:
            on_step(f"{job.target.id}: ISO for virtual media (grub-mkrescue)")
            artifacts += self._make_iso(run, job, iso[0], runner, log)
        for output in run.outputs:
            write_sha256(output.path)
        return artifacts

    def _make_iso(
        self, run: BuildRun, job: BuildJob, command: Command, runner: Runner, log: Path
    ) -> list[Artifact]:

        by_type = {o.type: o.path for o in run.outputs}
        root = iso_root(job)
        shutil.rmtree(root, ignore_errors=True)
        (root / "boot" / "grub").mkdir(parents=True)
        try:
            shutil.copyfile(by_type["kernel"], root / "vmlinuz")
            shutil.copyfile(by_type["ramdisk"], root / "initrd")
            shutil.copyfile(job.render_dir / "iso" / "grub.cfg", root / "boot" / "grub" / "grub.cfg")
            runner.run(command.argv, timeout=command.timeout_s, log_path=log)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return collect_outputs(replace(run, outputs=tuple(o for o in run.outputs if o.type == "iso")), log)

    def _local_sources(self, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> dict[str, str]:
        """Local git repos of the pinned (or newest) releases, made once and cached."""

        build: Any = job.target.build
        pins = [
            SourcePin(project, version or latest_version(project)) for project, version in releases(build)
        ]
        plans = plan_repos(pins, job.cache_dir)
        log.parent.mkdir(parents=True, exist_ok=True)
        for plan in plans:
            made = ensure_repo(plan, runner, log)
            on_step(
                f"{job.target.id}: source {plan.project} {plan.version}: "
                f"{'made a local git repo' if made.made else 'cached local git repo'}"
            )
        return environment(plans)

    def base_inputs(self, command: Command) -> BaseInputs:
        """The disk-image-create run ironic-python-agent-builder makes of its argv: its ramdisk
        element, the distribution, the ``-e`` elements, and the environment it adds."""
        from ironic_python_agent_builder import (
            find_elements_path,  # on first use, not at start-up: a heavy import
        )

        argv = list(command.argv)
        extra = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("-e", "--element")]
        elements = ["ironic-python-agent-ramdisk", argv[-1], *(e for e in extra if e != dib_base.ELEMENT)]
        env = {**builder_environment(argv), **command.env}
        try:
            ipa_elements = find_elements_path()
        except SystemExit:  # its elements are missing: the build itself says so
            ipa_elements = ""
        return BaseInputs(elements, [], env, ipa_elements)

    def tool_versions(self, runner: Runner) -> dict[str, str]:

        out = dict(super().tool_versions(runner))
        try:
            out["ironic-python-agent-builder"] = version("ironic-python-agent-builder")
        except PackageNotFoundError:
            out["ironic-python-agent-builder"] = "unknown"
        return out


def builder_environment(argv: list[str]) -> dict[str, str]:
    """What ironic-python-agent-builder sets before it runs disk-image-create (its main()), where
    the build's own environment does not."""
    env = {"DIB_INSTALLTYPE_pip_and_virtualenv": "package", "DIB_CHECKSUM": "sha256"}
    if "-r" in argv:
        env["DIB_RELEASE"] = argv[argv.index("-r") + 1]
    if "--lzma" in argv:
        env["DIB_IPA_COMPRESS_CMD"] = "xz --format=lzma --compress --stdout -9"
    return env


def iso_root(job: BuildJob) -> Path:
    return job.tmp_dir.with_name(job.tmp_dir.name + ".iso-root")


def iso_command(iso: Path, root: Path) -> Command:
    """A hybrid BIOS/EFI ISO of ``root`` (grub-mkrescue builds its EFI image with mtools: no loop
    mount, which this kind of host lacks for vfat)."""
    return Command(("grub-mkrescue", "-o", str(iso), str(root), "--", "-volid", "IPA"), timeout_s=1800)


def write_sha256(path: Path) -> Path:
    """``<file>.sha256`` holding ``HEX  NAME`` (``sha256sum -c`` reads it in the file's directory)."""
    target = path.with_name(path.name + ".sha256")
    target.write_text(f"{sha256_file(path)}  {path.name}\n")
    return target
