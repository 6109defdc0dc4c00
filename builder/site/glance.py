"""Glance for the local site: Debian's glance-api, standalone, from a config Kiln writes.

Why Debian's package and not PyPI's glance: glance-api 25.x (Debian 12) still runs as a standalone
eventlet server with its own config, installs with apt like the other site services, and keeps
~150 MB of OpenStack server libraries out of Kiln's own virtual environment. PyPI's glance 33.x only
runs as a WSGI app (gunicorn + OS_GLANCE_CONFIG_DIR); the publisher code is the same either way.

Behind the local Keystone (site/keystone.py) by default: keystonemiddleware's ``authtoken`` validates
each token with the ``glance`` service user, as on a real cloud. Without Keystone (``kiln site up
--no-auth``, or site.yaml's components without it): a 10-line paste filter (``kiln_glance_auth``) sets
the headers Keystone's middleware would (identity confirmed, project, user, roles), so that Glance's
own ``context`` middleware builds a real request context and import tasks get an owner.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..host.net import http_ok
from .process import ServiceSpec, installed_version, run_once, write_private

PROJECT_ID = "kiln"


@dataclass(frozen=True)
class KeystoneAuth:
    """What keystonemiddleware needs: where Keystone is, and the service user's password."""

    url: str
    glance_password: str


AUTH_FILTER = '''\
"""Paste filter for Kiln's local Glance: what Keystone's auth_token would set, fixed."""


def filter_factory(global_conf, **local_conf):
    project = local_conf.get("project_id", "kiln")

    def _filter(app):
        def middleware(environ, start_response):
            environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed"
            environ["HTTP_X_PROJECT_ID"] = project
            environ["HTTP_X_TENANT_ID"] = project
            environ["HTTP_X_USER_ID"] = "kiln"
            environ["HTTP_X_ROLES"] = "admin,member,reader"
            return app(environ, start_response)

        return middleware

    return _filter
'''


def paste_ini(state: Path, keystone: bool = True) -> str:
    auth = "authtoken" if keystone else "kilnauth"
    return f"""\
# Written by kiln site up. The stock pipelines: Keystone's authtoken, or Kiln's fixed-identity filter.
[pipeline:glance-api-kiln]
pipeline = healthcheck versionnegotiation {auth} context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:healthcheck]
paste.filter_factory = oslo_middleware:Healthcheck.factory
backends = disable_by_file
disable_by_file_path = {state}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:kilnauth]
paste.filter_factory = kiln_glance_auth:filter_factory
project_id = {PROJECT_ID}

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = false
"""


def api_conf(state: Path, port: int, repo_port: int, keystone: KeystoneAuth | None = None) -> str:
    return _api_conf(state, port, repo_port) + (_authtoken_conf(keystone) if keystone else "")


def _authtoken_conf(keystone: KeystoneAuth) -> str:
    return f"""
[keystone_authtoken]
www_authenticate_uri = {keystone.url}
auth_url = {keystone.url}
auth_type = password
user_domain_name = Default
project_domain_name = Default
project_name = service
username = glance
password = {keystone.glance_password}
"""


def _api_conf(state: Path, port: int, repo_port: int) -> str:
    return f"""\
# Written by kiln site up.
[DEFAULT]
bind_host = 127.0.0.1
bind_port = {port}
workers = 1
log_file = {state}/glance-api.log
enabled_backends = fs:file
enabled_import_methods = [glance-direct,web-download]
image_size_cap = 107374182400

[database]
connection = sqlite:///{state}/glance.sqlite

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {state}/images

[os_glance_staging_store]
filesystem_store_datadir = {state}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {state}/tasks

[paste_deploy]
flavor = kiln
config_file = {state}/glance-api-paste.ini

[oslo_policy]
enforce_new_defaults = false
enforce_scope = false

[import_filtering_opts]
allowed_schemes = [http]
allowed_hosts = [127.0.0.1]
allowed_ports = [{repo_port}]
"""


def prepare(
    state: Path, port: int, repo_port: int, cache_dir: Path, keystone: KeystoneAuth | None = None
) -> None:
    """Write the config and create the database (db_sync once; a cached copy after that)."""
    for sub in ("images", "staging", "tasks"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "kiln_glance_auth.py").write_text(AUTH_FILTER)
    (state / "glance-api-paste.ini").write_text(paste_ini(state, keystone is not None))
    write_private(state / "glance-api.conf", api_conf(state, port, repo_port, keystone))  # a password
    database = state / "glance.sqlite"
    if database.exists():
        return
    cached = cache_dir / f"glance-{installed_version('glance')}.sqlite"
    if not cached.exists():
        run_once(["glance-manage", "--config-file", str(state / "glance-api.conf"), "db_sync"])
        cache_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(database, cached.with_suffix(".tmp"))
        cached.with_suffix(".tmp").replace(cached)
    else:
        shutil.copyfile(cached, database)


def service(state: Path, port: int) -> ServiceSpec:
    return ServiceSpec(
        name="glance-api",
        argv=("glance-api", "--config-file", str(state / "glance-api.conf")),
        env={"PYTHONPATH": str(state)},  # where kiln_glance_auth lives
        healthy=lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck"),
    )
