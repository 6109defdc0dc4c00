"""A fast kind for running generated GitLab pipelines end to end (tests/integration/test_gitlab_ci_local.py).

Real builds take minutes each (a DIB guest ~4 min), too slow for a pipeline of several jobs. This
kind builds in milliseconds through the same CLI, pipeline, gate, ledger and publish code as the
real kinds (like tests/unit/test_toy_kind.py): its backend copies a rendered greeting (with the
runner, ``cp``), prepending its base's artifact when it builds on one (so a job that ``needs`` its
base fails without the base's artifacts); its verifier checks the greeting; its publish route puts
the artifact on a "shelf" directory ($KILN_SHELF). ``main`` is the ``kiln`` command with the kind
registered: the generated jobs' ``kiln build TARGET --publish`` runs through it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from builder import kinds
from builder.backends.base import collect_outputs
from builder.core.kind import Backend, BuildJob, BuildRun, CaseResult, ExpectedOutput, Kind, Output, VerifyJob
from builder.core.route import NO_FACTS, Candidate, Facts, Found, Publication, Route, Routed, TargetLike
from builder.host.command import Command
from builder.recipe import StrictModel

TEMPLATE_PATH = "ci-toy/greeting.txt.j2"
TEMPLATE = "{{ build.greeting | sh }} from {{ target.id | ident }}\n"


class CiToyBuild(StrictModel):
    release: str
    greeting: str = "hello"
    base: str | None = None  # a ci-toy recipe this one builds on (same arch)


class CiToyVerify(StrictModel):
    expect: str = "hello"


class CiToyPublish(StrictModel):
    shelf: str = "main"


class CiToyBackend(Backend):
    tool = "cp"

    def plan(self, job: BuildJob) -> BuildRun:
        output = job.out_dir / f"{job.target.slug}.txt"
        command = Command(("cp", str(job.render_dir / "greeting.txt"), str(output)))
        return BuildRun(
            self.tool, (command,), (ExpectedOutput(output, "greeting", "iso"),), job.out_dir.parent
        )

    def run(self, run: BuildRun, job: BuildJob, runner: Any, log: Path, on_step: Any) -> list[Any]:
        output = run.outputs[0].path
        output.parent.mkdir(parents=True, exist_ok=True)
        [command] = run.commands
        runner.run(command.argv, log_path=log)
        for base in job.dependencies.values():  # the base's artifact, from its job's artifacts
            output.write_bytes(base.read_bytes() + output.read_bytes())
        return collect_outputs(run, log)

    def tool_versions(self, runner: Any) -> dict[str, str]:
        return {"cp": "coreutils"}


class CiToyVerifier:
    def __init__(self, settings: CiToyVerify):
        self.settings = settings

    def verify(self, job: VerifyJob) -> list[CaseResult]:
        text = job.manifest.path_of(job.manifest.artifacts[0]).read_text()
        ok = self.settings.expect in text
        return [CaseResult(job.target.id, "greets", 0.0, ok, "" if ok else f"no {self.settings.expect!r}")]


class ShelfRoute(Route):
    """A toy destination: a directory per shelf under $KILN_SHELF, one greeting per target and the
    input digest it was built from beside it (what :meth:`published_at` answers from)."""

    name = "shelf"
    destination = "the shelf"

    def publish(self, items: list[Routed], publishers: Any, on_step: Any) -> list[Publication]:
        out = []
        for item in items:
            manifest = item.manifest
            place = _shelf_root() / item.settings.shelf / manifest.target.replace(":", "_")
            place.parent.mkdir(parents=True, exist_ok=True)
            on_step(f"shelf: {manifest.target} -> {place}.txt")
            shutil.copyfile(manifest.path_of(manifest.artifacts[0]), f"{place}.txt")
            Path(f"{place}.digest").write_text(manifest.digest)
            out.append(Publication(manifest.target, "greeting", "shelf", f"{place}.txt"))
        return out

    def rename_for_candidate(self, identity: Any, data: dict[str, Any], candidate: Candidate) -> None:
        data["shelf"] = data["shelf"] + candidate.repo_suffix  # a candidate's own shelf: main-mr7

    def destination_key(self, target: TargetLike) -> str | None:
        return target.publish.shelf

    def published_at(
        self,
        target: TargetLike,
        publishers: Any,
        candidate: Candidate | None = None,
        facts: Facts = NO_FACTS,
    ) -> Found | None:
        shelf = self.settings_for(target, target.publish, candidate).shelf
        place = _shelf_root() / shelf / target.id.replace(":", "_")
        digest = Path(f"{place}.digest")
        if not digest.is_file() or digest.read_text() != target.digest:
            return None
        return Found(f"{place}.txt", digest.stat().st_mtime)


def _shelf_root() -> Path:
    return Path(os.environ["KILN_SHELF"])


SHELF = ShelfRoute()

KIND = Kind(
    name="ci-toy",
    builder=None,
    build_model=CiToyBuild,
    verify_model=CiToyVerify,
    publish_model=CiToyPublish,
    outputs=lambda build, arch: (Output("greeting.txt", TEMPLATE_PATH),),
    base=lambda build: (build.base, None) if build.base else None,
    base_kinds=("ci-toy",),
    backend=CiToyBackend(),
    verifier=lambda verify: CiToyVerifier(verify),
    route=SHELF,
    description="a fast kind for pipeline tests",
)


def install() -> None:
    kinds.register(KIND)


def main(argv: list[str] | None = None) -> int:
    from builder.cli import main as kiln_main

    install()
    return kiln_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
