"""scripts/ci-credentials.sh: a GitLab job's file-type CI variables installed where Kiln reads them,
none of them printed. (The Glance and signing-key paths also run in the end-to-end pipeline test,
tests/e2e/test_gitlab_pipeline_site.py; the registry's docker config is checked here.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from builder.publishers.registry import docker_config_auth
from builder.workspace import PACKAGE_ROOT
from tests.support.processes import stop_gpg_daemons_under

SCRIPT = PACKAGE_ROOT / "scripts" / "ci-credentials.sh"
PASSWORD = "s3cret-pushing-token"


def _run(home: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), **variables}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_a_file_type_docker_config_is_installed_for_kiln_and_never_printed(tmp_path):
    variable = tmp_path / "KILN_DOCKER_CONFIG"  # where GitLab writes a file-type variable's value
    auth = base64.b64encode(f"kiln-ci:{PASSWORD}".encode()).decode()
    variable.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    home = tmp_path / "home"
    home.mkdir()
    result = _run(home, KILN_DOCKER_CONFIG=str(variable))
    assert result.returncode == 0, result.stderr
    installed = home / ".docker" / "config.json"
    assert installed.stat().st_mode & 0o777 == 0o600
    assert (home / ".docker").stat().st_mode & 0o777 == 0o700
    # what site.yaml's registry.docker_config (~/.docker/config.json) gives the registry publisher
    assert docker_config_auth(installed, "127.0.0.1:5000") == ("kiln-ci", PASSWORD)
    said = result.stdout + result.stderr
    assert "registry: docker config installed" in said
    assert PASSWORD not in said and auth not in said


def test_a_docker_config_given_as_a_value_not_a_file_is_refused_without_echoing_it(tmp_path):
    value = json.dumps({"auths": {"r": {"auth": base64.b64encode(f"u:{PASSWORD}".encode()).decode()}}})
    result = _run(tmp_path, KILN_DOCKER_CONFIG=value)
    assert result.returncode == 3
    assert "KILN_DOCKER_CONFIG must be a CI variable of type file" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr and value not in result.stdout + result.stderr
    assert not (tmp_path / ".docker").exists()


def test_os_cloud_without_a_readable_clouds_yaml_stops_the_job(tmp_path):
    result = _run(tmp_path, OS_CLOUD="kiln", OS_CLIENT_CONFIG_FILE=str(tmp_path / "missing.yaml"))
    assert result.returncode == 3
    assert "OS_CLIENT_CONFIG_FILE is not a readable file" in result.stderr


def _armored_secret_key(tmp_path: Path) -> Path:
    maker = tmp_path / "maker"
    maker.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(maker), "--batch", "--quiet", "--pinentry-mode", "loopback"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", "CI Signer <ci@kiln.invalid>", "ed25519", "sign", "1d"],
        check=True,
        capture_output=True,
    )
    key = tmp_path / "KILN_SIGNING_KEY"
    exported = subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True, capture_output=True)
    key.write_bytes(exported.stdout)
    stop_gpg_daemons_under(maker)
    return key


def test_jobs_of_one_runner_importing_the_signing_key_at_once_all_succeed(tmp_path):
    key = _armored_secret_key(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    shared = home / ".kiln" / "gnupg"  # the default KILN_GNUPGHOME: one per runner user
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "KILN_SIGNING_KEY": str(key)}
    try:
        jobs = [
            subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(12)
        ]
        results = [(job.wait(timeout=120), job.stderr.read().decode()) for job in jobs]  # type: ignore[union-attr]
        assert [code for code, _ in results] == [0] * 12, results
        listed = subprocess.run(
            ["gpg", "--homedir", str(shared), "--batch", "--list-secret-keys", "--with-colons"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "ci@kiln.invalid" in listed
    finally:
        stop_gpg_daemons_under(home)


def test_a_signing_key_gpg_cannot_import_stops_the_job_naming_the_variable_not_its_value(tmp_path):
    key = tmp_path / "KILN_SIGNING_KEY"
    key.write_text("-----BEGIN PGP PRIVATE KEY BLOCK-----\nnot-a-key-" + PASSWORD + "\n")
    try:
        result = _run(tmp_path, KILN_SIGNING_KEY=str(key))
    finally:
        stop_gpg_daemons_under(tmp_path)
    assert result.returncode == 3
    assert "importing KILN_SIGNING_KEY into" in result.stderr and "failed (gpg exit" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
