"""Application credentials on a local site's Keystone, made as a CI admin makes them for a runner
(``openstack application credential create``), and the clouds.yaml a file-type CI/CD variable holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.endpoints import LOCAL_CLOUD


@dataclass(frozen=True)
class ApplicationCredential:
    id: str
    secret: str
    connection: Any  # the kiln user's openstacksdk connection, which made it and can revoke it

    def revoke(self) -> None:
        self.connection.identity.delete_application_credential(self.connection.current_user_id, self.id)

    def clouds(self, cloud: str, auth_url: str) -> dict[str, Any]:
        """A clouds.yaml document naming ``cloud``: this credential and nothing else."""
        auth = {
            "auth_url": auth_url,
            "application_credential_id": self.id,
            "application_credential_secret": self.secret,
        }
        entry = {"auth_type": "v3applicationcredential", "auth": auth, "region_name": "RegionOne"}
        return {"clouds": {cloud: entry}}


def application_credential(site: Any, name: str) -> ApplicationCredential:
    """A new credential of the ``kiln`` user on ``site`` (a LocalSite with Keystone)."""
    import openstack
    from openstack.config.loader import OpenStackConfig

    config = OpenStackConfig(config_files=[str(site.endpoints.keystone_clouds_yaml)]).get_one(LOCAL_CLOUD)
    conn = openstack.connection.Connection(config=config)
    made = conn.identity.create_application_credential(user=conn.current_user_id, name=name)
    return ApplicationCredential(made.id, made.secret, conn)
