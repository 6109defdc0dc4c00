"""A split child pipeline, run part by part with gitlab-ci-local (issue 14).

Over GitLab's limit for one generated config, ``kiln pipeline`` writes one file per arch, then per
size (builder/pipeline/gitlab.py ``_split``), and ``child.yml`` becomes the dispatcher: its
``kiln-pipeline-parts`` job takes the parts from the parent's generate job
(``needs: [{pipeline: $PARENT_PIPELINE_ID, job: kiln-generate}]``) and one trigger job per part runs
each as its own child pipeline. gitlab-ci-local (4.65.0, and upstream since) ignores a
``needs:pipeline`` entry ("pipeline key not supported"), so the parts job would find no files: the
dispatcher itself cannot run here. What can: the parent's generate job, then each part file the
dispatcher lists, in its order, as a pipeline of its own in a clean state, all sharing one ledger
($KILN_LEDGER) and shelf as a site's runners do. tests/integration/test_gitlab_ci_local.py's throwaway
repo and fast kind, with more recipes: a chain of three per arch (toy-deep on toy-top on toy-base)
and x86_64-only recipes, and a site.yaml before_script that every part carries.

The limit is measured, not guessed: the ppc64le jobs with the header fit it exactly, so ppc64le is one
part and x86_64 (more jobs) is split by size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import yaml

from builder.ledger import Ledger
from builder.pipeline.gitlab import NOOP_JOB
from tests.integration.test_gitlab_ci_local import PARENT, _run_pipeline, ci_repo  # noqa: F401
from tests.support.hermetic import without_session_env
from tests.unit.test_gitlab_pipeline import _schema_errors

# The plan lists targets in recipe file order, dependencies first: toy-top and toy-deep (tower.yaml)
# come after the toy-solo recipes, so packing in order would separate the chain from toy-base; only
# following `needs:` keeps it together.
MORE_RECIPES = {
    "tower.yaml": """\
        name: toy-deep
        kind: ci-toy
        arches: [x86_64, ppc64le]
        build: {release: "1", greeting: hello deep, base: toy-top}
        publish: {shelf: main}
        """,
    **{
        f"solo{n}.yaml": f"""\
        name: toy-solo{n}
        kind: ci-toy
        arches: [x86_64]
        build: {{release: "1", greeting: hello alone {n}}}
        publish: {{shelf: main}}
        """
        for n in (2, 3, 4)
    },
}
SITE = """\
gitlab:
  before_script: ['echo "kiln part job for $KILN_TARGET"']
"""
CHAINS = {arch: [f"toy-{r}:1:{arch}" for r in ("base", "top", "deep")] for arch in ("x86_64", "ppc64le")}
SOLOS = [f"toy-solo{n}:1:x86_64" for n in ("", 2, 3, 4)]
TARGETS = sorted([*CHAINS["x86_64"], *CHAINS["ppc64le"], *SOLOS])
GENERATE_ONLY = PARENT[: PARENT.index("kiln-build:")]  # the parent's generate job, without its trigger


def _git(repo: Path, *args: str) -> None:
    git = ["git", "-C", str(repo), "-c", "user.name=kiln", "-c", "user.email=kiln@example.com"]
    subprocess.run([*git, *args], check=True)


def _commit(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "split test", "--allow-empty")


def _run_alone(ci: dict[str, Path], pipeline: str) -> str:
    """``pipeline`` as the repo's .gitlab-ci.yml, run from a clean gitlab-ci-local state (as GitLab
    runs a child pipeline: no artifacts but those its own jobs make)."""
    shutil.rmtree(ci["repo"] / ".gitlab-ci-local", ignore_errors=True)
    _commit(ci["repo"], {".gitlab-ci.yml": pipeline})
    return _run_pipeline(ci)


def _limit_fitting_the_ppc64le_jobs(ci: dict[str, Path]) -> int:
    """The bytes of a file holding the ppc64le jobs and the header (render_yaml: one line a key)."""
    probe = ci["repo"].parent / "probe" / "child.yml"
    env = {**without_session_env(dict(os.environ)), "PATH": f"{ci['bin']}:{os.environ['PATH']}",
           "KILN_LEDGER": str(ci["ledger"])}  # fmt: skip
    env.pop("KILN_ROOT", None)
    subprocess.run(
        ["kiln", "pipeline", "-o", str(probe)], cwd=ci["repo"], env=env, check=True, stdout=subprocess.DEVNULL
    )
    lines = probe.read_text().splitlines(keepends=True)
    keep = [line for line in lines if not line.startswith('"toy-') or "_ppc64le" in line.split(":", 1)[0]]
    return len("".join(keep))


def _jobs(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in document.items() if name not in ("stages", "default")}


def test_a_split_pipeline_run_part_by_part_builds_every_target_once_and_a_rerun_is_a_noop(ci_repo):  # noqa: F811
    repo = ci_repo["repo"]
    recipes = {f"recipes/{name}": textwrap.dedent(text) for name, text in MORE_RECIPES.items()}
    # gitlab-ci-local copies artifacts back into the checkout: keep generated files out of the next commit.
    ignore = (repo / ".gitignore").read_text() + "child*.yml\n"
    _commit(repo, {**recipes, "site.yaml": SITE, ".gitignore": ignore})
    limit = _limit_fitting_the_ppc64le_jobs(ci_repo)
    parent = GENERATE_ONLY.replace(
        "kiln pipeline -o child.yml", f"kiln pipeline -o child.yml --max-bytes {limit}"
    )
    assert parent != GENERATE_ONLY

    generated = _run_alone(ci_repo, parent)
    assert "split into 4 child pipelines" in generated, generated[-3000:]
    made = repo / ".gitlab-ci-local" / "artifacts" / "kiln-generate"
    dispatcher_file = made / "child.yml"
    dispatcher = yaml.safe_load(dispatcher_file.read_text())

    # The dispatcher: GitLab's schema, its parts from the parent's generate job, one trigger a part.
    parts_job = dispatcher["kiln-pipeline-parts"]
    assert parts_job["needs"] == [{"pipeline": "$PARENT_PIPELINE_ID", "job": "kiln-generate"}]
    triggers = {name: job for name, job in _jobs(dispatcher).items() if "trigger" in job}
    order = [job["trigger"]["include"][0]["artifact"] for job in triggers.values()]
    assert order == ["child-x86_64-1.yml", "child-x86_64-2.yml", "child-x86_64-3.yml", "child-ppc64le.yml"]
    assert sorted(parts_job["artifacts"]["paths"]) == sorted(order)
    assert sorted(p.name for p in made.glob("child-*.yml")) == sorted(order)  # the parent's artifacts
    for job in triggers.values():
        assert job["needs"] == ["kiln-pipeline-parts"]
        assert job["trigger"]["include"][0]["job"] == "kiln-pipeline-parts"
        assert job["trigger"]["strategy"] == "depend"
    assert _schema_errors(dispatcher_file, *(made / name for name in order)) == ""

    # The parts: each under the limit, with the header, its needs inside it, every target once.
    parts = {name: (made / name).read_text() for name in order}
    part_of: dict[str, str] = {}
    for name, text in parts.items():
        assert len(text.encode()) <= limit, name
        document = yaml.safe_load(text)
        assert document["default"]["before_script"] == ['echo "kiln part job for $KILN_TARGET"']
        jobs = _jobs(document)
        for job in jobs.values():
            assert all(need["job"] in jobs for need in job["needs"]), (name, job["needs"])
            assert part_of.setdefault(job["variables"]["KILN_TARGET"], name) == name
    assert sorted(part_of) == TARGETS
    for chain in CHAINS.values():  # a target and what it builds on, in one part
        assert len({part_of[t] for t in chain}) == 1
    assert part_of[CHAINS["ppc64le"][0]] == "child-ppc64le.yml"

    for name in order:
        output = _run_alone(ci_repo, parts[name])
        for target in (t for t, part in part_of.items() if part == name):
            assert f"kiln build {target} --publish" in output, (name, target)
            assert f"kiln part job for {target}" in output  # the header's before_script ran
    shelf = ci_repo["shelf"] / "main"
    assert sorted(p.name for p in shelf.glob("*.txt")) == sorted(
        f"{t.replace(':', '_')}.txt" for t in TARGETS
    )
    # toy-deep's job built on toy-top's artifact, which built on toy-base's: `needs:` within one part.
    assert (shelf / "toy-deep_1_ppc64le.txt").read_text() == (
        "hello from toy-base:1:ppc64le\n'hello again' from toy-top:1:ppc64le\n"
        "'hello deep' from toy-deep:1:ppc64le\n"
    )
    with Ledger(ci_repo["ledger"]) as ledger:  # built once, published once, across all the parts
        for target in TARGETS:
            [build] = ledger.builds(target)
            assert build.status == "succeeded", target
            [artifact] = ledger.artifacts(build.id)
            assert len(ledger.publications(artifact.id)) == 1, target
        assert sorted(ledger.published_digests()) == TARGETS

    # Everything is published: the same parent (generate and trigger) now runs the no-op pipeline.
    again = _run_alone(
        ci_repo,
        PARENT.replace("kiln pipeline -o child.yml", f"kiln pipeline -o child.yml --max-bytes {limit}"),
    )
    assert NOOP_JOB in again and "kiln build toy-" not in again
    # A child job's failure leaves gitlab-ci-local's exit status 0: read its verdicts.
    assert " FAIL " not in again, again[-3000:]
    assert sorted(p.name for p in made.glob("child*.yml")) == ["child.yml"]  # one file: no dispatcher
