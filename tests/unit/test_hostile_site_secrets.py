"""site.yaml errors never echo credentials: URL userinfo and the values of secret-named keys are
masked in every problem, however the message quotes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import InvalidInput, Location, Problem
from builder.siteconfig import _masked, load_site, mask_secrets


def site_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as info:
        load_site(path, tmp_path)
    return [str(p) for p in info.value.problems]


def test_registry_url_with_credentials_is_masked(tmp_path: Path):
    found = site_problems(tmp_path, "registry:\n  url: 'user:secret@registry.example.com:5000'\n")
    assert len(found) == 1
    assert "secret" not in found[0]
    assert "'***@registry.example.com:5000'" in found[0]
    assert found[0].startswith(f"{tmp_path / 'site.yaml'}:2:3: registry.url: ")


@pytest.mark.parametrize(
    "text",
    [
        "mirrors:\n  debian: 'http://user:s3cr3t@mirror/ debian'\n",  # a space: not a URL
        "mirrors:\n  debian: ['http://user:s3cr3t@mirror/debian']\n",  # a list: not a string
        "repo:\n  base_url: 'ftp://user:s3cr3t@host/x'\n",
        "registry:\n  url: !!int 'user:s3cr3t@host'\n",  # refused while reading the YAML
        "repo:\n  s3: {bucket: b, endpoint_url: 'https://k:s3cr3t@p@s3/ x'}\n",  # an '@' in the password
    ],
)
def test_no_problem_in_site_yaml_prints_a_url_password(tmp_path: Path, text: str):
    found = site_problems(tmp_path, text)
    assert found
    assert not any("s3cr3t" in p for p in found), found
    assert any("***@" in p for p in found), found


def test_values_under_secret_named_keys_are_never_shown():
    problem = Problem(
        "must be a string (got 'hunter2')", Location("site.yaml", 3, 5), ("registry", "password")
    )
    assert str(_masked(problem)) == "site.yaml:3:5: registry.password: must be a string (got ***)"
    token = Problem("must be one of a, b (got 'tok-123')", None, ("glance", "api_token"))
    assert "tok-123" not in str(_masked(token))


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://user:pw@host/x", "http://***@host/x"),
        ("got 'https://token@host:8080/p'", "got 'https://***@host:8080/p'"),
        ("user:pw@registry.example.com/x", "***@registry.example.com/x"),
        (
            "registry.example.com:5000/x and mail@example.com",
            "registry.example.com:5000/x and mail@example.com",
        ),
    ],
)
def test_mask_secrets(text: str, masked: str):
    assert mask_secrets(text) == masked
