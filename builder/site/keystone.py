"""Keystone for the local site: Debian's python3-keystone on sqlite, served by its WSGI script on 127.0.0.1.

Real clouds put Glance behind Keystone, and CI jobs authenticate with application credentials; the
local site does the same, so that a wrong, expired or revoked credential fails here as it would
there. ``prepare`` writes the config, the database (db_sync once per Keystone version, then a cached
copy), the fernet and credential keys, and three accounts made with ``keystone-manage bootstrap``
(idempotent): ``admin`` (the catalog), ``glance`` (the service user keystonemiddleware validates
tokens with) and ``kiln`` (the account people and Kiln use: the ``kiln-local`` cloud in the
clouds.yaml written beside them). ``register_image_service`` puts Glance in the catalog once
Keystone answers, so that clients find Glance as on any cloud.

The passwords are made here, kept in ``accounts.json`` and ``clouds.yaml`` (mode 0600) and never
printed; ``kiln site down`` leaves them, so a restarted site keeps its accounts.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ..endpoints import LOCAL_CLOUD as CLOUD
from ..errors import EnvironmentProblem
from ..host.net import http_ok
from .process import ServiceSpec, installed_version, run_once, write_private

PROJECT = "kiln"
USER = "kiln"
REGION = "RegionOne"
WSGI_SCRIPT = "/usr/bin/keystone-wsgi-public"


@dataclass(frozen=True)
class Accounts:
    """The local Keystone's passwords (made once per state directory)."""

    admin: str
    glance: str
    kiln: str

    @classmethod
    def load_or_make(cls, path: Path) -> Accounts:
        if path.exists():
            try:
                return cls(**json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                raise EnvironmentProblem(
                    f"{path}: not the local Keystone's accounts ({exc}): remove it"
                ) from exc
        accounts = cls(*(secrets.token_urlsafe(24) for _ in range(3)))
        write_private(path, json.dumps(asdict(accounts)))
        return accounts


def keystone_conf(state: Path) -> str:
    return f"""\
# Written by kiln site up.
[DEFAULT]
log_file = {state}/keystone.log

[database]
connection = sqlite:///{state}/keystone.sqlite

[token]
provider = fernet

[fernet_tokens]
key_repository = {state}/fernet-keys

[fernet_receipts]
key_repository = {state}/fernet-keys

[credential]
key_repository = {state}/credential-keys
"""


def prepare(state: Path, url: str, clouds: Path, cache_dir: Path) -> Accounts:
    """Config, database, keys and accounts for Keystone at ``url`` (its identity API); ``clouds``, the
    clouds.yaml naming the ``kiln-local`` cloud."""
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "keystone.conf"
    conf.write_text(keystone_conf(state))
    accounts = Accounts.load_or_make(state / "accounts.json")
    manage = ["keystone-manage", "--config-file", str(conf)]
    database = state / "keystone.sqlite"
    if not database.exists():
        cached = cache_dir / f"keystone-{installed_version('keystone')}.sqlite"
        if cached.exists():
            shutil.copyfile(cached, database)
        else:
            run_once([*manage, "db_sync"])
            cache_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(database, cached.with_suffix(".tmp"))
            cached.with_suffix(".tmp").replace(cached)
    # WAL: a read transaction Keystone leaves open after a failed request (a refused credential) would
    # otherwise block every later write ("database is locked": revoking a credential failed so).
    with closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    owner = ["--keystone-user", "root", "--keystone-group", "root"]
    if not (state / "fernet-keys").is_dir():
        run_once([*manage, "fernet_setup", *owner])
    if not (state / "credential-keys").is_dir():
        run_once([*manage, "credential_setup", *owner])
    bootstrapped = state / "bootstrapped"
    if not bootstrapped.exists() or bootstrapped.read_text() != url:
        endpoints = [f"--bootstrap-{i}-url={url}" for i in ("admin", "internal", "public")]
        run_once([*manage, "bootstrap", f"--bootstrap-password={accounts.admin}", *endpoints,
                  f"--bootstrap-region-id={REGION}"])  # fmt: skip
        for user, password, project in (
            ("glance", accounts.glance, "service"),
            (USER, accounts.kiln, PROJECT),
        ):
            # admin on its own project: Glance's policy lets only admins make an image public
            account = [f"--bootstrap-username={user}", f"--bootstrap-password={password}"]
            run_once([*manage, "bootstrap", *account, f"--bootstrap-project-name={project}",
                      "--bootstrap-role-name=admin"])  # fmt: skip
        bootstrapped.write_text(url)
    cloud = {
        "auth_url": url,
        "username": USER,
        "password": accounts.kiln,
        "project_name": PROJECT,
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    }
    write_private(
        clouds,
        "# Written by kiln site up: the local site's cloud (password auth, for people).\n"
        + yaml.safe_dump(
            {"clouds": {CLOUD: {"auth": cloud, "region_name": REGION, "identity_api_version": 3}}}
        ),
    )
    return accounts


def service(state: Path, port: int, url: str) -> ServiceSpec:
    # Keystone's own WSGI script, whose server is one thread (Python's wsgiref): enough for one site's
    # clients, and sqlite takes one writer. Under uWSGI its worker aborted now and then (greenlet:
    # "Accessing state after destruction"), and threads writing at once hit "database is locked".
    argv = ("/usr/bin/python3", WSGI_SCRIPT, "--host", "127.0.0.1", "--port", str(port))
    return ServiceSpec(
        name="keystone",
        argv=argv,
        env={"OS_KEYSTONE_CONFIG_DIR": str(state), "OS_KEYSTONE_CONFIG_FILES": "keystone.conf"},
        healthy=lambda: http_ok(url),
    )


def register_image_service(url: str, accounts: Accounts, glance_url: str) -> None:
    """Glance in the catalog (public and internal endpoints at ``glance_url``), once; an endpoint
    at another URL (the site's ports changed) is moved."""
    import requests  # on first use: start-up time

    base = url
    auth = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "admin", "domain": {"id": "default"}, "password": accounts.admin}
                },
            },
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
        }
    }
    try:
        issued = requests.post(f"{base}/auth/tokens", json=auth, timeout=30)
        issued.raise_for_status()
        headers = {"X-Auth-Token": issued.headers["X-Subject-Token"]}

        def call(method: str, path: str, **body: object) -> dict:
            response = requests.request(method, f"{base}/{path}", headers=headers, timeout=30, **body)
            response.raise_for_status()
            return response.json() if response.content else {}

        services = call("GET", "services?type=image")["services"]
        service_id = (
            services[0]["id"]
            if services
            else call("POST", "services", json={"service": {"type": "image", "name": "glance"}})["service"][
                "id"
            ]
        )
        existing = call("GET", f"endpoints?service_id={service_id}")["endpoints"]
        for interface in ("public", "internal"):
            mine = [e for e in existing if e["interface"] == interface]
            if mine and mine[0]["url"] == glance_url:
                continue
            if mine:
                call("PATCH", f"endpoints/{mine[0]['id']}", json={"endpoint": {"url": glance_url}})
                continue
            endpoint = {
                "service_id": service_id,
                "interface": interface,
                "url": glance_url,
                "region_id": REGION,
            }
            call("POST", "endpoints", json={"endpoint": endpoint})
    except (requests.RequestException, KeyError, ValueError) as exc:
        raise EnvironmentProblem(f"the local Keystone did not register Glance in its catalog: {exc}") from exc
