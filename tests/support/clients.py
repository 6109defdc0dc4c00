"""Clients that are not Kiln's own code, used to check what Kiln published."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def openstack(glance_url: str, *args: str) -> Any:
    """python-openstackclient against a Glance without Keystone; its JSON output, parsed."""
    result = subprocess.run(
        ["openstack", "--os-auth-type", "none", "--os-endpoint", glance_url, *args, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def glance_image_of(outcome: dict[str, Any], glance_url: str) -> dict[str, Any]:
    """The Glance image a `kiln build --publish --json` outcome says it published, as Glance shows it."""
    [glance] = [p for p in outcome["published"] if p["publisher"] == "glance"]
    return openstack(glance_url, "image", "show", glance["location"])
