"""The verifier for disk images: boot the image in QEMU (verify/boot.py) and report JUnit cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.kind import CaseResult, VerifyJob
from .boot import boot_check


class BootVerifier:
    def __init__(self, settings: Any):  # the recipe's verify.boot (recipe.BootVerify)
        self.settings = settings

    def verify(self, job: VerifyJob) -> list[CaseResult]:

        target, manifest, boot = job.target, job.manifest, self.settings
        image = next(manifest.path_of(a) for a in manifest.artifacts if a.format == "qcow2")
        job.on_step(f"verify: booting {target.id} (timeout {boot.timeout_s}s)")
        result = boot_check(
            image,
            target.arch,
            job.work_dir,
            timeout_s=boot.timeout_s,
            memory_mb=boot.memory_mb,
            checks=list(boot.checks),
            ssh_user=str(getattr(target.build, "ssh_username", "debian")),
            runner=job.runner,
        )
        marker_seen = result.passed or bool(result.checks)  # checks only run after the marker
        cases = [
            CaseResult(
                target.id,
                f"boot ({result.accelerator})",
                result.seconds,
                marker_seen,
                "" if marker_seen else f"{result.reason} (serial log: {result.serial_log})",
                _tail(result.serial_log),
            )
        ]
        cases += [
            CaseResult(target.id, command, 0.0, ok, "" if ok else "exit non-zero", output)
            for command, ok, output in result.checks
        ]
        return cases


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
