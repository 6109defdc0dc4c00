"""The local site's authentication, without starting it: which components run, what Glance's config
says, how publishers pick the cloud, and what a refused credential says (issue 25)."""

from __future__ import annotations

import json

import pytest
from keystoneauth1 import exceptions as ksa

from builder.endpoints import LOCAL_CLOUD, local_endpoints
from builder.errors import EnvironmentProblem
from builder.publishers import from_site
from builder.publishers.glance import GlancePublisher, _credential_problem
from builder.site import glance
from builder.site.local import LocalSite
from builder.siteconfig import LocalSiteSettings, SiteConfig


def test_keystone_starts_before_glance_whatever_order_site_yaml_lists_them(tmp_path):
    settings = LocalSiteSettings(components=["s3", "glance", "keystone", "repo"])
    assert LocalSite(tmp_path, settings).components == ["keystone", "glance", "repo", "s3"]
    assert LocalSite(tmp_path, settings, no_auth=True).components == ["glance", "repo", "s3"]


def test_glance_validates_tokens_with_keystone_only_when_the_site_runs_it(tmp_path):
    behind = glance.paste_ini(tmp_path, keystone=True)
    assert "pipeline = healthcheck versionnegotiation authtoken context rootapp" in behind
    fixed = glance.paste_ini(tmp_path, keystone=False)
    assert "pipeline = healthcheck versionnegotiation kilnauth context rootapp" in fixed
    conf = glance.api_conf(tmp_path, 9292, 8080, glance.KeystoneAuth("http://127.0.0.1:5000/v3", "pw"))
    assert "[keystone_authtoken]" in conf and "username = glance" in conf
    assert "[keystone_authtoken]" not in glance.api_conf(tmp_path, 9292, 8080)


def test_glance_config_holding_the_service_password_is_the_owners_only(tmp_path, monkeypatch):
    monkeypatch.setattr(glance, "run_once", lambda argv: (tmp_path / "glance.sqlite").write_text(""))
    auth = glance.KeystoneAuth("http://127.0.0.1:5000/v3", "service-secret")
    glance.prepare(tmp_path, 9292, 8080, tmp_path / "cache", auth)
    assert (tmp_path / "glance-api.conf").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("site_json", "expected"),
    [
        ({"auth": "keystone", "components": ["keystone", "glance"]}, "cloud"),
        ({"auth": "none", "components": ["glance"]}, "endpoint"),
        (None, "endpoint"),  # never up: nothing says Keystone runs
    ],
)
def test_publishers_use_the_local_cloud_exactly_when_the_running_site_put_glance_behind_keystone(
    tmp_path, monkeypatch, site_json, expected
):
    monkeypatch.delenv("OS_CLOUD", raising=False)
    site = SiteConfig(local=LocalSiteSettings(state_dir=str(tmp_path / "state")))
    endpoints = local_endpoints(site, tmp_path)
    if site_json is not None:
        endpoints.state.mkdir(parents=True)
        (endpoints.state / "site.json").write_text(json.dumps(site_json))
    calls = []
    monkeypatch.setattr(GlancePublisher, "connect", classmethod(lambda cls, **kw: calls.append(kw) or kw))
    from_site.SitePublishers(site, tmp_path).glance()
    [call] = calls
    if expected == "cloud":
        assert call["cloud"] == LOCAL_CLOUD and call["clouds_file"] == endpoints.keystone_clouds_yaml
    else:
        assert call["cloud"] is None and call["endpoint"] == endpoints.urls.glance


def test_a_refused_credential_names_the_cloud_and_never_keystones_text():
    revoked = ksa.http.NotFound(
        "Could not find Application Credential: 0f3c9d1e5a (HTTP 404)", http_status=404
    )
    problem = _credential_problem("ci", revoked)
    assert isinstance(problem, EnvironmentProblem) and problem.exit_code == 3
    assert (
        "cloud 'ci'" in str(problem)
        and "refused the credential" in str(problem)
        and "HTTP 404" in str(problem)
    )
    assert "0f3c9d1e5a" not in str(problem)
    down = _credential_problem("ci", ksa.connection.ConnectFailure("http://127.0.0.1:1/v3"))
    assert "not answering" in str(down) and "127.0.0.1:1" not in str(down)
