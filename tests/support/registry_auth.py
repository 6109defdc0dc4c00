"""The local registry's credentials, as clients present them (the site writes them on `kiln site up`)."""

from __future__ import annotations

import os
from pathlib import Path

from builder.publishers.registry import RegistryClient, docker_config_auth


def docker_config(site) -> Path:
    """The local site's docker config file (``auths.<host:port>.auth``)."""
    return site.endpoints.registry_docker_config


def authfile_args(site) -> list[str]:
    """skopeo's arguments for the local registry: plain HTTP, the site's credentials."""
    return ["--tls-verify=false", "--authfile", str(docker_config(site))]


def docker_env(site, environ: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for the docker CLI that logs in to the local registry (``DOCKER_CONFIG``)."""
    return {**(os.environ if environ is None else environ), "DOCKER_CONFIG": str(docker_config(site).parent)}


def credentials(site) -> tuple[str, str]:
    auth = docker_config_auth(docker_config(site), site.urls.registry)
    assert auth is not None, f"{docker_config(site)} holds no credentials for {site.urls.registry}"
    return auth


def client(site, **kwargs) -> RegistryClient:
    """A RegistryClient for the local registry with the site's credentials."""
    return RegistryClient(
        site.urls.registry, auth=credentials(site), auth_source=str(docker_config(site)), **kwargs
    )
