"""The embedded local site's endpoints and state paths, computed from site.yaml alone.

Publishers reach the local site exactly as they reach a real cloud: through URLs and paths. This
module says where the embedded site listens and keeps its files; ``builder/site/`` starts the
services there, and nothing under ``builder/publishers/`` or ``builder/verify/`` imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .siteconfig import LocalPorts, SiteConfig

LOCAL_CLOUD = "kiln-local"  # the local site's cloud in the clouds.yaml kiln site up writes (Keystone)
REPO_KEY_FILE = "RPM-GPG-KEY-kiln"  # the repo signing key's public half, at the repo tree's root

# The local Swift's tempauth account (S3 access key "account:user"): a fixed loopback-only
# credential that the site writes into its proxy config and the S3 mirror client presents.
LOCAL_S3_ACCESS_KEY = "kiln:kiln"
LOCAL_S3_SECRET_KEY = "kiln-local-secret"


@dataclass(frozen=True)
class SiteURLs:
    glance: str
    registry: str  # host:port, as docker and skopeo spell it
    repo: str
    s3: str
    keystone: str  # the identity API (v3): clients authenticate here when the site runs Keystone

    def as_json(self) -> dict[str, str]:
        return {
            "glance": self.glance,
            "registry": self.registry,
            "repo": self.repo,
            "s3": self.s3,
            "keystone": self.keystone,
        }


@dataclass(frozen=True)
class LocalEndpoints:
    """Where the embedded site listens (127.0.0.1 only) and keeps its state."""

    state: Path
    urls: SiteURLs

    @property
    def repo_root(self) -> Path:
        return self.state / "repo"

    @property
    def gnupghome(self) -> Path:
        return self.state / "gnupg"

    @property
    def registry_docker_config(self) -> Path:
        """The local registry's credentials, as a docker config file (mode 0600, made by ``kiln site
        up``). Named ``config.json`` so that its directory can be docker's ``DOCKER_CONFIG``; skopeo
        and podman take the file itself (``--authfile``)."""
        return self.state / "registry" / "docker-config" / "config.json"

    @property
    def ipa_http_root(self) -> Path:
        """IPA ramdisks for Bifrost (publishers/http_dir.py), served by the repo's HTTP server."""
        return self.repo_root / "ipa"

    @property
    def ipa_http_url(self) -> str:
        return f"{self.urls.repo}/ipa"

    @property
    def keystone_clouds_yaml(self) -> Path:
        """The local site's cloud (``kiln-local``, password auth), written by ``kiln site up``."""
        return self.state / "keystone" / "clouds.yaml"

    def recorded(self) -> dict:
        """What the last ``kiln site up`` recorded in ``site.json`` (its URLs, the components it
        started, whether Glance is behind Keystone); empty when the site never came up."""
        try:
            info = json.loads((self.state / "site.json").read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def glance_behind_keystone(self) -> bool:
        """Whether the running site put Glance behind Keystone (``--no-auth`` may differ from
        site.yaml); False when the site never came up."""
        return self.recorded().get("auth") == "keystone"

    @property
    def mirror_work(self) -> Path:
        """A local working tree for repos that are then mirrored (S3, rsync)."""
        return self.state / "mirror-work"


def urls_for(ports: LocalPorts) -> SiteURLs:
    return SiteURLs(
        glance=f"http://127.0.0.1:{ports.glance}",
        registry=f"127.0.0.1:{ports.registry}",
        repo=f"http://127.0.0.1:{ports.repo}",
        s3=f"http://127.0.0.1:{ports.s3}",
        keystone=f"http://127.0.0.1:{ports.keystone}/v3",
    )


def local_endpoints(site: SiteConfig, root: Path) -> LocalEndpoints:
    return LocalEndpoints(site.state_dir(root), urls_for(site.local.ports))


def repo_base_url(site: SiteConfig, root: Path) -> str:
    """Where runners and clients read the RPM repo: site.yaml's ``repo.base_url``, else the S3
    mirror's public URL, else the embedded site's repo server."""
    settings = site.repo
    if settings.base_url:
        return str(settings.base_url).rstrip("/")
    if settings.s3 and settings.s3.public_url:
        return str(settings.s3.public_url).rstrip("/")
    return local_endpoints(site, root).urls.repo
