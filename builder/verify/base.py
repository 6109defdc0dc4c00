"""The verifier interface: a verifier takes a build's manifest and returns test cases (JUnit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..host.run import Runner
    from ..manifest import BuildManifest
    from ..pipeline.graph import Target
    from .junit import CaseResult

Step = Callable[[str], None]


@dataclass(frozen=True)
class VerifyJob:
    target: Target
    manifest: BuildManifest
    work_dir: Path
    runner: Runner
    on_step: Step
    gpu: bool = False  # `kiln build --gpu`: run the checks that need a GPU (skipped otherwise)


class Verifier(Protocol):
    def verify(self, job: VerifyJob) -> list[CaseResult]: ...
