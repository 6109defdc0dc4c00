"""Guest images with Packer (1.6.6's qemu builder): provision on top of another target's image.

The HCL comes from the rendered files; ``plan`` adds what is site- or run-specific as ``-var``: the
base image (the dependency's artifact), an SSH key made for this build (its public half goes into
the NoCloud seed's user-data), the output directory, the workspace root (recipe file paths are
relative to it) and the accelerator (KVM only where the probe says it works).
The template's last provisioners download the guest's package list into the output directory
(``packages.dpkg`` or ``packages.rpm``, as ``builder/sbom.py`` reads them): the SBOM's source.
Packer's ``-machine-readable`` output is turned into Kiln's progress lines.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.kind import Backend, BuildJob, BuildRun, ExpectedOutput
from ..errors import CommandFailed, InvalidInput, Problem
from ..host.command import Command
from ..host.run import tool_version
from ..manifest import Artifact
from ..sbom import DPKG_LIST, RPM_LIST
from .base import Step, collect_outputs, run_command

if TYPE_CHECKING:
    from ..host.run import Runner

BUILD_TIMEOUT_S = 2 * 3600
UNPROBED_ACCELERATOR = "kvm-or-tcg"  # what a dry run shows: the KVM probe runs at build time
PACKAGE_LISTS = (DPKG_LIST, RPM_LIST)  # the template downloads one, by the guest's distro


def machine_readable_step(line: str) -> str | None:
    """The human message in one ``-machine-readable`` line (``ts,target,ui,say,msg``), if any."""
    parts = line.split(",", 4)
    if len(parts) == 5 and parts[2] == "ui" and parts[3] in ("say", "message", "error"):
        return parts[4].replace("%!(PACKER_COMMA)", ",").replace("\\n", " ").strip() or None
    return None


def packer_command(
    render_dir: Path,
    out_dir: Path,
    *,
    base_image: Path | None,
    workspace_root: Path,
    accelerator: str,
    ssh_private_key: Path,
    cache_dir: Path,
) -> Command:
    variables = {
        "output_dir": str(out_dir / "image"),
        "package_list_dir": str(out_dir),
        "seed_dir": str(render_dir / "seed"),
        "workspace": str(workspace_root),
        "ssh_private_key_file": str(ssh_private_key),
        "accelerator": accelerator,
    }
    if base_image is not None:
        variables["base_image"] = str(base_image)
    argv = ["packer", "build", "-machine-readable", "-force"]
    for name, value in sorted(variables.items()):
        argv += ["-var", f"{name}={value}"]
    argv.append("image.pkr.hcl")
    env = {"CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(cache_dir / "packer"), "PACKER_NO_COLOR": "1"}
    return Command(tuple(argv), env, cwd=render_dir, timeout_s=BUILD_TIMEOUT_S, kill_grace_s=30)


def seed_user_data(ssh_public_key: str) -> str:
    """user-data next to the rendered meta-data: the build's SSH key for the image's default user."""
    return f"#cloud-config\nssh_authorized_keys:\n  - {ssh_public_key}\n"


class PackerBackend(Backend):
    tool = "packer"
    needs_accelerator = True  # the KVM probe runs before planning (never in a dry run)

    def plan(self, job: BuildJob) -> BuildRun:
        target = job.target
        base_image = None
        for dependency in target.depends_on:
            base_image = job.dependencies.get(dependency)
            if base_image is None:
                raise InvalidInput(Problem(f"{target.id} builds on {dependency}, whose image is unknown"))
        key = self.key_path(job)
        keygen = Command(
            ("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kiln-{target.slug}", "-f", str(key)),
            timeout_s=60,
        )
        fmt = str(target.build.formats[0])
        build = packer_command(
            job.render_dir,
            job.out_dir,
            base_image=base_image,
            workspace_root=job.workspace_root,
            accelerator=job.host.accelerator or UNPROBED_ACCELERATOR,
            ssh_private_key=key,
            cache_dir=job.cache_dir,
        )
        output = ExpectedOutput(job.out_dir / "image" / f"{target.slug}.{fmt}", "image", "disk-image", fmt)
        notes = () if job.host.accelerator else ("accelerator: KVM is probed at build time, else TCG",)
        return BuildRun(self.tool, (keygen, build), (output,), job.out_dir.parent, notes=notes)

    @staticmethod
    def key_path(job: BuildJob) -> Path:
        return job.render_dir / "ssh" / "id_ed25519"

    def run(self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step) -> list[Artifact]:
        keygen, build = run.commands
        key = self.key_path(job)
        key.parent.mkdir(parents=True, exist_ok=True)
        for stale in (key, key.with_suffix(".pub")):
            stale.unlink(missing_ok=True)
        [output] = run.outputs
        shutil.rmtree(output.path.parent, ignore_errors=True)  # packer refuses an existing output dir
        output.path.parent.parent.mkdir(parents=True, exist_ok=True)
        for stale in PACKAGE_LISTS:  # never an earlier build's package list in this build's SBOM
            (job.out_dir / stale).unlink(missing_ok=True)
        try:
            run_command(keygen, runner, log)
            seed = job.render_dir / "seed" / "user-data"
            seed.parent.mkdir(parents=True, exist_ok=True)
            seed.write_text(seed_user_data(key.with_suffix(".pub").read_text().strip()))
            run_command(build, runner, log, on_line=lambda line: _report(line, on_step))
        finally:
            shutil.rmtree(key.parent, ignore_errors=True)  # the key was for this build only
        if not any((job.out_dir / name).is_file() for name in PACKAGE_LISTS):
            raise CommandFailed(
                f"packer finished but did not download the guest's package list "
                f"({' or '.join(PACKAGE_LISTS)} in {job.out_dir}; log: {log})"
            )
        return collect_outputs(run, log)

    def tool_versions(self, runner: Runner) -> dict[str, str]:

        return {"packer": tool_version(["packer", "version"], runner)}


def _report(line: str, on_step: Step) -> None:
    message = machine_readable_step(line)
    if message:
        on_step(f"packer: {message[:200]}")
