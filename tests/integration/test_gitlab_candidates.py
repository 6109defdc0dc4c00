"""Merge requests publish candidates, end to end with gitlab-ci-local (issue 14).

tests/integration/test_gitlab_ci_local.py's throwaway repo and fast kind, with the parent's generate
job run as a merge request's is (``kiln pipeline --candidate 7``): every child job runs
``kiln build TARGET --publish --candidate 7`` and publishes to the candidate's shelf only; then the
default branch's pipeline still has a job per target (a candidate never counts as published) and
publishes the same digests under the production name.
"""

from __future__ import annotations

import subprocess

from builder.ledger import Ledger
from tests.integration.test_gitlab_ci_local import PARENT, _run_pipeline, ci_repo  # noqa: F401


def _commit_parent(repo, text: str) -> None:
    (repo / ".gitlab-ci.yml").write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=kiln", "-c", "user.email=kiln@example.com"]
    subprocess.run([*git, "commit", "-qam", "parent"], check=True)


def test_a_merge_request_publishes_candidates_and_the_default_branch_then_publishes_production(ci_repo):  # noqa: F811
    merge_request = PARENT.replace("kiln pipeline -o child.yml", "kiln pipeline --candidate 7 -o child.yml")
    assert merge_request != PARENT
    _commit_parent(ci_repo["repo"], merge_request)
    first = _run_pipeline(ci_repo)
    assert "kiln build toy-top:1:x86_64 --publish --candidate 7" in first
    shelves = ci_repo["shelf"]
    assert sorted(p.name for p in shelves.iterdir()) == ["main-mr7"]  # never the production shelf
    assert len(list((shelves / "main-mr7").glob("*.txt"))) == 5

    _commit_parent(ci_repo["repo"], PARENT)
    second = _run_pipeline(ci_repo)
    assert "kiln build toy-top:1:x86_64 --publish" in second and "--candidate" not in second
    assert sorted(p.name for p in (shelves / "main").glob("*.txt")) == sorted(
        p.name for p in (shelves / "main-mr7").glob("*.txt")
    )
    with Ledger(ci_repo["ledger"]) as ledger:
        # Each job starts from a fresh checkout (no build root to reuse): the default branch built again.
        assert [b.status for b in ledger.builds("toy-base:1:x86_64")] == ["succeeded", "succeeded"]
        assert len(ledger.published_digests()) == 5  # now published to production, all five
