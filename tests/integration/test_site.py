"""kiln site up/status/down against the real services."""

from __future__ import annotations

import json
import urllib.request

import pytest

from builder.site.local import REPO_KEY_FILE

pytestmark = pytest.mark.site


def test_site_is_up_within_60_seconds_and_every_service_answers(local_site):
    assert local_site.startup_seconds < 60
    status = local_site.status()
    assert set(status) >= {"glance-api", "registry", "repo-http", "swift-proxy"}
    assert all(entry["healthy"] for entry in status.values()), status
    info = json.loads((local_site.state / "site.json").read_text())
    assert info["urls"]["glance"] == local_site.urls.glance
    with urllib.request.urlopen(f"{local_site.urls.repo}/{REPO_KEY_FILE}") as response:
        assert response.read().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_up_again_is_a_no_op_that_keeps_the_same_processes(local_site):
    before = {name: entry["pid"] for name, entry in local_site.status().items()}
    local_site.up()
    after = {name: entry["pid"] for name, entry in local_site.status().items()}
    assert after == before
