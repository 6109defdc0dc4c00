"""Registry credentials from docker config.json, and RegistryClient's retries and bearer auth."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from builder.errors import CommandFailed, EnvironmentProblem
from builder.publishers.registry import RegistryClient, docker_config_auth

SCOPE = "repository:kiln/base:pull,push"


# --- docker_config_auth -------------------------------------------------------------------------


def write_config(tmp_path, auths: dict[str, Any]):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_config_auth_decodes_user_and_password(tmp_path):
    path = write_config(tmp_path, {"registry.example.com:5000": {"auth": b64("robot:s3:cr:et")}})
    # Only the first colon separates: passwords may contain colons.
    assert docker_config_auth(path, "registry.example.com:5000") == ("robot", "s3:cr:et")


def test_docker_config_auth_accepts_https_prefixed_key(tmp_path):
    path = write_config(tmp_path, {"https://registry.example.com": {"auth": b64("u:p")}})
    assert docker_config_auth(path, "registry.example.com") == ("u", "p")


def test_docker_config_auth_prefers_the_plain_key(tmp_path):
    path = write_config(
        tmp_path,
        {
            "https://registry.example.com": {"auth": b64("old:x")},
            "registry.example.com": {"auth": b64("new:y")},
        },
    )
    assert docker_config_auth(path, "registry.example.com") == ("new", "y")


def test_docker_config_auth_other_registry_or_no_auth_is_none(tmp_path):
    path = write_config(tmp_path, {"other.example.com": {"auth": b64("u:p")}, "r.example.com": {}})
    assert docker_config_auth(path, "registry.example.com") is None
    assert docker_config_auth(path, "r.example.com") is None


def test_docker_config_auth_missing_or_broken_file_is_none(tmp_path):
    assert docker_config_auth(tmp_path / "absent.json", "registry.example.com") is None
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert docker_config_auth(broken, "registry.example.com") is None


def test_docker_config_auth_defaults_to_docker_config_dir(tmp_path, monkeypatch):
    write_config(tmp_path, {"registry.example.com": {"auth": b64("env:user")}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_auth(None, "registry.example.com") == ("env", "user")


# --- RegistryClient.request ---------------------------------------------------------------------


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    body: Any = None

    def json(self) -> Any:
        return self.body


class FakeSession:
    """Hands out canned replies (or raises canned exceptions) and records every call."""

    def __init__(self, replies: list[Any], token_replies: list[Reply] | None = None):
        self.replies = list(replies)
        self.token_replies = list(token_replies or [])
        self.calls: list[dict[str, Any]] = []
        self.token_calls: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs, "headers": dict(kwargs["headers"])})
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def get(self, url: str, **kwargs: Any) -> Reply:
        self.token_calls.append({"url": url, **kwargs})
        return self.token_replies.pop(0)


def client(session: FakeSession, **kwargs: Any) -> tuple[RegistryClient, list[float]]:
    sleeps: list[float] = []
    made = RegistryClient("registry.example.com", session=session, sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]
    return made, sleeps


def test_success_first_time_does_not_sleep():
    session = FakeSession([Reply(200)])
    c, sleeps = client(session)
    response = c.request("GET", "/v2/", scope=SCOPE, ok=(200,))
    assert response.status_code == 200
    assert sleeps == []
    [call] = session.calls
    assert call["method"] == "GET"
    assert call["url"] == "https://registry.example.com/v2/"
    assert call["timeout"] == c.timeout_s
    assert "Authorization" not in call["headers"]


def test_local_registry_is_plain_http():
    session = FakeSession([Reply(200)])
    RegistryClient("127.0.0.1:15000", session=session).request("GET", "/v2/", scope=SCOPE, ok=(200,))  # type: ignore[arg-type]
    assert session.calls[0]["url"] == "http://127.0.0.1:15000/v2/"


def test_transient_failures_are_retried_with_exponential_backoff():
    session = FakeSession([Reply(500), Reply(503), requests.ConnectionError("reset"), Reply(201)])
    c, sleeps = client(session, backoff_s=0.5)
    response = c.request("PUT", "/v2/kiln/base/manifests/latest", scope=SCOPE, ok=(201,))
    assert response.status_code == 201
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(session.calls) == 4


def test_retries_run_out_with_an_error_naming_method_and_path():
    session = FakeSession([Reply(503, text="busy")] * 5)
    c, sleeps = client(session, retries=4, backoff_s=1.0)
    with pytest.raises(CommandFailed) as info:
        c.request("PUT", "/v2/kiln/base/blobs/uploads/abc?digest=sha256:123", scope=SCOPE, ok=(201,))
    message = str(info.value)
    assert "PUT https://registry.example.com/v2/kiln/base/blobs/uploads/abc failed" in message
    assert "HTTP 503: busy" in message
    assert "digest=" not in message  # the query string is left out
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    assert len(session.calls) == 5


def test_connection_errors_that_never_stop_are_reported():
    session = FakeSession([requests.ConnectionError("refused")] * 3)
    c, sleeps = client(session, retries=2)
    with pytest.raises(CommandFailed) as info:
        c.request("HEAD", "/v2/kiln/base/blobs/sha256:aa", scope=SCOPE, ok=(200, 404))
    assert "HEAD" in str(info.value)
    assert "ConnectionError: refused" in str(info.value)
    assert len(sleeps) == 2


def test_client_error_is_not_retried():
    session = FakeSession([Reply(400, text="MANIFEST_INVALID"), Reply(201)])
    c, sleeps = client(session)
    with pytest.raises(CommandFailed) as info:
        c.request("PUT", "/v2/kiln/base/manifests/latest", scope=SCOPE, ok=(201,))
    assert "HTTP 400: MANIFEST_INVALID" in str(info.value)
    assert len(session.calls) == 1
    assert sleeps == []


def test_listed_non_2xx_statuses_are_answers_not_errors():
    session = FakeSession([Reply(404)])
    c, _ = client(session)
    assert c.request("HEAD", "/v2/kiln/base/blobs/sha256:aa", scope=SCOPE, ok=(200, 404)).status_code == 404


def test_basic_credentials_are_sent_without_a_token():
    session = FakeSession([Reply(200)])
    c, _ = client(session, auth=("robot", "pw"))
    c.request("GET", "/v2/", scope=SCOPE, ok=(200,), headers={"Accept": "x"})
    headers = session.calls[0]["headers"]
    assert headers["Authorization"] == "Basic " + b64("robot:pw")
    assert headers["Accept"] == "x"


def bearer_challenge(**extra: str) -> Reply:
    params = {"realm": "https://auth.example.com/token", "service": "registry.example.com", **extra}
    value = "Bearer " + ",".join(f'{k}="{v}"' for k, v in params.items())
    return Reply(401, headers={"WWW-Authenticate": value})


def test_bearer_challenge_fetches_a_token_and_retries():
    session = FakeSession(
        [bearer_challenge(), Reply(200)], token_replies=[Reply(200, body={"token": "tok-1"})]
    )
    c, _ = client(session, auth=("robot", "pw"))
    response = c.request("GET", "/v2/kiln/base/tags/list", scope=SCOPE, ok=(200,))
    assert response.status_code == 200
    [token_call] = session.token_calls
    assert token_call["url"] == "https://auth.example.com/token"
    assert token_call["params"] == {"service": "registry.example.com", "scope": SCOPE}
    assert token_call["auth"].username == "robot"
    assert token_call["auth"].password == "pw"
    assert session.calls[0]["headers"]["Authorization"].startswith("Basic ")
    assert session.calls[1]["headers"]["Authorization"] == "Bearer tok-1"


def test_bearer_token_is_reused_for_the_same_scope():
    session = FakeSession(
        [bearer_challenge(), Reply(200), Reply(200)],
        token_replies=[Reply(200, body={"access_token": "tok-2"})],
    )
    c, _ = client(session)
    c.request("GET", "/v2/a", scope=SCOPE, ok=(200,))
    c.request("GET", "/v2/b", scope=SCOPE, ok=(200,))
    assert len(session.token_calls) == 1
    assert session.calls[2]["headers"]["Authorization"] == "Bearer tok-2"


def test_challenge_scope_wins_over_the_requested_scope():
    session = FakeSession(
        [bearer_challenge(scope="repository:kiln/base:pull"), Reply(200)],
        token_replies=[Reply(200, body={"token": "t"})],
    )
    c, _ = client(session)
    c.request("GET", "/v2/a", scope=SCOPE, ok=(200,))
    assert session.token_calls[0]["params"]["scope"] == "repository:kiln/base:pull"


def test_refused_token_means_the_401_is_reported():
    session = FakeSession([bearer_challenge()], token_replies=[Reply(403)])
    c, _ = client(session)
    with pytest.raises(EnvironmentProblem) as info:  # exit 3: the site's credentials, not the build
        c.request("GET", "/v2/kiln/base/tags/list", scope=SCOPE, ok=(200,))
    assert "refused GET https://registry.example.com/v2/kiln/base/tags/list (HTTP 401" in str(info.value)
    assert len(session.calls) == 1


def test_basic_challenge_is_not_a_token_exchange():
    session = FakeSession([Reply(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})])
    c, _ = client(session)
    with pytest.raises(EnvironmentProblem, match="HTTP 401"):
        c.request("GET", "/v2/", scope=SCOPE, ok=(200,))
    assert session.token_calls == []


def test_a_401_names_the_docker_config_consulted_and_never_the_password():
    session = FakeSession([Reply(401, headers={"WWW-Authenticate": 'Basic realm="kiln-local"'})])
    c, _ = client(session)
    c.auth, c.auth_source = ("robot", "hunter2-secret"), "/srv/kiln/docker/config.json"
    with pytest.raises(EnvironmentProblem) as info:
        c.request("PUT", "/v2/kiln/base/manifests/1.0", scope=SCOPE, ok=(201,))
    message = str(info.value)
    assert "registry registry.example.com refused PUT" in message
    assert "/srv/kiln/docker/config.json (its credentials were refused)" in message
    assert "hunter2-secret" not in message
    assert base64.b64encode(b"robot:hunter2-secret").decode() not in message
    assert len(session.calls) == 1  # a 401 is not retried


def test_expired_bearer_token_is_refreshed():
    session = FakeSession(
        [bearer_challenge(), Reply(200), bearer_challenge(), Reply(201)],
        token_replies=[Reply(200, body={"token": "old"}), Reply(200, body={"token": "new"})],
    )
    c, _ = client(session)
    c.request("GET", "/v2/a", scope=SCOPE, ok=(200,))
    response = c.request("PUT", "/v2/b", scope=SCOPE, ok=(201,))  # token "old" has expired by now
    assert response.status_code == 201
    assert session.calls[-1]["headers"]["Authorization"] == "Bearer new"


def test_bearer_auth_does_not_count_as_a_retry():
    session = FakeSession([bearer_challenge(), Reply(200)], token_replies=[Reply(200, body={"token": "t"})])
    c, _ = client(session, retries=0)
    assert c.request("GET", "/v2/a", scope=SCOPE, ok=(200,)).status_code == 200
    assert session.calls[-1]["headers"]["Authorization"] == "Bearer t"
