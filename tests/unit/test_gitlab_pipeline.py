"""`kiln pipeline`: GitLab child pipelines generated from the pipeline layer's graph (issue 14).

The example recipes give real targets: DIB guests with Packer guests on top (needs), a CUDA
container (gpu tags, one registry repository over two arches), an RPM rebuild (a repo). Generated
documents are checked against GitLab's own CI schema, vendored offline by check-jsonschema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.cli import main
from builder.core.kind import slug_of
from builder.pipeline import gitlab
from builder.pipeline.graph import load_targets
from builder.siteconfig import GitLabSite
from builder.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def _examples() -> list:
    workspace = Workspace(REPO)
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    return targets


def _published(targets, except_ids=()) -> dict[str, dict[str, float]]:
    return {t.id: {t.digest: 1000.0} for t in targets if t.id not in except_ids}


def _jobs(document: dict) -> dict[str, dict]:
    return {name: job for name, job in document.items() if name != "stages"}


def _schema_errors(*files: Path) -> str:
    """'' when GitLab's CI schema accepts every file, else check-jsonschema's report."""
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci", *map(str, files)],
        capture_output=True,
        text=True,
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


@pytest.fixture(scope="module")
def examples():
    return _examples()


@pytest.fixture(scope="module")
def example_pipeline(examples):
    stale = gitlab.select_stale(examples, {})
    [only] = gitlab.generate(stale, GitLabSite(runner_tags={"ppc64le": ["ppc64le", "kvm"]}))
    return only.document


def test_every_unpublished_target_gets_one_job_running_exactly_kiln_build_publish(examples, example_pipeline):
    jobs = _jobs(example_pipeline)
    assert len(jobs) == len(examples)
    for target in examples:
        job = jobs[slug_of(target.id)]
        assert job["script"] == [f"kiln build {target.id} --publish"]
        assert job["interruptible"] is True


def test_tags_follow_the_arch_from_site_yaml_and_cuda_builds_add_the_gpu_tag(example_pipeline):
    jobs = _jobs(example_pipeline)
    assert jobs["debian-12_bookworm_x86_64"]["tags"] == ["x86_64"]
    assert jobs["debian-12_bookworm_ppc64le"]["tags"] == ["ppc64le", "kvm"]
    assert jobs["cuda-runtime_bookworm_x86_64"]["tags"] == ["x86_64", "gpu"]
    assert jobs["cuda-runtime_bookworm_ppc64le"]["tags"] == ["ppc64le", "kvm", "gpu"]


def test_runner_tags_default_to_the_arch_tables_runner_tag():
    site = GitLabSite()
    assert site.tags(Arch.AARCH64) == [Arch.AARCH64.runner_tag]
    assert GitLabSite(runner_tags={"gpu": ["nvidia", "a100"]}).tags(Arch.X86_64, gpu=True) == [
        "x86_64",
        "nvidia",
        "a100",
    ]


def test_needs_follow_target_dependencies_and_bring_the_base_image_along(examples, example_pipeline):
    jobs = _jobs(example_pipeline)
    for arch in ("x86_64", "ppc64le"):
        packer = jobs[f"debian-12-packer_bookworm_{arch}"]
        assert packer["needs"] == [{"job": f"debian-12_bookworm_{arch}", "artifacts": True}]
        assert (
            f".kiln/build/debian-12_bookworm_{arch}/out/"
            in jobs[f"debian-12_bookworm_{arch}"]["artifacts"]["paths"]
        )
    roots = [t for t in examples if not t.depends_on]
    assert all(jobs[slug_of(t.id)]["needs"] == [] for t in roots)  # start at once, no stages wait


def test_artifacts_carry_manifest_logs_and_junit(example_pipeline):
    artifacts = _jobs(example_pipeline)["kiln-hello_9_ppc64le"]["artifacts"]
    assert artifacts["when"] == "always"
    assert ".kiln/build/kiln-hello_9_ppc64le/manifest.json" in artifacts["paths"]
    assert ".kiln/build/kiln-hello_9_ppc64le/logs/" in artifacts["paths"]
    assert artifacts["reports"] == {"junit": ".kiln/build/kiln-hello_9_ppc64le/verify.xml"}


def test_resource_groups_serialize_jobs_writing_the_same_destination(example_pipeline):
    jobs = _jobs(example_pipeline)
    groups = {name: job.get("resource_group") for name, job in jobs.items()}
    assert groups["debian-12_bookworm_x86_64"] == "glance:debian-12 bookworm x86_64"
    assert groups["debian-12_bookworm_x86_64"] != groups["debian-12_bookworm_ppc64le"]
    # one multi-arch tag: both arches of the container write the same repository
    assert groups["cuda-runtime_bookworm_x86_64"] == groups["cuda-runtime_bookworm_ppc64le"]
    assert groups["cuda-runtime_bookworm_x86_64"].startswith("registry:")
    assert groups["kiln-hello_9_ppc64le"] == "repo:kiln"


def test_retry_is_only_for_runner_and_system_failures(example_pipeline):
    for job in _jobs(example_pipeline).values():
        assert job["retry"]["max"] == 2
        assert "script_failure" not in job["retry"]["when"]
        assert "runner_system_failure" in job["retry"]["when"]
        assert "always" not in job["retry"]["when"]


def test_published_digests_are_left_out_and_a_rebuilt_base_takes_its_dependents_along(examples):
    base = "debian-12:bookworm:x86_64"
    stale = gitlab.select_stale(examples, _published(examples, except_ids={base}))
    assert [s.target.id for s in stale] == [base, "debian-12-packer:bookworm:x86_64"]
    assert "never published" in stale[0].reasons[0]
    assert stale[1].reasons == ("builds on a target rebuilt here",)


def test_an_older_published_digest_is_stale_and_says_so(examples):
    target = examples[0]
    published = _published(examples)
    published[target.id] = {"0" * 64: 1000.0}
    [stale, *_] = gitlab.select_stale(examples, published)
    assert stale.target.id == target.id and "an older digest is" in stale.reasons[0]


def test_a_schedule_rebuilds_what_was_published_longer_ago_than_the_interval(examples):
    published = _published(examples)
    first = examples[0]
    published[first.id] = {first.digest: 10.0}
    stale = gitlab.select_stale(examples, published, older_than=500.0)
    assert stale[0].target.id == first.id and "rebuild interval" in stale[0].reasons[0]


def test_an_empty_plan_is_one_valid_noop_job(tmp_path, examples):
    [only] = gitlab.generate(gitlab.select_stale(examples, _published(examples)), GitLabSite())
    assert list(_jobs(only.document)) == [gitlab.NOOP_JOB]
    path = tmp_path / "child.yml"
    path.write_text(only.text)
    assert _schema_errors(path) == ""


def test_the_example_pipeline_and_the_repositorys_gitlab_ci_validate_against_gitlabs_schema(
    tmp_path, example_pipeline
):
    path = tmp_path / "child.yml"
    path.write_text(gitlab.render_yaml(example_pipeline))
    assert _schema_errors(path, REPO / ".gitlab-ci.yml") == ""


def test_over_the_size_limit_the_pipeline_splits_per_arch_then_by_size_keeping_chains_together(
    tmp_path, examples
):
    stale = gitlab.select_stale(examples, {})
    whole = len(gitlab.generate(stale, GitLabSite())[0].text)
    limit = 4000  # the longest chain (four CUDA layers), with a little room: several files per arch
    assert whole > 2 * limit
    files = gitlab.generate(stale, GitLabSite(), max_bytes=limit)
    assert len(files) > 2
    assert {f.name.split("-")[0] for f in files} == {"x86_64", "ppc64le"}
    placed = {t: f.name for f in files for t in f.targets}
    assert sorted(placed) == sorted(s.target.id for s in stale)  # every job exactly once
    for f in files:
        assert len(f.text) <= limit
        assert all(f.name.startswith(Arch.parse(t.rsplit(":", 1)[1]).value) for t in f.targets)
    for s in stale:
        assert all(placed[d] == placed[s.target.id] for d in s.target.depends_on)
    paths = []
    for f in files:
        paths.append(tmp_path / f"child-{f.name}.yml")
        paths[-1].write_text(f.text)
    paths.append(tmp_path / "child.yml")
    paths[-1].write_text(gitlab.render_yaml(gitlab.dispatcher(files, "child", "kiln-generate")))
    assert _schema_errors(*paths) == ""


def test_the_size_limit_counts_what_every_file_carries_besides_its_jobs(examples):
    from builder.siteconfig import Downstream

    stale = gitlab.select_stale(examples, {})
    [plain] = gitlab.generate(stale, GitLabSite())
    limit = len(plain.text)  # the jobs alone fit exactly
    with_header = GitLabSite(before_script=["scripts/ci-credentials.sh"])
    files = gitlab.generate(stale, with_header, max_bytes=limit)
    assert len(files) > 1  # the before_script header no longer fits: split, header in every part
    for f in files:
        assert len(f.text) <= limit, f.name
        assert f.document["default"] == {"before_script": ["scripts/ci-credentials.sh"]}
    # The downstream trigger goes in a file that is not split: it counts against the limit too.
    with_tail = GitLabSite(downstream=Downstream(project="ops/deploy-test"))
    files = gitlab.generate(stale, with_tail, max_bytes=limit)
    assert len(files) > 1 and all(len(f.text) <= limit for f in files)
    assert all("kiln-downstream" not in f.document for f in files)  # the dispatcher triggers it once


def test_a_dependency_chain_larger_than_the_limit_is_refused_with_its_size(examples):
    from builder.errors import InvalidInput

    stale = [s for s in gitlab.select_stale(examples, {}) if s.target.recipe.startswith("debian-12")]
    with pytest.raises(InvalidInput, match="cannot be split"):
        gitlab.generate(stale, GitLabSite(), max_bytes=1500)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_changed_since_selects_targets_whose_input_files_changed_in_git(tmp_path):
    root = tmp_path / "ws"
    for name in ("recipes", "templates", "elements", "files"):
        shutil.copytree(REPO / name, root / name)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    workspace = Workspace(root)
    targets, _ = load_targets([workspace.recipes_dir], workspace)
    published = _published(targets)  # everything is published: only git decides
    assert gitlab.select_stale(targets, published, changed_files=gitlab.changed_since(root, "HEAD")) == []
    packer_script = root / "files" / "packer" / "harden-ssh.sh"
    packer_script.write_text(packer_script.read_text() + "\n# changed\n")
    changed = gitlab.changed_since(root, "HEAD")
    assert changed == {"files/packer/harden-ssh.sh"}
    stale = gitlab.select_stale(targets, published, changed_files=changed, changed_ref="HEAD")
    assert {s.target.recipe for s in stale} == {"debian-12-packer"}
    assert "inputs changed since HEAD: files/packer/harden-ssh.sh" in stale[0].reasons


def test_changed_since_an_unknown_ref_is_invalid_input_naming_the_ref(tmp_path):
    from builder.errors import InvalidInput

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(InvalidInput, match="--changed-since no-such-ref"):
        gitlab.changed_since(tmp_path, "no-such-ref")


def test_kiln_pipeline_writes_the_file_and_reports_jobs_as_json(tmp_path, capsys):
    out = tmp_path / "child.yml"
    code = main(
        ["--root", str(REPO), "--ledger", str(tmp_path / "l.sqlite"), "pipeline", "-o", str(out), "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["split"] is False
    assert {j["target"] for j in report["jobs"]} == {t.id for t in _examples()}
    assert out.read_text() == gitlab.render_yaml(
        gitlab.generate(gitlab.select_stale(_examples(), {}), GitLabSite())[0].document
    )


def test_kiln_pipeline_explain_prints_tags_needs_and_why(tmp_path, capsys):
    args = ["--root", str(REPO), "--ledger", str(tmp_path / "l.sqlite"), "pipeline", "--explain"]
    code = main([*args, "-o", str(tmp_path / "c.yml"), "--arch", "x86_64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "kiln build debian-12-packer:bookworm:x86_64 --publish" in out
    assert "needs: debian-12_bookworm_x86_64" in out
    assert "why: digest" in out and "never published" in out


def test_no_publish_pipelines_build_and_verify_without_publishing(examples):
    [only] = gitlab.generate(gitlab.select_stale(examples, {}), GitLabSite(), publish=False)
    for job in _jobs(only.document).values():
        assert job["script"][0].endswith(" --no-publish")
        assert "resource_group" not in job


def test_kiln_build_takes_a_target_id_and_builds_only_it_and_what_it_builds_on(capsys):
    code = main(["--root", str(REPO), "build", "debian-12-packer:bookworm:x86_64", "--dry-run", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [t["target"] for t in report["targets"]] == [
        "debian-12:bookworm:x86_64",
        "debian-12-packer:bookworm:x86_64",
    ]
