"""The backend interface: a pure plan step and an I/O run step.

* ``plan(job) -> BuildRun``: pure. The commands (argv, env, cwd, time-out), the files to place and
  the outputs to expect, from the target, its rendered files and the host facts gathered before.
  ``kiln build --dry-run`` prints exactly this, with the whole environment each command gets (the
  one Kiln runs in, with the command's own over it), secrets masked.
* ``run(run, job, runner, log, on_step) -> list[Artifact]``: the I/O. Runs the plan through the
  runner (the only code that starts processes) and measures the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..arch import Arch
from ..errors import CommandFailed
from ..manifest import Artifact, ArtifactType, artifact_for

if TYPE_CHECKING:
    from ..host.run import Runner
    from ..pipeline.graph import Target
    from ..siteconfig import SiteConfig

Step = Callable[[str], None]


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the environment Kiln runs in
    cwd: Path | None = None
    timeout_s: float | None = None
    kill_grace_s: float = 10.0

    def environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The whole environment the command runs with: ``inherited`` (the one Kiln runs in) with the
        command's own over it, as the runner composes it (builder/host/run.py)."""
        return dict(sorted({**inherited, **self.env}.items()))

    def as_json(self, inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
        """argv, cwd and the whole environment (secrets masked); ``env_set_by_kiln``: the names Kiln
        sets (the rest comes from the environment Kiln was started in)."""
        return {
            "argv": list(self.argv),
            "env": masked_environment(self.environment(inherited or {})),
            "env_set_by_kiln": sorted(self.env),
            "cwd": str(self.cwd or ""),
        }


def masked_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` fit to print: a variable named like a secret (``OS_PASSWORD``, ``CI_JOB_TOKEN``) shows
    ``***`` whatever its length, and every value passes the masking layer (URL credentials, secrets
    registered from site.yaml and the environment)."""
    from ..masking import MASK, SECRET_KEY, mask

    return {name: MASK if SECRET_KEY.search(name) else mask(value) for name, value in env.items()}


@dataclass(frozen=True)
class ExpectedOutput:
    path: Path
    name: str
    type: ArtifactType
    format: str | None = None


@dataclass(frozen=True)
class BuildRun:
    """Exactly what a backend will do for one target."""

    tool: str
    commands: tuple[Command, ...]
    outputs: tuple[ExpectedOutput, ...]
    base_dir: Path  # the target's directory: artifact paths in the manifest are relative to it
    copies: tuple[tuple[Path, Path], ...] = ()  # (source, destination) placed before the commands
    notes: tuple[str, ...] = ()  # what a dry run cannot know (e.g. "accelerator probed at build time")

    def as_json(self, inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The plan as data; ``inherited``: the environment Kiln runs in (each command's whole
        environment is printed)."""
        return {
            "tool": self.tool,
            "commands": [c.as_json(inherited) for c in self.commands],
            "copies": [[str(a), str(b)] for a, b in self.copies],
            "outputs": [str(o.path) for o in self.outputs],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class HostFacts:
    """What the pipeline found out about this host before planning (nothing when dry-running)."""

    arch: Arch
    placement: str  # native | emulated
    adaptations: tuple[Any, ...] = ()  # hostcompat.Adaptation
    accelerator: str | None = None  # kvm | tcg; None: not probed (dry run)
    probed: bool = True


@dataclass(frozen=True)
class BuildJob:
    """Everything a backend's plan step reads: resolved data, paths, and facts gathered earlier."""

    target: Target
    rendered: Mapping[str, bytes]  # render-dir-relative path -> content
    render_dir: Path
    out_dir: Path
    tmp_dir: Path
    build_root: Path
    workspace_root: Path
    elements_dir: Path
    cache_dir: Path
    site: SiteConfig
    host: HostFacts
    dependencies: Mapping[str, Path] = field(default_factory=dict)  # dependency target id -> its artifact


class Backend(Protocol):
    """How a kind builds: a pure ``plan`` and an I/O ``run``. A backend class subclasses this
    protocol explicitly, so the capabilities below default to off and are plain typed attributes."""

    tool: str
    # Probe the host before planning: device-mapper shims, sudo, binfmt_misc (builder/host/compat.py).
    needs_host_adaptations: bool = False
    # Choose KVM or TCG before planning (a build that boots a VM, e.g. Packer's QEMU builder).
    needs_accelerator: bool = False

    def plan(self, job: BuildJob) -> BuildRun: ...

    def run(
        self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step
    ) -> list[Artifact]: ...

    def tool_versions(self, runner: Runner) -> dict[str, str]: ...


def run_command(
    command: Command, runner: Runner, log: Path, on_line: Callable[[str], None] | None = None
) -> None:
    """Run one planned command through the runner, its output lines also to ``on_line`` (progress)."""
    if on_line is not None:
        runner = replace(runner, on_line=on_line)
    runner.run(
        command.argv,
        cwd=command.cwd,
        env=dict(command.env),
        timeout=command.timeout_s,
        log_path=log,
        kill_grace_s=command.kill_grace_s,
    )


def place_copies(run: BuildRun) -> None:
    """The files a plan copies into place before its commands (CA certificates, apt keys)."""
    import shutil

    for source, destination in run.copies:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)


def debian_mirror(job: BuildJob) -> str:
    """The Debian archive debootstrap and apt use: site.yaml's, else the one this host's apt uses."""
    from ..host.compat import host_apt_mirror

    return str(job.site.mirrors.debian or host_apt_mirror() or "http://deb.debian.org/debian")


def collect_outputs(run: BuildRun, log: Path) -> list[Artifact]:
    """The artifacts a plan promised, measured; a missing one fails the build."""
    missing = [str(o.path) for o in run.outputs if not o.path.exists()]
    if missing:
        raise CommandFailed(f"{run.tool} finished but did not write {', '.join(missing)} (log: {log})")
    return [artifact_for(run.base_dir, o.path, o.name, o.type, o.format) for o in run.outputs]


def clear_outputs(run: BuildRun) -> None:
    """Never report a stale file from an earlier build as this one's."""
    for output in run.outputs:
        output.path.parent.mkdir(parents=True, exist_ok=True)
        output.path.unlink(missing_ok=True)


# Beside a build's outputs: what the backend can tell about how it built (e.g. DIB's base tree and
# phase times). The pipeline copies it into the manifest and the ledger; a backend need not write it.
FACTS = "build-facts.json"


def write_build_facts(out_dir: Path, facts: dict[str, Any]) -> None:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FACTS).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")


def read_build_facts(out_dir: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads((out_dir / FACTS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
