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
from builder.backends.base import BuildJob, BuildRun, Command, ExpectedOutput, collect_outputs
from builder.kinds.base import Kind, Output
from builder.pipeline import publish as publishing
from builder.recipe import StrictModel
from builder.verify.base import VerifyJob
from builder.verify.junit import CaseResult

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


class CiToyBackend:
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
    publish_route="shelf",
    description="a fast kind for pipeline tests",
)


def _to_shelf(items: list[tuple[Any, Any]], publishers: Any, on_step: Any) -> list[publishing.Publication]:
    shelf_root = Path(os.environ["KILN_SHELF"])
    out = []
    for manifest, settings in items:
        source = manifest.path_of(manifest.artifacts[0])
        destination = shelf_root / settings.shelf / f"{manifest.target.replace(':', '_')}.txt"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        out.append(publishing.Publication(manifest.target, "greeting", "shelf", str(destination)))
    return out


def _shelf_candidate(manifest: Any, data: dict[str, Any], candidate: Any) -> None:
    data["shelf"] = data["shelf"] + candidate.repo_suffix  # a candidate's own shelf: main-mr7


def install() -> None:
    kinds.register(KIND)
    publishing._ROUTES["shelf"] = _to_shelf
    publishing.CANDIDATE_NAMES["shelf"] = _shelf_candidate


def main(argv: list[str] | None = None) -> int:
    from builder.cli import main as kiln_main

    install()
    return kiln_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
