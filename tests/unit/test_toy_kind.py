"""The test of the kind seam: a kind defined here, in the test, validates, plans, renders, builds,
verifies and publishes through the same CLI and pipeline as the real kinds, touching no other module.

Its recipe model, capability rule, template, backend, verifier and publish route are all below; the
only thing outside this file it changes is the registry (register/unregister) and the test
workspace's templates/ directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from builder import kinds
from builder.arch import Arch
from builder.backends.base import collect_outputs
from builder.capabilities import Rule
from builder.cli import main
from builder.core.kind import Backend, BuildJob, BuildRun, CaseResult, ExpectedOutput, Kind, Output, VerifyJob
from builder.core.route import Found, Publication, Route, Routed
from builder.host.command import Command
from builder.recipe import StrictModel


class ToyBuild(StrictModel):
    release: str
    greeting: str = "hello"
    words: list[str] = Field(default_factory=list)


class ToyVerify(StrictModel):
    expect: str = "hello"


class ToyPublish(StrictModel):
    shelf: str | None = None


class ToyBackend(Backend):
    """Copies the rendered greeting into the output, with the runner (cp), as a real backend would."""

    tool = "cp"

    def plan(self, job: BuildJob) -> BuildRun:
        output = job.out_dir / f"{job.target.slug}.txt"
        command = Command(("cp", str(job.render_dir / "greeting.txt"), str(output)))
        return BuildRun(
            self.tool, (command,), (ExpectedOutput(output, "greeting", "iso"),), job.out_dir.parent
        )

    def run(self, run: BuildRun, job: BuildJob, runner: Any, log: Path, on_step: Any) -> list[Any]:
        run.outputs[0].path.parent.mkdir(parents=True, exist_ok=True)
        [command] = run.commands
        runner.run(command.argv, log_path=log)
        return collect_outputs(run, log)

    def tool_versions(self, runner: Any) -> dict[str, str]:
        return {"cp": "coreutils"}


class ToyVerifier:
    def __init__(self, settings: ToyVerify):
        self.settings = settings

    def verify(self, job: VerifyJob) -> list[CaseResult]:
        text = job.manifest.path_of(job.manifest.artifacts[0]).read_text()
        ok = self.settings.expect in text
        return [CaseResult(job.target.id, "greets", 0.0, ok, "" if ok else f"no {self.settings.expect!r}")]


class ListRoute(Route):
    """A toy route: what it publishes goes on a list (``shelved``), (target, shelf) each."""

    name = "shelf"
    destination = "the list"

    def __init__(self) -> None:
        self.shelved: list[tuple[str, str]] = []
        self.held: dict[tuple[str, str], str] = {}  # (target, input digest) -> shelf

    def publish(self, items: list[Routed], publishers: Any, on_step: Any) -> list[Publication]:
        self.shelved += [(item.manifest.target, item.settings.shelf) for item in items]
        self.held.update({(i.manifest.target, i.manifest.digest): i.settings.shelf for i in items})
        return [Publication(item.manifest.target, "greeting", "shelf", item.settings.shelf) for item in items]

    def published_at(
        self, target: Any, publishers: Any, candidate: Any = None, facts: Any = None
    ) -> Found | None:
        shelf = self.held.get((target.id, target.digest))
        return Found(shelf) if shelf is not None and candidate is None else None


SHELF = ListRoute()

TOY = Kind(
    name="toy",
    builder=None,
    build_model=ToyBuild,
    verify_model=ToyVerify,
    publish_model=ToyPublish,
    outputs=lambda build, arch: (Output("greeting.txt", "toy/greeting.txt.j2"),),
    rules=(
        Rule(
            arch=Arch.AARCH64,
            distro=None,
            refuses=lambda b: b.greeting == "bonjour",
            key=("greeting",),
            reason="toys do not speak French on aarch64",
        ),
    ),
    backend=ToyBackend(),
    verifier=lambda verify: ToyVerifier(verify),
    route=SHELF,
    description="a toy defined in a test",
)

TEMPLATE = (
    "{{ build.greeting | sh }} from {{ target.id | ident }}\n"
    "{% for word in build.words %}{{ word | sh }}\n{% endfor %}"
)
RECIPE = """\
name: toy-one
kind: toy
arches: [x86_64, aarch64]
build:
  release: "1"
  greeting: hello
  words: [alpha, beta]
publish:
  shelf: top
"""


@pytest.fixture
def toy(workspace):
    kinds.register(TOY)
    SHELF.shelved.clear()
    SHELF.held.clear()  # a fresh destination per test
    template = workspace.root / "templates" / "toy" / "greeting.txt.j2"
    template.parent.mkdir()
    template.write_text(TEMPLATE)
    yield SHELF.shelved
    kinds.unregister("toy")


def _kiln(workspace, tmp_path: Path, *argv: str) -> list[str]:
    return ["--root", str(workspace.root), "--ledger", str(tmp_path / "ledger.sqlite"), *argv]


def test_a_kind_defined_in_a_test_validates_plans_renders_builds_verifies_and_publishes(
    toy, workspace, write, tmp_path, capsys
):
    write("recipes/toy.yaml", RECIPE)
    assert main(_kiln(workspace, tmp_path, "validate", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == 2
    assert main(_kiln(workspace, tmp_path, "plan", "--json")) == 0
    planned = {t["id"]: t["kind"] for t in json.loads(capsys.readouterr().out)["targets"]}
    assert planned == {"toy-one:1:x86_64": "toy", "toy-one:1:aarch64": "toy"}
    assert main(_kiln(workspace, tmp_path, "render", "-o", str(tmp_path / "out"), "--json")) == 0
    capsys.readouterr()
    rendered = (tmp_path / "out/toy-one_1_x86_64/greeting.txt").read_text()
    assert rendered == "hello from toy-one:1:x86_64\nalpha\nbeta\n"
    assert (
        main(_kiln(workspace, tmp_path, "build", "toy-one", "--arch", "x86_64", "--publish", "--json")) == 0
    )
    [outcome] = json.loads(capsys.readouterr().out)["targets"]
    assert outcome["status"] == "built" and outcome["verification"] == "passed (1 cases)"
    manifest = json.loads(Path(outcome["manifest"]).read_text())
    assert manifest["kind"] == "toy" and manifest["build"]["words"] == ["alpha", "beta"]
    assert (Path(outcome["manifest"]).parent / manifest["artifacts"][0]["path"]).read_text() == rendered
    assert toy == [("toy-one:1:x86_64", "top")]
    assert [p["publisher"] for p in outcome["published"]] == ["shelf"]


def test_the_toy_kinds_own_schema_and_rules_apply(toy, workspace, write, tmp_path, capsys):
    write(
        "recipes/toy.yaml", RECIPE.replace("greeting: hello", "greeting: bonjour").replace("words", "wrods")
    )
    assert main(_kiln(workspace, tmp_path, "validate", "--json")) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert problem["key"] == "build.wrods" and problem["line"] == 7 and "words" in problem["message"]
    write("recipes/toy.yaml", RECIPE.replace("greeting: hello", "greeting: bonjour"))
    assert main(_kiln(workspace, tmp_path, "validate", "--json")) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert problem["key"] == "build.greeting" and "toys do not speak French on aarch64" in problem["message"]


def test_without_the_toy_kind_registered_the_recipe_is_refused(workspace, write, tmp_path, capsys):
    write("recipes/toy.yaml", RECIPE)
    assert main(_kiln(workspace, tmp_path, "validate", "--json")) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert problem["key"] == "kind" and "guest-image" in problem["message"]
