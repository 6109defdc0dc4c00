"""Ironic Python Agent's REST API as Kiln's IPA verifier uses it (builder/verify/ipa_boot.py): the
client, the commands it runs, and the verdicts on their answers (pure, apart from HTTP)."""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

RETRY_S = 2.0  # between tries of a command the agent is too busy (or not yet up) to take
REQUEST_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 600.0  # get_hardware_info runs lshw: slow under TCG
TOKEN_PARAM = "ipa-agent-token"
HARDWARE_INFO = "poll.get_hardware_info"
SYSTEM_LOGS = "log.collect_system_logs"
VMEDIA_LABEL = "ir-vfd-dev"  # IPA reads parameters.txt from it when booted with boot_method=vmedia
_ISO_TOKEN = re.compile(rb"ipa-agent-token=([A-Za-z0-9_.~-]{8,256})")
_MDADM_RAN = re.compile(r"mdadm --assemble --scan|mdadm', '--assemble', '--scan'")
_MDADM_MISSING = "mdadm has not been found"


@dataclass(frozen=True)
class VirtualDisk:
    serial: str
    size_gib: int

    @property
    def size_bytes(self) -> int:
        return self.size_gib << 30


DISKS = (VirtualDisk("kiln-disk-0", 1), VirtualDisk("kiln-disk-1", 2))


def missing_disks(inventory: dict[str, Any], disks: tuple[VirtualDisk, ...] = DISKS) -> list[VirtualDisk]:
    """The virtual disks the agent's inventory does not list (by serial number, else by exact size)."""
    listed = [d for d in inventory.get("disks") or [] if isinstance(d, dict)]
    missing = []
    for disk in disks:
        by_serial = any(str(d.get("serial") or "").startswith(disk.serial) for d in listed)
        by_size = any(d.get("size") == disk.size_bytes for d in listed)
        if not (by_serial or by_size):
            missing.append(disk)
    return missing


def describe_disks(inventory: dict[str, Any]) -> str:
    listed = [d for d in inventory.get("disks") or [] if isinstance(d, dict)]
    if not listed:
        return "no disks"
    return ", ".join(f"{d.get('name')} ({d.get('size')} bytes, serial {d.get('serial')!r})" for d in listed)


def mdadm_verdict(agent_logs: str) -> tuple[bool, str]:
    """Whether the agent's own log shows mdadm in the ramdisk, and why."""
    if _MDADM_MISSING in agent_logs:
        return False, f"the agent logged {_MDADM_MISSING!r}: mdadm is not in the ramdisk"
    if _MDADM_RAN.search(agent_logs):
        return True, "the agent ran `mdadm --assemble --scan` at start"
    return False, "no sign in the agent's logs that it ran mdadm (is ipa-debug=1 on its command line?)"


def logs_text(system_logs_b64: str, limit: int = 64 << 20) -> str:
    """The text of every file in the agent's log bundle (base64 of a tar.gz), concatenated."""
    data = base64.b64decode(system_logs_b64)
    parts = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.size <= limit:
                extracted = tar.extractfile(member)
                if extracted is not None:
                    parts.append(extracted.read().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def iso_agent_token(iso: Path, chunk: int = 4 << 20) -> str | None:
    """The ``ipa-agent-token=`` an ISO's boot menu passes, if any (a scan of its bytes)."""
    tail = b""
    with iso.open("rb") as handle:
        while block := handle.read(chunk):
            found = _ISO_TOKEN.search(tail + block)
            if found:
                return found.group(1).decode()
            tail = block[-300:]
    return None


class AgentError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AgentClient:
    base_url: str
    token: str | None = None

    def status(self) -> dict[str, Any] | None:
        """The agent's status, or None while it does not answer."""
        try:
            return self._request("GET", "/v1/status", None, REQUEST_TIMEOUT_S)
        except AgentError:
            return None

    def command(self, name: str, timeout: float) -> dict[str, Any]:
        query = {"wait": "true", **({"agent_token": self.token} if self.token else {})}
        path = "/v1/commands/?" + urllib.parse.urlencode(query)
        return self._request("POST", path, {"name": name, "params": {}}, timeout)

    def _request(self, method: str, path: str, body: Any, timeout: float) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read().decode("utf-8", errors="replace") or "{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            raise AgentError(
                f"HTTP {exc.code} from {method} {path.split('?')[0]}: {detail}", exc.code
            ) from exc
        except (OSError, ValueError) as exc:
            raise AgentError(f"{method} {path.split('?')[0]}: {exc}") from exc
        if not isinstance(answer, dict):
            raise AgentError(f"{method} {path.split('?')[0]}: not a JSON object")
        return answer


def run_command(agent: AgentClient, name: str, deadline: float) -> tuple[dict[str, Any] | None, str]:
    """Run one agent command, retrying while the agent is busy or unreachable, until the deadline."""
    error, tried_without = "", False
    while True:
        try:
            timeout = max(REQUEST_TIMEOUT_S, min(COMMAND_TIMEOUT_S, deadline - time.monotonic()))
            return agent.command(name, timeout=timeout), ""
        except AgentError as exc:
            error = str(exc)
            if exc.status == 401 and agent.token and not tried_without:
                # An agent that was never given a token (older than 10.2) takes commands without one.
                tried_without, agent = True, replace(agent, token=None)
                continue
            if exc.status in (401, 403):
                sent = "with or without a token" if tried_without else "without a token"
                hint = (
                    f"the agent refused {name} {sent}: IPA >= 10.2 needs {TOKEN_PARAM}=... on its kernel "
                    f"command line; an ISO's boot menu needs it or boot_method=vmedia (then the agent "
                    f"reads the token Kiln puts on the {VMEDIA_LABEL} CD)"
                )
                return None, f"{hint} ({error})"
            if exc.status in (400, 404):
                return None, f"{name}: {error}"
        if time.monotonic() + RETRY_S >= deadline:
            return None, f"{name} got no answer before the time-out: {error}"
        time.sleep(RETRY_S)
