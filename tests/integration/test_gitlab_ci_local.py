"""The generated child pipeline, run by gitlab-ci-local (shell executor, --shell-isolation).

A throwaway git repo holds a small recipe set of tests/support/ci_toy.py's fast kind (two arches; a
recipe building on another) and a parent .gitlab-ci.yml with the repository's generate and trigger
jobs (`kiln pipeline -o child.yml`, then `trigger: include: artifact:` with `strategy: depend`). The
child jobs run `kiln build TARGET --publish` (Kiln's CLI with the fast kind registered), sharing
one ledger as a site's runners do ($KILN_LEDGER). A second run, with nothing changed, generates the
no-op pipeline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from builder.ledger import Ledger
from builder.pipeline.gitlab import NOOP_JOB
from tests.support.hermetic import without_session_env

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "scripts" / "gitlab-ci-local.sh"

PARENT = """\
stages: [generate, build]
kiln-generate:
  stage: generate
  script:
    - kiln pipeline -o child.yml --explain --generate-job kiln-generate
  artifacts:
    paths: [child*.yml]
kiln-build:
  stage: build
  needs: [kiln-generate]
  variables:
    PARENT_PIPELINE_ID: $CI_PIPELINE_ID
  trigger:
    include:
      - artifact: child.yml
        job: kiln-generate
    strategy: depend
"""

RECIPES = {
    "base.yaml": """\
        name: toy-base
        kind: ci-toy
        arches: [x86_64, ppc64le]
        build: {release: "1", greeting: hello}
        publish: {shelf: main}
        """,
    "top.yaml": """\
        name: toy-top
        kind: ci-toy
        arches: [x86_64, ppc64le]
        build: {release: "1", greeting: hello again, base: toy-base}
        publish: {shelf: main}
        """,
    "solo.yaml": """\
        name: toy-solo
        kind: ci-toy
        arches: [x86_64]
        build: {release: "1", greeting: hello alone}
        publish: {shelf: main}
        """,
}


def _missing() -> list[str]:
    return [t for t in ("npm", "node", "rsync", "git") if shutil.which(t) is None]


@pytest.fixture
def ci_repo(tmp_path: Path) -> dict[str, Path]:
    if _missing():
        pytest.skip(f"gitlab-ci-local needs {', '.join(_missing())} (apt-get install nodejs npm rsync git)")
    from tests.support import ci_toy

    repo = tmp_path / "repo"
    (repo / "templates" / "ci-toy").mkdir(parents=True)
    (repo / "templates" / ci_toy.TEMPLATE_PATH).write_text(ci_toy.TEMPLATE)
    (repo / "elements").mkdir()
    (repo / "elements" / ".keep").write_text("")
    for name, text in RECIPES.items():
        path = repo / "recipes" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (repo / ".gitlab-ci.yml").write_text(PARENT)
    (repo / ".gitignore").write_text(".kiln/\n.gitlab-ci-local/\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kiln = bin_dir / "kiln"
    python = REPO / ".venv" / "bin" / "python"
    kiln.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{python}" -m tests.support.ci_toy "$@"\n')
    kiln.chmod(0o755)
    git = ["git", "-C", str(repo), "-c", "user.name=kiln", "-c", "user.email=kiln@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "recipes"], check=True)
    return {"repo": repo, "bin": bin_dir, "ledger": tmp_path / "ledger.sqlite", "shelf": tmp_path / "shelf"}


def _run_pipeline(ci: dict[str, Path]) -> str:
    env = {
        **without_session_env(dict(os.environ)),
        "PATH": f"{ci['bin']}:{os.environ['PATH']}",
        "KILN_LEDGER": str(ci["ledger"]),
        "KILN_SHELF": str(ci["shelf"]),
    }
    env.pop("KILN_ROOT", None)
    result = subprocess.run(
        [str(HELPER), "--shell-isolation", "--no-color"],
        cwd=ci["repo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # gitlab-ci-local exits 0 and passes the trigger job even when a child job failed: read the jobs
    assert " FAIL " not in output, output[-6000:]
    return output


def test_the_generated_child_pipeline_builds_each_target_in_its_own_job_and_a_rerun_is_a_noop(ci_repo):
    first = _run_pipeline(ci_repo)
    for target in ("toy-base:1:x86_64", "toy-top:1:ppc64le", "toy-solo:1:x86_64"):
        assert f"kiln build {target} --publish" in first
    shelf = ci_repo["shelf"] / "main"
    published = sorted(p.name for p in shelf.glob("*.txt"))
    assert published == [
        "toy-base_1_ppc64le.txt",
        "toy-base_1_x86_64.txt",
        "toy-solo_1_x86_64.txt",
        "toy-top_1_ppc64le.txt",
        "toy-top_1_x86_64.txt",
    ]
    # toy-top's job built on toy-base's artifact, which reached it only through `needs:`
    assert (shelf / "toy-top_1_x86_64.txt").read_text() == (
        "hello from toy-base:1:x86_64\n'hello again' from toy-top:1:x86_64\n"
    )
    with Ledger(ci_repo["ledger"]) as ledger:  # the base was built once, in its own job
        assert [b.status for b in ledger.builds("toy-base:1:x86_64")] == ["succeeded"]
    child = (ci_repo["repo"] / ".gitlab-ci-local" / "artifacts" / "kiln-generate" / "child.yml").read_text()
    assert '"needs": [{"job": "toy-base_1_x86_64", "artifacts": true}]' in child

    second = _run_pipeline(ci_repo)
    assert NOOP_JOB in second
    assert "kiln build toy-" not in second
    assert sorted(p.name for p in shelf.glob("*.txt")) == published
