"""The embedded local site: Keystone, Glance behind it, a registry, a signed repo mirror over HTTP and
Swift S3, on 127.0.0.1.

``up`` prepares each component's state (configs, database, rings, accounts, signing key), starts what
is not running, waits for health and writes ``site.json`` (the URLs clients and publishers use, and
whether Glance is behind Keystone). ``down`` stops only processes whose pid files this site wrote.
``status`` probes health.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import signing
from ..endpoints import REPO_KEY_FILE, LocalEndpoints, SiteURLs, urls_for
from ..errors import EnvironmentProblem
from ..host.net import http_ok
from ..host.run import Runner
from ..siteconfig import LocalSiteSettings
from . import glance, keystone, registry, swift
from .process import ServiceProcess, ServiceSpec


def cache_dir() -> Path:
    return Path.home() / ".cache" / "kiln"


# Keystone first: Glance's middleware validates tokens with it from its first request.
START_ORDER = ("keystone", "glance", "registry", "repo", "s3")


class LocalSite:
    def __init__(
        self, state: Path, settings: LocalSiteSettings, runner: Runner | None = None, no_auth: bool = False
    ):
        self.state = state
        self.runner = runner or Runner()
        self.settings = settings
        self.ports = settings.ports
        # The components this site runs, in start order; --no-auth: Glance without Keystone.
        self.components = [
            c for c in START_ORDER if c in settings.components and not (no_auth and c == "keystone")
        ]
        self._accounts: keystone.Accounts | None = None
        self.run_dir = state / "run"
        self.log_dir = state / "logs"
        # Where it listens and keeps its files: the same endpoints publishers compute from site.yaml.
        self.endpoints = LocalEndpoints(state, urls_for(settings.ports))

    @property
    def urls(self) -> SiteURLs:
        return self.endpoints.urls

    @property
    def repo_root(self) -> Path:
        return self.endpoints.repo_root

    @property
    def gnupghome(self) -> Path:
        return self.endpoints.gnupghome

    # -- components ---------------------------------------------------------------------------------

    def _specs(self, component: str) -> list[ServiceSpec]:
        """The services of one component (site.yaml ``local_site.components``)."""
        p = self.ports
        specs: dict[str, Callable[[], list[ServiceSpec]]] = {
            "keystone": lambda: [keystone.service(self.state / "keystone", p.keystone, self.urls.keystone)],
            "glance": lambda: [glance.service(self.state / "glance", p.glance)],
            "registry": lambda: [registry.service(self.state / "registry", p.registry)],
            "repo": lambda: [self._repo_http_spec()],
            "s3": lambda: swift.services(self.state / "swift", self._swift_ports()),
        }
        return specs[component]()

    def _swift_ports(self) -> Any:
        p = self.ports
        return swift.SwiftPorts(
            proxy=p.s3,
            account=p.swift_account,
            container=p.swift_container,
            object=p.swift_object,
            memcached=p.memcached,
        )

    def _repo_http_spec(self) -> ServiceSpec:
        port = self.ports.repo
        return ServiceSpec(
            name="repo-http",
            argv=(
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(self.repo_root),
                str(port),
            ),
            env={},
            healthy=lambda: http_ok(f"http://127.0.0.1:{port}/{REPO_KEY_FILE}"),
        )

    def _prepare(self, component: str) -> None:
        """What a component needs on disk before it starts (configuration, a signing key)."""
        p = self.ports
        prepare: dict[str, Callable[[], object]] = {
            "keystone": self._prepare_keystone,
            "glance": lambda: glance.prepare(
                self.state / "glance", p.glance, p.repo, cache_dir(), self._glance_auth()
            ),
            "registry": lambda: registry.prepare(
                self.state / "registry", p.registry, self.endpoints.registry_docker_config
            ),
            "repo": self._prepare_repo,
            "s3": lambda: swift.prepare(self.state / "swift", self._swift_ports()),
        }
        prepare[component]()

    def _prepare_keystone(self) -> None:
        self._accounts = keystone.prepare(
            self.state / "keystone", self.urls.keystone, self.endpoints.keystone_clouds_yaml, cache_dir()
        )

    def _glance_auth(self) -> glance.KeystoneAuth | None:
        if self._accounts is None:
            return None  # no Keystone in this site: the fixed-identity filter
        return glance.KeystoneAuth(self.urls.keystone, self._accounts.glance)

    def _ready(self, component: str, on_step: Callable[[str], None]) -> None:
        """What a component needs from the others once it answers: Glance, a place in Keystone's
        catalog (clients find it there, as on any cloud)."""
        if self._accounts is None:
            return
        registrations: dict[str, Callable[[], None]] = {
            "glance": lambda: keystone.register_image_service(
                self.urls.keystone, self._accounts, self.urls.glance
            )
        }
        if component in registrations:
            on_step(f"registering {component} in Keystone's catalog")
            registrations[component]()

    def _prepare_repo(self) -> None:
        self.repo_root.mkdir(parents=True, exist_ok=True)
        signing.ensure_key(self.gnupghome, self.repo_root / REPO_KEY_FILE)

    def processes(self, component: str) -> list[ServiceProcess]:
        return [
            ServiceProcess(spec, self.run_dir, self.log_dir, self.runner) for spec in self._specs(component)
        ]

    # -- verbs -------------------------------------------------------------------------------------

    def up(self, on_step: Callable[[str], None] = lambda _: None, timeout_s: float = 60.0) -> SiteURLs:
        self.state.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for component in self.components:
            on_step(f"preparing {component}")
            self._prepare(component)
            for proc in self.processes(component):
                if proc.running():
                    # Up, or still starting: give it a moment. Running but not answering (hung, or
                    # killed and not yet reaped): stop it, so that the start below is a fresh one.
                    if proc.spec.healthy() or proc.wait_healthy(5.0):
                        continue
                    on_step(f"restarting {proc.spec.name} (not answering)")
                    proc.stop()
                on_step(f"starting {proc.spec.name}")
                proc.start()
                remaining = max(5.0, timeout_s - (time.monotonic() - started))
                if not proc.wait_healthy(remaining):
                    raise EnvironmentProblem(
                        f"{proc.spec.name} did not become healthy within {remaining:.0f}s "
                        f"(log: {proc.log_path})\n{proc.tail()}"
                    )
            self._ready(component, on_step)
        info = {
            "urls": self.urls.as_json(),
            "components": self.components,
            "auth": "keystone" if self._accounts is not None else "none",
            "repo_key": f"{self.urls.repo}/{REPO_KEY_FILE}",
            "registry_docker_config": str(self.endpoints.registry_docker_config),  # a path, not secrets
        }
        if self._accounts is not None:
            info["clouds_yaml"] = str(self.endpoints.keystone_clouds_yaml)  # a path: OS_CLIENT_CONFIG_FILE
            info["cloud"] = keystone.CLOUD
        tmp = self.state / "site.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state / "site.json")
        return self.urls

    def down(self) -> list[str]:
        stopped = []
        for component in reversed(START_ORDER):  # whatever an earlier up started, --no-auth or not
            for proc in reversed(self.processes(component)):
                if proc.stop():
                    stopped.append(proc.spec.name)
        # gpg starts an agent per GNUPGHOME on first use (signing); it would outlive the site.
        signing.stop_daemons(self.gnupghome, self.runner)
        return stopped

    def _started_components(self) -> list[str]:
        """What the last ``up`` started (site.json; ``--no-auth`` leaves Keystone out), else what
        this site would start."""
        recorded = self.endpoints.recorded().get("components")
        return [c for c in START_ORDER if c in recorded] if isinstance(recorded, list) else self.components

    def status(self) -> dict[str, dict[str, Any]]:
        report: dict[str, dict[str, Any]] = {}
        for component in self._started_components():
            for proc in self.processes(component):
                report[proc.spec.name] = {
                    "component": component,
                    "pid": proc.pid(),
                    "healthy": proc.spec.healthy(),
                    "log": str(proc.log_path),
                }
        return report
