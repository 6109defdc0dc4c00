"""A publish route defined outside builder/ (tests/support/ci_toy.py's shelf) works everywhere a
built-in one does: it publishes a kind's artifact, answers "is this digest published here", takes a
candidate's names and gives generated jobs their ``resource_group``: nothing in builder/ names it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from builder import kinds
from builder.cli import main
from builder.core.route import Candidate, Route
from builder.errors import EnvironmentProblem
from builder.ledger import Ledger
from builder.pipeline.destinations import published_at
from builder.pipeline.graph import load_targets
from builder.workspace import PACKAGE_ROOT
from tests.support import ci_toy

RECIPE = """\
name: toy-solo
kind: ci-toy
arches: [x86_64, ppc64le]
build: {release: "1"}
publish: {shelf: main}
"""
X86 = "toy-solo:1:x86_64"
CHILD = """\
name: toy-child
kind: ci-toy
arches: [x86_64]
build: {release: "1", base: toy-solo}
publish: {shelf: main}
"""


@pytest.fixture
def shelf(workspace, write, tmp_path, monkeypatch):
    ci_toy.install()
    write("recipes/toy.yaml", RECIPE)
    write(f"templates/{ci_toy.TEMPLATE_PATH}", ci_toy.TEMPLATE)
    monkeypatch.setenv("KILN_SHELF", str(tmp_path / "shelf"))
    yield tmp_path / "shelf"
    kinds.unregister("ci-toy")


def _kiln(workspace, tmp_path: Path, *argv: str) -> list[str]:
    return ["--root", str(workspace.root), "--ledger", str(tmp_path / "ledger.sqlite"), *argv]


def _target(workspace, target_id: str):
    targets, problems = load_targets([workspace.root / "recipes" / "toy.yaml"], workspace)
    assert problems == []
    [target] = [t for t in targets if t.id == target_id]
    return target


def test_nothing_in_builder_names_the_toy_route():
    sources = (PACKAGE_ROOT / "builder").rglob("*.py")
    assert not [p for p in sources if "shelf" in p.read_text().lower()]


def test_the_toy_route_publishes_the_kinds_artifact_and_the_ledger_records_it(
    shelf, workspace, tmp_path, capsys
):
    argv = _kiln(workspace, tmp_path, "build", "toy-solo", "--arch", "x86_64", "--publish", "--json")
    assert main(argv) == 0
    [outcome] = json.loads(capsys.readouterr().out)["targets"]
    assert [(p["publisher"], p["location"]) for p in outcome["published"]] == [
        ("shelf", str(shelf / "main" / "toy-solo_1_x86_64.txt"))
    ]
    assert (shelf / "main" / "toy-solo_1_x86_64.txt").read_text() == "hello from toy-solo:1:x86_64\n"
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert list(ledger.published_digests()) == [X86]
        assert list(ledger.published_digests()[X86]) == [_target(workspace, X86).digest]


def test_the_toy_route_answers_whether_a_digest_is_published_there(shelf, workspace, tmp_path, capsys):
    target = _target(workspace, X86)
    assert published_at(target, publishers=None) is None  # nothing on the shelf yet
    assert main(_kiln(workspace, tmp_path, "build", "toy-solo", "--arch", "x86_64", "--publish", "-q")) == 0
    capsys.readouterr()
    found = published_at(target, publishers=None)
    assert found is not None and found.where == str(shelf / "main" / "toy-solo_1_x86_64.txt")
    (shelf / "main" / "toy-solo_1_x86_64.digest").write_text("0" * 64)  # another build's digest there
    assert published_at(target, publishers=None) is None

    # Asked by `kiln pipeline --ask-destinations` with a fresh ledger: the published target gets no job.
    (shelf / "main" / "toy-solo_1_x86_64.digest").write_text(target.digest)
    out = tmp_path / "child.yml"
    fresh = ["--root", str(workspace.root), "--ledger", str(tmp_path / "other.sqlite")]
    assert main([*fresh, "pipeline", "--ask-destinations", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [a["destination"] for a in report["destinations"]["asked"]] == ["the shelf", "the shelf"]
    assert [j["target"] for j in report["jobs"]] == ["toy-solo:1:ppc64le"]


def test_a_candidate_publishes_under_the_toy_routes_candidate_names_only(shelf, workspace, tmp_path, capsys):
    argv = _kiln(workspace, tmp_path, "build", "toy-solo", "--arch", "x86_64", "--publish", "-q")
    assert main([*argv, "--candidate", "7"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in shelf.iterdir()) == ["main-mr7"]  # never the production shelf
    target = _target(workspace, X86)
    assert published_at(target, publishers=None) is None
    assert published_at(target, publishers=None, candidate=Candidate("7", "-mr7", "-mr7")) is not None


def test_generated_jobs_take_the_toy_routes_resource_group(shelf, workspace, tmp_path, capsys):
    out = tmp_path / "child.yml"
    assert main(_kiln(workspace, tmp_path, "pipeline", "-o", str(out), "-q")) == 0
    jobs = yaml.safe_load(out.read_text())
    groups = {name: job.get("resource_group") for name, job in jobs.items() if name.startswith("toy-solo")}
    assert groups == {"toy-solo_1_x86_64": "shelf:main", "toy-solo_1_ppc64le": "shelf:main"}


def test_a_route_that_cannot_say_what_its_destination_holds_is_refused_at_registration():
    class Mute(ci_toy.ShelfRoute):
        published_at = Route.published_at  # inherits the interface's: cannot answer

    class Nameless(ci_toy.ShelfRoute):
        destination = ""

    for route in (Mute(), Nameless()):
        with pytest.raises(ValueError, match="must name its destination and answer published_at"):
            kinds.register(replace(ci_toy.KIND, name="ci-mute", route=route))
        assert "ci-mute" not in kinds.names()


def test_a_fresh_ledger_asks_the_destination_and_builds_nothing_it_holds(
    shelf, workspace, tmp_path, capsys, monkeypatch
):
    first = _kiln(workspace, tmp_path, "build", "toy-solo", "--arch", "x86_64", "--publish", "-q")
    assert main(first) == 0
    capsys.readouterr()
    placed = shelf / "main" / "toy-solo_1_x86_64.txt"
    placed.write_text("as published\n")  # a rebuild would overwrite it
    # Another runner: its own ledger and build root, the same destination.
    other = ["--root", str(workspace.root), "--ledger", str(tmp_path / "runner2.sqlite")]
    monkeypatch.setenv("KILN_BUILD_ROOT", str(tmp_path / "runner2"))
    argv = [*other, "build", "toy-solo", "--arch", "x86_64"]
    assert main([*argv, "--publish", "--json"]) == 0
    [outcome] = json.loads(capsys.readouterr().out)["targets"]
    assert outcome["status"] == "skipped" and outcome["note"] == f"in the shelf: {placed}"
    assert (
        placed.read_text() == "as published\n" and not (tmp_path / "runner2" / "toy-solo_1_x86_64").exists()
    )
    # --force builds (and publishes) all the same
    assert main([*argv, "--publish", "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"][0]["status"] == "built"
    assert placed.read_text() == "hello from toy-solo:1:x86_64\n"


def test_a_published_target_that_another_of_the_run_builds_on_is_built_for_it(
    shelf, workspace, write, tmp_path, capsys, monkeypatch
):
    write("recipes/toy-child.yaml", CHILD)
    assert main(_kiln(workspace, tmp_path, "build", "toy-solo", "--arch", "x86_64", "--publish", "-q")) == 0
    capsys.readouterr()
    other = ["--root", str(workspace.root), "--ledger", str(tmp_path / "runner2.sqlite")]
    monkeypatch.setenv("KILN_BUILD_ROOT", str(tmp_path / "runner2"))
    argv = [*other, "build", "toy-child", "--arch", "x86_64"]
    assert main([*argv, "--publish", "--json"]) == 0
    statuses = {o["target"]: o["status"] for o in json.loads(capsys.readouterr().out)["targets"]}
    # the shelf holds toy-solo's digest, but the shelf cannot hand its artifact back to the child
    assert statuses == {X86: "built", "toy-child:1:x86_64": "built"}


def test_a_destination_that_does_not_answer_fails_the_target_and_nothing_is_built(
    shelf, workspace, tmp_path, capsys, monkeypatch
):
    def down(*_args, **_kwargs):
        raise EnvironmentProblem("the shelf is not answering: connection refused")

    monkeypatch.setattr(ci_toy.ShelfRoute, "published_at", down)
    argv = _kiln(workspace, tmp_path, "build", "toy-solo", "--arch", "x86_64", "--publish", "--json")
    assert main(argv) != 0
    [outcome] = json.loads(capsys.readouterr().out)["targets"]
    assert outcome["status"] == "failed" and "the shelf is not answering" in outcome["error"]
    assert not (tmp_path / "shelf").exists()
