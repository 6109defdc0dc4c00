"""Stand-ins for the slow parts of a build (the backend, the verifier, the publishers), swapped in
through the kinds registry exactly as a new kind would be registered."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from builder import kinds
from builder.backends.base import collect_outputs
from builder.core.kind import Backend, BuildJob, BuildRun, CaseResult, ExpectedOutput, Kind, VerifyJob
from builder.host.command import Command


@dataclass
class FakeImageBackend(Backend):
    """Writes a small 'image' whose bytes name the target's digest; records what it built."""

    tool: str = "fake-image-builder"
    built: list[str] = field(default_factory=list)
    fail_with: Exception | None = None

    def plan(self, job: BuildJob) -> BuildRun:
        image = job.out_dir / "image" / f"{job.target.slug}.qcow2"
        command = Command(("fake-image-builder", "-o", str(image), job.target.id), cwd=job.out_dir)
        return BuildRun(
            self.tool,
            (command,),
            (ExpectedOutput(image, "image", "disk-image", "qcow2"),),
            job.out_dir.parent,
        )

    def run(self, run: BuildRun, job: BuildJob, runner: Any, log: Path, on_step: Any) -> list[Any]:
        if self.fail_with is not None:
            raise self.fail_with
        self.built.append(job.target.id)
        assert (job.render_dir / "build.json").exists()
        image = run.outputs[0].path
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"QFI\xfb" + job.target.digest.encode())
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake build\n")
        return collect_outputs(run, log)

    def tool_versions(self, runner: Any) -> dict[str, str]:
        return {"diskimage-builder": "test"}


@dataclass
class FakeVerifier:
    passes: bool = True
    runs: list[str] = field(default_factory=list)

    def verify(self, job: VerifyJob) -> list[CaseResult]:
        self.runs.append(job.target.id)
        message = "" if self.passes else "no boot marker within 30s"
        return [CaseResult(job.target.id, "boot (fake)", 0.1, self.passes, message)]


@contextmanager
def swapped_kind(kind: Kind, **changes: Any) -> Iterator[Kind]:
    """Register ``kind`` with ``changes`` (backend=..., verifier=...) for the duration."""
    swapped = replace(kind, **changes)
    kinds.register(swapped)
    try:
        yield swapped
    finally:
        kinds.register(kind)
