"""Guest images with Packer (1.6.6's qemu builder): provision on top of another target's image.

The HCL comes from the render directory; at build time Kiln adds what is site- or run-specific as
``-var``: the base image (the dependency's artifact), an SSH key made for this build (its public
half goes into the NoCloud seed's user-data), the output directory, the workspace root (recipe
file paths are relative to it) and the accelerator (KVM only where the probe says it works).
Packer's ``-machine-readable`` output is turned into Kiln's progress lines.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandFailed
from ..manifest import Artifact, artifact_for
from ..run import Runner

BUILD_TIMEOUT_S = 2 * 3600


@dataclass(frozen=True)
class PackerRun:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    output: Path
    fmt: str


def machine_readable_step(line: str) -> str | None:
    """The human message in one ``-machine-readable`` line (``ts,target,ui,say,msg``), if any."""
    parts = line.split(",", 4)
    if len(parts) == 5 and parts[2] == "ui" and parts[3] in ("say", "message", "error"):
        return parts[4].replace("%!(PACKER_COMMA)", ",").replace("\\n", " ").strip() or None
    return None


def plan_run(
    render_dir: Path,
    out_dir: Path,
    *,
    slug: str,
    fmt: str,
    base_image: Path | None,
    workspace_root: Path,
    accelerator: str,
    ssh_private_key: Path,
    cache_dir: Path,
) -> PackerRun:
    variables = {
        "output_dir": str(out_dir / "image"),
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
    return PackerRun(argv, env, render_dir, out_dir / "image" / f"{slug}.{fmt}", fmt)


def write_seed(render_dir: Path, ssh_public_key: str) -> None:
    """user-data next to the rendered meta-data: the build's SSH key for the image's default user."""
    (render_dir / "seed" / "user-data").write_text(
        f"#cloud-config\nssh_authorized_keys:\n  - {ssh_public_key}\n"
    )


def run_build(
    run: PackerRun, runner: Runner, log_path: Path, on_step: Callable[[str], None]
) -> list[Artifact]:
    shutil.rmtree(run.output.parent, ignore_errors=True)  # packer refuses an existing output dir
    run.output.parent.parent.mkdir(parents=True, exist_ok=True)
    progress = Runner(
        dry_run=runner.dry_run,
        secrets=runner.secrets,
        echo=runner.echo,
        on_line=lambda line: _report(line, on_step),
    )
    progress.run(
        run.argv, cwd=run.cwd, env=run.env, log_path=log_path, timeout=BUILD_TIMEOUT_S, kill_grace_s=30
    )
    if not run.output.exists():
        raise CommandFailed(f"packer finished but did not write {run.output} (log: {log_path})")
    return [artifact_for(run.output.parent.parent, run.output, "image", "disk-image", run.fmt)]


def _report(line: str, on_step: Callable[[str], None]) -> None:
    message = machine_readable_step(line)
    if message:
        on_step(f"packer: {message[:200]}")
