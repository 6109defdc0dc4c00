"""Publishers built from site.yaml: a real cloud, registry and mirror, or the embedded site's
endpoints (builder/endpoints.py). Each is created on first use, since each may need a service; its
client module is imported then too (openstacksdk, requests, boto3 are heavy: a build that publishes
nowhere, or only to one destination, never pays for the others)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import masking
from ..endpoints import (
    LOCAL_CLOUD,
    LOCAL_S3_ACCESS_KEY,
    LOCAL_S3_SECRET_KEY,
    REPO_KEY_FILE,
    local_endpoints,
    repo_base_url,
)
from ..siteconfig import SiteConfig

Step = Callable[[str], None]


class SitePublishers:
    def __init__(self, site: SiteConfig, root: Path, on_step: Step = lambda _: None):
        self.site = site
        self.root = root
        self.local = local_endpoints(site, root)
        self.on_step = on_step
        self._glance: Any = None
        self._repo: Any = None

    def glance(self) -> Any:
        if self._glance is None:
            from .glance import GlancePublisher  # on first use: start-up time

            cloud = self.site.glance.cloud or os.environ.get("OS_CLOUD")
            method = self.site.glance.method
            if cloud:  # a real cloud: clouds.yaml where openstacksdk finds it (OS_CLIENT_CONFIG_FILE)
                self._glance = GlancePublisher.connect(cloud=cloud, endpoint=None, method=method)
            elif self.local.glance_behind_keystone():  # the local site's own cloud, as kiln site up wrote it
                self._glance = GlancePublisher.connect(
                    cloud=LOCAL_CLOUD,
                    endpoint=None,
                    method=method,
                    clouds_file=self.local.keystone_clouds_yaml,
                )
            else:  # the local Glance without Keystone (kiln site up --no-auth)
                self._glance = GlancePublisher.connect(
                    cloud=None, endpoint=self.local.urls.glance, method=method
                )
        return self._glance

    def registry(self) -> tuple[Any, str]:
        """The registry publisher and the repository prefix (``team`` in ``host:5000/team``)."""
        from .registry import (  # on first use: start-up time
            RegistryClient,
            RegistryPublisher,
            docker_config_auth,
            docker_config_path,
        )

        url = self.site.registry.url or self.local.urls.registry
        host = url.split("/")[0]
        if self.site.registry.docker_config:
            config: Path | None = Path(os.path.expanduser(self.site.registry.docker_config))
        elif not self.site.registry.url:
            config = self.local.registry_docker_config  # the local site's robot (kiln site up)
        else:
            config = None  # docker's own: $DOCKER_CONFIG/config.json
        auth = docker_config_auth(config, host)
        if auth:  # never printed: the password, and the base64 form a docker config and header carry
            masking.register(auth[1])
            masking.register(base64.b64encode(":".join(auth).encode()).decode())
        client = RegistryClient(
            host,
            insecure=self.site.registry.insecure,
            auth=auth,
            auth_source=str(docker_config_path(config)),
        )
        return RegistryPublisher(client), url[len(host) :].strip("/")

    def repo(self) -> Any:
        if self._repo is None:
            from ..signing import ensure_key  # on first use: start-up time
            from .repo import RepoKey, RepoPublisher  # on first use: start-up time

            settings = self.site.repo
            if settings.backend == "path":
                root = Path(os.path.expanduser(settings.path or ""))
            elif settings.backend == "local":
                root = self.local.repo_root
            else:  # s3, rsync: a local working tree, then mirrored
                root = self.local.mirror_work
            base_url = repo_base_url(self.site, self.root)
            if settings.signing_key:
                gnupghome = Path(os.path.expanduser(settings.signing_key.gnupghome))
                key = RepoKey(gnupghome, settings.signing_key.fingerprint, f"{base_url}/{REPO_KEY_FILE}")
            else:
                site_key = ensure_key(self.local.gnupghome, root / REPO_KEY_FILE)
                key = RepoKey(site_key.gnupghome, site_key.fingerprint, f"{base_url}/{REPO_KEY_FILE}")
            self._repo = RepoPublisher(root, key, base_url)
        return self._repo

    def served_repo(self) -> Any:
        """The repo as a runner reads it (asking what is published there makes no key, writes nothing)."""
        from .repo import ServedRepo  # on first use: start-up time

        return ServedRepo(repo_base_url(self.site, self.root))

    def http_dir(self) -> Any:
        """The Bifrost HTTP directory publisher: site.yaml ``ipa_http``, else the local repo tree's ipa/."""
        from .http_dir import HttpDirPublisher  # on first use: start-up time

        settings = self.site.ipa_http
        if settings.root:
            root = Path(os.path.expanduser(settings.root))
            url = settings.url or root.resolve().as_uri()
        else:
            root, url = self.local.ipa_http_root, settings.url or self.local.ipa_http_url
        return HttpDirPublisher(root, url)

    def mirror(self) -> Any:
        settings = self.site.repo
        if settings.backend == "s3" and settings.s3 is not None:
            import boto3  # on first use: start-up time
            from botocore.config import Config  # on first use: start-up time

            from .mirror import S3Mirror, add_content_md5_for_delete  # on first use: start-up time

            local = settings.s3.endpoint_url is None
            client = boto3.client(
                "s3",
                endpoint_url=settings.s3.endpoint_url or self.local.urls.s3,
                region_name=settings.s3.region,
                aws_access_key_id=LOCAL_S3_ACCESS_KEY if local else None,
                aws_secret_access_key=LOCAL_S3_SECRET_KEY if local else None,
                config=Config(s3={"addressing_style": "path"}),
            )
            add_content_md5_for_delete(client)
            return S3Mirror(client, settings.s3.bucket, settings.s3.prefix)
        if settings.backend == "rsync" and settings.rsync_target:
            from .mirror import RsyncMirror  # on first use: start-up time

            return RsyncMirror(settings.rsync_target)
        return None
