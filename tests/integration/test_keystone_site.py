"""Glance behind the local site's Keystone, as real clouds run it (issue 25). The session's Keystone
site (tests/conftest.py ``keystone_site``: Keystone and Glance only, their own state and ports; the
session's main site runs without Keystone, and conftest says why). Kiln publishes through the
``kiln-local`` cloud that ``kiln site up`` writes; a CI job's application credential publishes
through ``OS_CLOUD``; a wrong password and a revoked credential are exit 3 naming the cloud, and no
secret reaches the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from builder.endpoints import LOCAL_CLOUD
from builder.errors import ExitCode
from builder.host.net import free_port
from builder.siteconfig import LocalPorts, LocalSiteSettings, SiteConfig
from builder.workspace import PACKAGE_ROOT
from tests.integration.test_glance_publish import _manifest
from tests.support.keystone import ApplicationCredential, application_credential

pytestmark = pytest.mark.site

KILN = [sys.executable, "-m", "builder"]


def _kiln(site: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE")}
    return subprocess.run(
        [*KILN, "--root", str(PACKAGE_ROOT), "--site", str(site["site_file"]),
         "--ledger", str(site["work"] / "ledger.sqlite"), *args],
        capture_output=True, text=True, timeout=300, env={**environment, **(env or {})},
    )  # fmt: skip


def _published_manifest(tmp_path: Path, target: str, digest: str) -> Path:
    manifest = replace(
        _manifest(tmp_path, target, digest, size=64 * 1024, arch="x86_64"),
        publish={"glance": {"visibility": "public"}},
        verification={"status": "passed", "cases": 1},
    )
    path = tmp_path / "manifest.json"
    manifest.write(path)
    return path


def _openstack(clouds: Path, cloud: str, *args: str) -> Any:
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds)}
    shown = subprocess.run(
        ["openstack", "--os-cloud", cloud, *args, "-f", "json"], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_glance_refuses_a_request_without_a_token_and_site_json_says_keystone(keystone_site):
    site = keystone_site["site"]
    assert requests.get(f"{site.urls.glance}/v2/images", timeout=30).status_code == 401
    info = json.loads((site.state / "site.json").read_text())
    assert info["auth"] == "keystone" and info["cloud"] == LOCAL_CLOUD
    clouds = Path(info["clouds_yaml"])
    assert clouds.stat().st_mode & 0o077 == 0  # a password: the owner's only


def test_kiln_publishes_through_the_local_cloud_and_openstack_shows_the_image(keystone_site, tmp_path):
    manifest = _published_manifest(tmp_path, "ks-local:bookworm:x86_64", "a" * 64)
    published = _kiln(keystone_site, "publish", str(manifest), "--json")
    assert published.returncode == 0, published.stderr
    [glance] = [p for p in json.loads(published.stdout)["published"] if p["publisher"] == "glance"]
    clouds = keystone_site["site"].endpoints.keystone_clouds_yaml
    shown = _openstack(clouds, LOCAL_CLOUD, "image", "show", glance["location"])
    assert shown["properties"]["kiln_digest"] == "a" * 64 and shown["status"] == "active"


def _ci_clouds(keystone_site: dict[str, Any], tmp_path: Path, credential: ApplicationCredential) -> Path:
    path = tmp_path / "ci-clouds.yaml"  # what a file-type CI/CD variable holds
    path.write_text(yaml.safe_dump(credential.clouds("ci", keystone_site["site"].urls.keystone)))
    return path


def test_an_application_credential_publishes_and_once_revoked_is_exit_3_naming_the_cloud(
    keystone_site, tmp_path
):
    credential = application_credential(keystone_site["site"], "kiln-ci")
    ci_env = {"OS_CLOUD": "ci", "OS_CLIENT_CONFIG_FILE": str(_ci_clouds(keystone_site, tmp_path, credential))}
    first = tmp_path / "first"
    first.mkdir()
    manifest = _published_manifest(first, "ks-ci:bookworm:x86_64", "b" * 64)
    published = _kiln(keystone_site, "publish", str(manifest), env=ci_env)
    assert published.returncode == 0, published.stderr

    credential.revoke()
    second = tmp_path / "second"
    second.mkdir()
    manifest = _published_manifest(second, "ks-ci:bookworm:x86_64", "c" * 64)
    refused = _kiln(keystone_site, "publish", str(manifest), env=ci_env)
    said = refused.stdout + refused.stderr
    assert refused.returncode == ExitCode.ENVIRONMENT, said
    assert "cloud 'ci'" in said and "refused the credential" in said
    assert credential.secret not in said and credential.id not in said
    assert "Traceback" not in said


def test_a_wrong_password_is_exit_3_naming_the_cloud_without_the_password(keystone_site, tmp_path):
    clouds = yaml.safe_load(keystone_site["site"].endpoints.keystone_clouds_yaml.read_text())
    wrong = "not-the-password-" + "x" * 12
    clouds["clouds"][LOCAL_CLOUD]["auth"]["password"] = wrong
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(clouds))
    env = {"OS_CLOUD": LOCAL_CLOUD, "OS_CLIENT_CONFIG_FILE": str(path)}
    manifest = _published_manifest(tmp_path, "ks-pw:bookworm:x86_64", "d" * 64)
    refused = _kiln(keystone_site, "publish", str(manifest), env=env)
    said = refused.stdout + refused.stderr
    assert refused.returncode == ExitCode.ENVIRONMENT, said
    assert f"cloud '{LOCAL_CLOUD}'" in said and wrong not in said and "Traceback" not in said


def test_site_up_no_auth_runs_glance_without_keystone_and_kiln_follows_it(local_site, tmp_path):
    ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
    settings = SiteConfig(
        local=LocalSiteSettings(
            state_dir=str(tmp_path / "state"), ports=ports, components=["keystone", "glance"]
        )
    )
    site = {"site_file": tmp_path / "site.yaml", "work": tmp_path}
    site["site_file"].write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    up = _kiln(site, "site", "up", "--no-auth", "--json")
    try:
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["auth"] == "none"
        assert requests.get(f"http://127.0.0.1:{ports.glance}/v2/images", timeout=30).status_code == 200
        status = _kiln(site, "site", "status", "--json")
        assert status.returncode == 0, status.stdout  # Keystone was not started: not reported down
        assert "keystone" not in json.loads(status.stdout)["services"]
        manifest = _published_manifest(tmp_path, "ks-none:bookworm:x86_64", "e" * 64)
        assert _kiln(site, "publish", str(manifest)).returncode == 0
    finally:
        _kiln(site, "site", "down")
