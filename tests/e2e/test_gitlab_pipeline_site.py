"""The generated GitLab pipeline building real kinds and publishing to the real local site, its jobs
authenticating as a real site's would.

A throwaway git repo holds the example recipes (recipes/guest/debian-12.yaml, a DIB guest, and
recipes/rpm/kiln-hello.yaml, an RPM rebuild; both restricted to x86_64 and given a Glance image
name and repo of their own, so that other tests on the session's site are not disturbed), Kiln's
templates/, elements/, files/ and scripts/ci-credentials.sh, and a parent .gitlab-ci.yml with the
generate and trigger jobs. gitlab-ci-local (shell executor, --shell-isolation) runs the parent and
the child pipeline; each child job's before_script is scripts/ci-credentials.sh (site.yaml
gitlab.before_script) and its script ``kiln build TARGET --publish`` with the real ``kiln``. Every job
of every pipeline runs as on a runner that shares nothing: its own fresh ledger and build root (no
KILN_LEDGER), so the second pipeline is a no-op only because the destinations say what they hold,
and a third, after one recipe changed, builds only that target. After the first, the child
pipeline's trigger job for the site's downstream project has run, and that project's own pipeline
(a deployment test) pulls the guest image from Glance by its kiln_digest: its sha256 is the build's.

The credentials come only from CI variables, as GitLab gives them: OS_CLOUD plus
OS_CLIENT_CONFIG_FILE (type file: a clouds.yaml holding an application credential of the session's
Keystone site, tests/conftest.py ``keystone_site``, whose Glance validates every token; the jobs'
site.yaml names no cloud and its own local Glance port is closed, so Glance is reachable through
clouds.yaml alone) and KILN_SIGNING_KEY (type file: an armored secret key that ci-credentials.sh
imports into the gnupghome site.yaml names). Neither appears in any output. A fourth pipeline, after
the credential is revoked, fails the job that needs Glance with exit 3 naming the cloud.

Slow, part of `make test`: ~1-2 min with warm caches (the DIB build from the cached base tree, its
boot switched off here as test_guest_dib.py boots the same recipe; the RPM rebuild in a cached root
takes seconds; the rerun ~3 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.endpoints import LOCAL_CLOUD
from builder.host.net import free_port
from builder.pipeline.gitlab import NOOP_JOB
from builder.workspace import PACKAGE_ROOT as REPO
from tests.support.keystone import application_credential
from tests.support.processes import stop_gpg_daemons_under
from tests.support.srpms import make_key, stop_agent

pytestmark = [pytest.mark.slow, pytest.mark.site]

HELPER = REPO / "scripts" / "gitlab-ci-local.sh"
GUEST, RPM = "debian-12:bookworm:x86_64", "kiln-hello:9:x86_64"
IMAGE_NAME = "debian-12 bookworm x86_64 gitlab-e2e"
RPM_REPO = "kiln-gitlab-e2e"
CLOUD = "kiln-ci"
# The repository's .gitlab-ci.yml, all of it but the lint-and-unit-tests job: ruff and the unit tests
# are what `make test` runs anyway (validate-recipes runs, on the test's recipes).
PIPELINE_VARIABLES = ("--variable", "KILN_CHECKS=off")
FILE_VARIABLES = Path("/tmp/gitlab-ci-local-file-variables-*")  # where gitlab-ci-local writes them

# What each job inherits from the test's environment would hide a missing CI variable.
CREDENTIAL_ENV = (
    "OS_CLOUD",
    "OS_CLIENT_CONFIG_FILE",
    "KILN_SIGNING_KEY",
    "KILN_DOCKER_CONFIG",
    "KILN_GNUPGHOME",
)


def _missing() -> list[str]:
    return [t for t in ("npm", "node", "rsync", "git", "rpmkeys") if shutil.which(t) is None]


def _recipe(relative: str, change: Callable[[dict], None]) -> str:
    data = yaml.safe_load((REPO / "recipes" / relative).read_text())
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def _guest(data: dict) -> None:
    data["arches"] = ["x86_64"]
    data["publish"]["glance"]["image_name"] = IMAGE_NAME
    # The same recipe's TCG boot is proven by tests/e2e/test_guest_dib.py; here it would cost ~2 min
    # of the suite's two cores and prove nothing about the pipeline (the gate lets "off" through).
    data["verify"] = {"boot": {"enabled": False}}


def _rpm(data: dict) -> None:
    data["arches"] = ["x86_64"]
    data["publish"]["repo"]["repo"] = RPM_REPO


def _throwaway_repo(repo: Path) -> None:
    for tree in ("templates", "elements", "files"):
        shutil.copytree(REPO / tree, repo / tree)
    (repo / "scripts").mkdir()
    for script in ("ci-credentials.sh", "bootstrap.sh"):
        shutil.copy2(REPO / "scripts" / script, repo / "scripts")
    # The repository's own .gitlab-ci.yml, whose jobs run scripts/bootstrap.sh first: it finds the
    # checkout's .venv (Kiln's own, linked) made from this lock and pyproject, and does nothing more.
    for name in (".gitlab-ci.yml", "pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO / name, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")
    (repo / "recipes" / "guest").mkdir(parents=True)
    (repo / "recipes" / "rpm").mkdir()
    shutil.copy(REPO / "recipes" / "defaults.yaml", repo / "recipes")
    (repo / "recipes" / "guest" / "debian-12.yaml").write_text(_recipe("guest/debian-12.yaml", _guest))
    (repo / "recipes" / "rpm" / "kiln-hello.yaml").write_text(_recipe("rpm/kiln-hello.yaml", _rpm))
    (repo / ".gitignore").write_text(".kiln/\n.gitlab-ci-local/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=kiln", "-c", "user.email=kiln@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "recipes"], check=True)


@pytest.fixture(scope="module")
def ci(local_site, keystone_site, site_settings, dib_ready, tmp_path_factory) -> Any:
    if _missing():
        pytest.skip(
            f"gitlab-ci-local needs {', '.join(_missing())} (apt-get install nodejs npm rsync git rpm)"
        )
    work = tmp_path_factory.mktemp("gitlab-site")
    repo = work / "repo"
    _throwaway_repo(repo)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "kiln").symlink_to(REPO / ".venv" / "bin" / "kiln")

    key = make_key(work / "keys", "Kiln CI Signing")
    try:
        armor = subprocess.run(
            ["gpg", "--batch", "--homedir", str(key.gnupghome), "--armor", "--export-secret-keys",
             key.fingerprint], check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        stop_agent(key)
    assert _armor_lines(armor), "gpg exported no secret key"  # else the leak check checks nothing
    cloud_site = keystone_site["site"]
    credential = application_credential(cloud_site, "kiln-gitlab-e2e")  # made for this "runner"
    clouds_text = yaml.safe_dump(credential.clouds(CLOUD, cloud_site.urls.keystone))
    job_gnupghome = work / "job-gnupg"  # made by ci-credentials.sh in the first job
    # A site's CI/CD variables: the file-type ones become paths to files holding the content.
    variables = {
        "OS_CLOUD": CLOUD,
        "OS_CLIENT_CONFIG_FILE": {"type": "file", "values": {"*": clouds_text}},
        "KILN_SIGNING_KEY": {"type": "file", "values": {"*": armor}},
        # typed: gitlab-ci-local takes an untyped value starting with / for a file to copy
        "KILN_GNUPGHOME": {"type": "variable", "values": {"*": str(job_gnupghome)}},
    }
    (work / "ci-variables.yml").write_text(yaml.safe_dump(variables))

    site = site_settings.model_dump(mode="json", exclude_none=True)
    assert "cloud" not in site.get("glance", {})  # Glance only through OS_CLOUD
    site["local"]["ports"]["glance"] = free_port()  # nothing listens: the local default is no way in
    site["repo"] = {"signing_key": {"gnupghome": str(job_gnupghome), "fingerprint": key.fingerprint}}
    site["gitlab"] = {
        "before_script": ["scripts/ci-credentials.sh"],
        "downstream": {"project": "ops/deploy-test"},  # the trigger job's target: DOWNSTREAM below
    }
    (work / "site.yaml").write_text(yaml.safe_dump(site))
    file_variables_before = set(FILE_VARIABLES.parent.glob(FILE_VARIABLES.name))
    yield {
        "work": work,
        "repo": repo,
        "bin": bin_dir,
        "site": work / "site.yaml",
        "key": key,
        "secrets": [credential.secret, *_armor_lines(armor)],
        "credential": credential,
        "reader_clouds": cloud_site.endpoints.keystone_clouds_yaml,  # the test reads Glance as kiln-local
        "repo_root": local_site.state / "repo" / RPM_REPO,
    }
    stop_gpg_daemons_under(work)
    # gitlab-ci-local writes file-type variables under /tmp and leaves some (a child pipeline's)
    for left in set(FILE_VARIABLES.parent.glob(FILE_VARIABLES.name)) - file_variables_before:
        if (left / "KILN_SIGNING_KEY").exists():
            shutil.rmtree(left, ignore_errors=True)


def _armor_lines(armor: str) -> list[str]:
    """The key's base64 body lines (the header line is not secret)."""
    return [line for line in armor.splitlines() if len(line) >= 40 and not line.startswith("-----")]


def _run_pipeline(ci: dict[str, Any], expect_failure: bool = False) -> tuple[str, float]:
    """One pipeline, every job on a runner that shares nothing with the others or with the last
    pipeline: no KILN_LEDGER, and gitlab-ci-local's job directories removed first, so each job has a
    fresh ledger and build root (its own ``.kiln/``); what a job gets from another comes through
    ``needs:`` artifacts, and what is published, from the destinations."""
    env = {
        **os.environ,
        "PATH": f"{ci['bin']}:{os.environ['PATH']}",
        "KILN_SITE": str(ci["site"]),
    }
    for name in ("KILN_ROOT", "KILN_BUILD_ROOT", "KILN_LEDGER", *CREDENTIAL_ENV):
        env.pop(name, None)
    shutil.rmtree(ci["repo"] / ".gitlab-ci-local" / "builds", ignore_errors=True)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(HELPER),
            "--shell-isolation",
            "--no-color",
            "--variables-file",
            "../ci-variables.yml",
            *PIPELINE_VARIABLES,
        ],
        cwd=ci["repo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    (ci["work"] / f"pipeline-{started:.0f}.log").write_text(output)  # kept for a failure's reader
    # gitlab-ci-local 4.65 exits 0 when a triggered child job fails (strategy: depend notwithstanding)
    failed = [line for line in output.splitlines() if "finished in" in line and "FAIL" in line]
    if not expect_failure:
        assert result.returncode == 0, output[-8000:]
        assert not failed, output[-8000:]
    else:
        assert failed, output[-8000:]
    return output, seconds


def _logs(repo: Path) -> str:
    """Every job log and log-like artifact gitlab-ci-local kept."""
    texts = []
    for path in (repo / ".gitlab-ci-local").rglob("*"):
        if (
            path.is_file()
            and path.suffix in (".log", ".txt", ".xml", ".json", ".yml")
            and path.stat().st_size < 50 << 20
        ):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def _leaked(ci: dict[str, Any], output: str) -> list[str]:
    logs = _logs(ci["repo"])
    return [secret for secret in ci["secrets"] if secret in output or secret in logs]


def _glance_images(ci: dict[str, Any]) -> list[dict[str, Any]]:
    """The test's images as python-openstackclient shows them, with the clouds.yaml the jobs got."""
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(ci["reader_clouds"])}

    def openstack(*args: str) -> Any:
        said = subprocess.run(
            ["openstack", "--os-cloud", LOCAL_CLOUD, "image", *args, "-f", "json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(said.stdout)

    listed = openstack("list", "--property", f"kiln_target={GUEST}", "--name", IMAGE_NAME)
    return [openstack("show", row["ID"]) for row in listed]


def _build_manifest(repo: Path, job: str) -> dict[str, Any]:
    [manifest] = (repo / ".gitlab-ci-local" / "artifacts").glob(f"**/.kiln/build/{job}/manifest.json")
    return json.loads(manifest.read_text())


def _manifest_digest(repo: Path, job: str) -> str:
    return str(_build_manifest(repo, job)["digest"])


# The downstream project a site names (site.yaml gitlab.downstream): a deployment test that pulls the
# guest image from Glance by its kiln_digest, with the CI credential, and hashes what it got.
DOWNSTREAM = """\
deploy-test:
  script:
    - id=$(openstack image list --property kiln_digest="$KILN_DIGEST" --status active -f value -c ID)
    - test -n "$id"
    - openstack image save --file image.bin "$id"
    - echo "deploy-test image $id sha256 $(sha256sum image.bin | cut -d' ' -f1)"
"""


def _run_downstream(ci: dict[str, Any], digest: str) -> str:
    """The downstream project's pipeline, as GitLab starts it on the trigger: gitlab-ci-local 4.65 runs
    a multi-project trigger as an empty pipeline (job.js fetchTriggerInclude: a project is a no-op),
    so the test runs that project's own .gitlab-ci.yml, with the site's CI variables."""
    project = ci["work"] / "deploy-test"
    project.mkdir(exist_ok=True)
    (project / ".gitlab-ci.yml").write_text(DOWNSTREAM)
    git = ["git", "-C", str(project), "-c", "user.name=kiln", "-c", "user.email=kiln@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "deploy test"], check=True)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV}
    result = subprocess.run(
        [str(HELPER), "--shell-isolation", "--no-color", "--variables-file", "../ci-variables.yml",
         "--variable", f"KILN_DIGEST={digest}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "FAIL" not in output, output[-6000:]
    return output


def _checksig(rpm: Path, public_key: Path, db: Path) -> str:
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rpmkeys", "--dbpath", str(db), "--import", str(public_key)], check=True, capture_output=True
    )
    said = subprocess.run(
        ["rpmkeys", "--dbpath", str(db), "--checksig", str(rpm)], capture_output=True, text=True
    )
    return said.stdout + said.stderr


def _rpm_published(ci: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_mtime_ns) for p in ci["repo_root"].rglob("*") if p.is_file())


def test_the_child_jobs_build_real_kinds_publish_with_ci_credentials_and_a_rerun_is_a_noop(ci, tmp_path):
    first, first_s = _run_pipeline(ci)
    for target in (GUEST, RPM):
        assert f"kiln build {target} --publish" in first
    assert "ci-credentials: Glance: cloud from OS_CLOUD" in first
    assert "ci-credentials: repo: signing key imported" in first
    assert not _leaked(ci, first), "a credential appeared in the pipeline's output or job logs"

    [image] = _glance_images(ci)
    props = image["properties"]
    assert image["status"] == "active" and image["visibility"] == "public"
    assert props["kiln_digest"] == _manifest_digest(ci["repo"], "debian-12_bookworm_x86_64")
    assert props["kiln_provenance"].startswith("sha256:") and props["architecture"] == "x86_64"

    # Every build job passed: the trigger job ran; the downstream project gets the image by its digest
    # and what Glance serves is the build's image, byte for byte.
    assert "kiln-downstream" in first
    built = _build_manifest(ci["repo"], "debian-12_bookworm_x86_64")
    [image_artifact] = [a for a in built["artifacts"] if a["type"] == "disk-image"]
    downstream = _run_downstream(ci, built["digest"])
    assert f"deploy-test image {image['id']} sha256 {image_artifact['sha256']}" in downstream
    assert not _leaked(ci, downstream)

    [rpm] = (ci["repo_root"] / "el" / "9" / "x86_64").rglob("kiln-hello-1.0-*.x86_64.rpm")
    said = _checksig(rpm, ci["key"].public, tmp_path / "rpmdb")
    assert "signatures ok" in said.lower(), said
    published = _rpm_published(ci)
    assert any(name == "kiln-hello_9_x86_64.json" for name, _ in published)  # the repo's record

    # A runner with an empty ledger generates the next pipeline: the destinations say both targets
    # are published (Glance by its properties, the repo by the record it serves), so it is the no-op.
    second, second_s = _run_pipeline(ci)
    assert NOOP_JOB in second and not _leaked(ci, second)
    assert "asked the destinations about 2 target(s): 2 published there" in second
    assert f"kiln build {GUEST}" not in second and f"kiln build {RPM}" not in second
    assert [i["id"] for i in _glance_images(ci)] == [image["id"]]
    assert _rpm_published(ci) == published

    # One recipe changed: only its target gets a job (fresh ledgers again).
    recipe = ci["repo"] / "recipes" / "rpm" / "kiln-hello.yaml"
    recipe.write_text(recipe.read_text().replace("release_suffix: .kiln1", "release_suffix: .kiln2"))
    git = ["git", "-C", str(ci["repo"]), "-c", "user.name=t", "-c", "user.email=t@kiln.invalid"]
    subprocess.run([*git, "commit", "-qam", "kiln-hello: .kiln2"], check=True)
    third, third_s = _run_pipeline(ci)
    assert f"kiln build {RPM} --publish" in third and f"kiln build {GUEST}" not in third
    assert list((ci["repo_root"] / "el" / "9" / "x86_64").rglob("kiln-hello-1.0-1*.kiln2.x86_64.rpm"))
    assert [i["id"] for i in _glance_images(ci)] == [image["id"]]

    # The runner's application credential revoked: the generate job cannot ask Glance (so the guest
    # gets a job), and that job, asking Glance before it builds, fails with exit 3 naming the cloud.
    ci["credential"].revoke()
    fourth, fourth_s = _run_pipeline(ci, expect_failure=True)
    assert f"kiln build {GUEST} --publish" in fourth and f"kiln build {RPM}" not in fourth
    assert f"Glance: cloud '{CLOUD}': Keystone refused the credential" in fourth + _logs(ci["repo"])
    assert not _leaked(ci, fourth), "a credential appeared in the failed pipeline's output or job logs"
    assert [i["id"] for i in _glance_images(ci)] == [image["id"]]
    print(
        f"\ngitlab pipeline with real kinds, a fresh ledger per job: first run {first_s:.0f} s, "
        f"no-op rerun {second_s:.0f} s, one recipe changed {third_s:.0f} s, "
        f"credential revoked {fourth_s:.0f} s"
    )
