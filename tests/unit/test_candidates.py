"""Merge requests publish under candidate names (issue 14): site.yaml ``candidates:``, ``kiln build
--publish --candidate ID``, ``kiln pipeline --candidate ID``; a candidate never counts as published
to production. The guest-image/dib kind runs with the fake backend (tests/support/fakes.py) and a
recording Glance route, as tests/unit/test_build.py does."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.cli import main
from builder.core.route import Found, Route
from builder.errors import InvalidInput
from builder.kinds import guest_dib
from builder.ledger import Ledger
from builder.pipeline import gitlab
from builder.pipeline import publish as publishing
from builder.publishers.glance import default_image_name
from builder.publishers.routes import GLANCE, REGISTRY
from builder.publishers.routes import REPO as REPO_ROUTE
from builder.recipe import GlancePublish, RegistryPublish, RepoPublish, StrictModel
from builder.siteconfig import CandidateSite, Downstream, GitLabSite
from tests.support.fakes import FakeImageBackend, swapped_kind
from tests.support.recipes import MINIMAL_GUEST
from tests.unit.test_gitlab_pipeline import REPO, _examples, _jobs, _schema_errors

GUEST = MINIMAL_GUEST + "publish:\n  glance: {visibility: public}\n"
TARGET = "g:bookworm:x86_64"


@pytest.fixture
def fake_backend():
    backend = FakeImageBackend()
    with swapped_kind(guest_dib.KIND, backend=backend, verifier=lambda verify: None):
        yield backend


@pytest.fixture
def glance_names(monkeypatch):
    """Publishing to Glance recorded instead of done: the image name each call publishes under;
    asked, the stand-in answers from what was published to it, by name."""
    names: list[str] = []
    held: set[tuple[str, str, str]] = set()

    def route(items, publishers, on_step):
        out = []
        for manifest, settings in ((i.manifest, i.settings) for i in items):
            names.append(settings.glance.image_name or default_image_name(manifest))
            held.add((manifest.target, manifest.digest, names[-1]))
            out.append(publishing.Publication(manifest.target, manifest.artifacts[0].name, "glance", "id"))
        return out

    def published_at(target, publishers, candidate=None, facts=None):
        glance = GLANCE.settings_for(target, target.publish, candidate).glance
        name = glance.image_name or default_image_name(target)
        return Found(name) if (target.id, target.digest, name) in held else None

    monkeypatch.setattr(GLANCE, "publish", route)
    monkeypatch.setattr(GLANCE, "published_at", published_at)
    return names


def _build(workspace, ledger: Path, capsys, *argv: str) -> tuple[int, list[dict]]:
    code = main(["--root", str(workspace.root), "--ledger", str(ledger), "build", "g", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)["targets"]


def test_a_published_candidate_does_not_let_the_default_branch_skip_publishing_to_production(
    workspace, write, tmp_path, fake_backend, glance_names, capsys
):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    code, [mr] = _build(workspace, ledger_path, capsys, "--publish", "--candidate", "42")
    assert code == 0 and mr["status"] == "built"
    assert glance_names == ["g bookworm x86_64-mr42"]
    assert mr["published"][0]["candidate"] == "42"
    # The same merge request again: its candidate is published, nothing to do.
    code, [again] = _build(workspace, ledger_path, capsys, "--publish", "--candidate", "42")
    assert code == 0 and again["status"] == "skipped"
    # The default branch: the same digest is reused, and published under the production name.
    code, [merged] = _build(workspace, ledger_path, capsys, "--publish")
    assert code == 0 and merged["status"] == "reused"
    assert glance_names == ["g bookworm x86_64-mr42", "g bookworm x86_64"]
    assert fake_backend.built == [TARGET]  # built once, published twice under two names
    code, [done] = _build(workspace, ledger_path, capsys, "--publish")
    assert done["status"] == "skipped"


def test_the_ledger_records_a_candidate_publication_as_the_candidates_and_kiln_pipeline_still_builds_it(
    workspace, write, tmp_path, fake_backend, glance_names, capsys
):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    assert _build(workspace, ledger_path, capsys, "--publish", "--candidate", "7")[0] == 0
    with Ledger(ledger_path) as ledger:
        [build] = ledger.builds(TARGET)
        [artifact] = ledger.artifacts(build.id)
        assert [p["publisher"] for p in ledger.publications(artifact.id)] == ["glance:candidate:7"]
        assert ledger.published(build.id, "7") and not ledger.published(build.id)
        assert ledger.published_digests() == {}  # stale for production: the next pipeline builds it
    assert _build(workspace, ledger_path, capsys, "--publish")[0] == 0
    with Ledger(ledger_path) as ledger:
        assert list(ledger.published_digests()) == [TARGET]


def test_site_yaml_candidates_name_the_suffixes(
    workspace, write, tmp_path, fake_backend, glance_names, capsys
):
    write("recipes/g.yaml", GUEST)
    write("site.yaml", 'candidates: {image_suffix: ".candidate-{id}", repo_suffix: "-c{id}"}\n')
    code, _ = _build(workspace, tmp_path / "l.sqlite", capsys, "--publish", "--candidate", "mr-3")
    assert code == 0 and glance_names == ["g bookworm x86_64.candidate-mr-3"]


def test_a_suffix_without_the_id_or_with_unfit_characters_is_refused_by_site_yaml():
    for bad in ({"image_suffix": "-candidate"}, {"repo_suffix": "_MR{id}"}, {"image_suffix": "-{id};x"}):
        with pytest.raises(ValueError):
            CandidateSite.model_validate(bad)


def test_a_candidate_id_unfit_for_a_name_is_invalid_input_before_anything_builds(
    workspace, write, tmp_path, fake_backend, capsys
):
    write("recipes/g.yaml", GUEST)
    argv = ["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite")]
    assert main([*argv, "build", "g", "--publish", "--candidate", "42; rm -rf /"]) == 1
    assert main([*argv, "pipeline", "-o", str(tmp_path / "c.yml"), "--candidate", "$(id)"]) == 1
    assert fake_backend.built == [] and not (tmp_path / "c.yml").exists()


ROUTES = {"glance": GLANCE, "registry": REGISTRY, "repo": REPO_ROUTE}


class Shelf(Route):
    name = "shelf"  # no candidate names of its own


class _AllRoutes(StrictModel):
    glance: GlancePublish | None = None
    registry: RegistryPublish | None = None
    repo: RepoPublish | None = None


def test_every_route_gets_candidate_names_and_never_the_production_ones():
    manifest = SimpleNamespace(target="c:12:x86_64", recipe="c", release="12", variant=None, arch="x86_64")
    candidate = publishing.Candidate("42", *CandidateSite().suffixes("42"))

    def renamed(route: str, **settings):
        return ROUTES[route].settings_for(manifest, _AllRoutes(**settings), candidate)

    assert (
        renamed("glance", glance=GlancePublish(image_name="Debian 12")).glance.image_name == "Debian 12-mr42"
    )
    assert renamed("glance", glance=GlancePublish()).glance.image_name == "c 12 x86_64-mr42"
    registry = renamed(
        "registry", registry=RegistryPublish(repository="kiln/c", tags=["12", "latest"])
    ).registry
    assert registry.tags == ["12-mr42", "latest-mr42"]
    assert registry.repository == "kiln/c"  # the tags differ, the repository is the same
    assert renamed("repo", repo=RepoPublish(repo="kiln")).repo.repo == "kiln-mr42"


def test_a_route_without_candidate_names_refuses_to_publish_a_candidate():
    manifest = SimpleNamespace(target="c:12:x86_64")
    candidate = publishing.Candidate("42", "-mr42", "-mr42")
    with pytest.raises(InvalidInput, match="c:12:x86_64: the shelf route has no candidate names"):
        Shelf().settings_for(manifest, _AllRoutes(), candidate)


def test_a_candidate_name_over_a_routes_limit_is_invalid_input_naming_the_setting():
    manifest = SimpleNamespace(target="c:12:x86_64", recipe="c", release="12", variant=None, arch="x86_64")
    candidate = publishing.Candidate("42", "-mr42", "-" + "x" * 70)
    with pytest.raises(InvalidInput, match=r"c:12:x86_64: candidate 42 name for publish\.repo\.repo"):
        REPO_ROUTE.settings_for(manifest, _AllRoutes(repo=RepoPublish()), candidate)


@pytest.fixture(scope="module")
def examples():
    return _examples()


def test_merge_request_pipelines_run_kiln_build_publish_candidate_with_their_own_resource_groups(
    tmp_path, examples
):
    stale = gitlab.select_stale(examples, {})
    [production] = gitlab.generate(stale, GitLabSite())
    [mr] = gitlab.generate(stale, GitLabSite(), candidate="42")
    for name, job in _jobs(mr.document).items():
        assert job["script"] == [f"kiln build {job['variables']['KILN_TARGET']} --publish --candidate 42"]
        if "resource_group" in job:
            assert job["resource_group"] == production.document[name]["resource_group"] + "@candidate-42"
    (tmp_path / "child.yml").write_text(mr.text)
    assert _schema_errors(tmp_path / "child.yml") == ""


def test_the_repositorys_merge_request_pipeline_generates_candidate_jobs():
    ci = (REPO / ".gitlab-ci.yml").read_text()
    assert '--candidate "$CI_MERGE_REQUEST_IID"' in ci
    assert "--no-publish" not in ci.split("kiln-generate:", 1)[1].split("kiln-build:", 1)[0]


def test_the_downstream_trigger_runs_once_after_the_builds_with_the_candidate_passed_along(examples):
    site = GitLabSite(downstream=Downstream(project="ops/deploy-test"))
    [one] = gitlab.generate(gitlab.select_stale(examples, {}), site, candidate="42")
    assert one.document["stages"] == ["build", "downstream"]
    downstream = one.document["kiln-downstream"]
    assert downstream["trigger"]["project"] == "ops/deploy-test"
    assert downstream["variables"] == {"KILN_CANDIDATE": "42"}
    [none] = gitlab.generate(gitlab.select_stale(examples, {}), site, publish=False)
    assert "kiln-downstream" not in none.document


def test_a_split_pipeline_triggers_the_downstream_project_once_from_the_file_above_the_parts(
    tmp_path, examples
):
    site = GitLabSite(downstream=Downstream(project="ops/deploy-test"))
    files = gitlab.generate(gitlab.select_stale(examples, {}), site, max_bytes=4000)
    assert len(files) > 2
    assert all("kiln-downstream" not in f.document for f in files)
    top = gitlab.dispatcher(files, "child", "kiln-generate", gitlab.downstream_jobs(site))
    assert top["stages"] == ["parts", "build", "downstream"]
    assert [name for name in top if "downstream" in name] == ["kiln-downstream"]
    paths = []
    for f in files:
        paths.append(tmp_path / f"child-{f.name}.yml")
        paths[-1].write_text(f.text)
    paths.append(tmp_path / "child.yml")
    paths[-1].write_text(gitlab.render_yaml(top))
    assert _schema_errors(*paths) == ""


def test_kiln_pipeline_split_writes_the_downstream_trigger_into_the_top_file_only(tmp_path, write):
    site = write("site.yaml", "gitlab: {downstream: {project: ops/deploy-test}}\n")  # the session's ports
    out = tmp_path / "child.yml"
    argv = ["--root", str(REPO), "--site", str(site), "--ledger", str(tmp_path / "l.sqlite"), "pipeline"]
    assert main([*argv, "-o", str(out), "--max-bytes", "4000", "--json"]) == 0
    texts = {p.name: p.read_text() for p in tmp_path.glob("child*.yml")}
    assert len(texts) > 2
    assert [name for name, text in texts.items() if "kiln-downstream" in text] == ["child.yml"]
