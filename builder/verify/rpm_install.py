"""Before an RPM rebuild is published: each binary package is for the target's arch, carries the
recipe's release suffix, and installs (``rpm --root`` into an empty directory, ``--nodeps``: the
root has no EL base; dnf against the published repo is the end-to-end check)."""

from __future__ import annotations

import shutil
import time

from ..core.kind import CaseResult, VerifyJob


class RpmInstallVerifier:
    def verify(self, job: VerifyJob) -> list[CaseResult]:
        target, manifest, runner = job.target, job.manifest, job.runner
        suffix = str(target.build.release_suffix)
        suffix = suffix if suffix.startswith(".") else "." + suffix
        cases = []
        rpms = [manifest.path_of(a) for a in manifest.artifacts if a.type == "rpm"]
        for rpm in rpms:
            started = time.monotonic()
            said = runner.capture(["rpm", "-qp", "--qf", "%{ARCH} %{RELEASE}", str(rpm)])
            arch, _, release = said.stdout.strip().partition(" ")
            problems = []
            if arch not in (target.arch.rpm, "noarch"):
                problems.append(f"Architecture {arch or '?'}, not {target.arch.rpm}")
            if not release.endswith(suffix):
                problems.append(f"Release {release or '?'} does not end with {suffix}")
            cases.append(
                CaseResult(target.id, f"header {rpm.name}", time.monotonic() - started, not problems,
                           "; ".join(problems), said.stdout + said.stderr)
            )  # fmt: skip
        root = job.work_dir / "installroot"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        started = time.monotonic()
        said = runner.capture(
            ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts",
             "--ignorearch", *map(str, rpms)],
            timeout=600,
        )  # fmt: skip
        job.on_step(f"{target.id}: verify: rpm -i into an empty root: exit {said.returncode}")
        cases.append(
            CaseResult(target.id, "install", time.monotonic() - started, said.ok,
                       "" if said.ok else f"rpm -i exited {said.returncode}", said.stdout + said.stderr)
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
        return cases
