"""The container registry for the local site: Debian's docker-registry (distribution 2.x).

Authentication is on, as at a real site: on first prepare the site makes a robot user with a random
password, writes its bcrypt entry to ``htpasswd`` (what the registry checks) and its credentials to a
docker config file (what clients present: the publisher, skopeo ``--authfile``, docker with
``DOCKER_CONFIG``). Both are mode 0600 and kept across restarts, so credentials in use stay valid.
Where they live is ``builder/endpoints.py``'s business (``LocalEndpoints.registry_docker_config``).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from .process import ServiceSpec

ROBOT_USER = "kiln-robot"
REALM = "kiln-local"


def config(state: Path, port: int) -> str:
    return f"""\
# Written by kiln site up.
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {state}/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
auth:
  htpasswd:
    realm: {REALM}
    path: {state}/htpasswd
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def docker_config(host: str, user: str, password: str) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}}, indent=2) + "\n"


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt  # on first use (start-up time); htpasswd accepts $2b$ (golang bcrypt reads any minor)

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n"


def ensure_credentials(state: Path, port: int, docker_config_path: Path) -> None:
    """The robot's htpasswd entry and docker config: made once, never regenerated while both exist.

    A docker config whose registry entry names another port (site.yaml changed it) is rewritten with
    the same credentials; a missing half makes both anew."""
    htpasswd = state / "htpasswd"
    host = f"127.0.0.1:{port}"
    if htpasswd.exists() and docker_config_path.exists():
        auths = json.loads(docker_config_path.read_text()).get("auths", {})
        if host in auths:
            return
        if auths:
            user, _, password = base64.b64decode(next(iter(auths.values()))["auth"]).decode().partition(":")
            _write_private(docker_config_path, docker_config(host, user, password))
            return
    password = secrets.token_urlsafe(24)
    _write_private(htpasswd, htpasswd_line(ROBOT_USER, password))
    _write_private(docker_config_path, docker_config(host, ROBOT_USER, password))


def prepare(state: Path, port: int, docker_config_path: Path) -> None:
    (state / "data").mkdir(parents=True, exist_ok=True)
    ensure_credentials(state, port, docker_config_path)
    (state / "config.yml").write_text(config(state, port))


def _answers(url: str) -> bool:
    """Up: /v2/ answers, 200 or (auth on) 401."""
    import requests  # on first use, not at start-up: a heavy import

    try:
        return requests.get(url, timeout=2).status_code in (200, 401)
    except requests.RequestException:
        return False


def service(state: Path, port: int) -> ServiceSpec:
    return ServiceSpec(
        name="registry",
        argv=("docker-registry", "serve", str(state / "config.yml")),
        env={},
        healthy=lambda: _answers(f"http://127.0.0.1:{port}/v2/"),
    )
