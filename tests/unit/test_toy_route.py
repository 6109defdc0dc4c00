"""A publish route defined outside builder/ (tests/support/ci_toy.py's shelf) works everywhere a
built-in one does: it publishes a kind's artifact, answers "is this digest published here", takes a
candidate's names and gives generated jobs their ``resource_group``: nothing in builder/ names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builder import kinds
from builder.cli import main
from builder.core.route import Candidate
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
