"""S3 for the local site: Debian's OpenStack Swift (2.30) with the s3api + tempauth middleware.

Why Swift and not a mock (moto): it is a real object store with a real S3 front end (SigV4, multi-part
uploads, multi-object delete), installs with apt like the other site services, and runs under the
system python (``/usr/bin/python3``), so none of it enters Kiln's virtual environment.

One replica, one device, one zone, everything on 127.0.0.1: memcached (tempauth keeps its state
there), account, container and object servers, and the proxy that speaks S3 and Swift.

Two defaults of the stock scripts a local site cannot use, changed by a launcher written into state:

- ``swift_dir`` only moves the rings; the hash prefix/suffix, storage policies and constraints come
  from ``/etc/swift/swift.conf`` (read into module globals as ``swift.common.utils`` is imported).
  The launcher calls ``utils.set_swift_dir(state)`` first, which re-points that path and resets the
  hash globals, so nothing of ``/etc/swift`` is used (its file is still opened once, harmlessly).
- every Swift logger gets a syslog handler (``/dev/log``, else UDP to localhost:514). The launcher
  replaces it with a null handler and runs the server with ``--verbose``, whose stderr handler is
  what Kiln's service log captures (``capture_stdio`` keeps a console handler's fd open).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..endpoints import LOCAL_S3_ACCESS_KEY as S3_ACCESS_KEY
from ..endpoints import LOCAL_S3_SECRET_KEY as S3_SECRET_KEY
from ..host.net import http_ok, tcp_open
from .process import ServiceSpec, run_once

S3_REGION = "us-east-1"

SYSTEM_PYTHON = "/usr/bin/python3"  # what Debian's swift scripts run under
LAUNCHER = "kiln_swift_run.py"
RING_STAMP = "rings.json"  # the ports the rings were built for


@dataclass(frozen=True)
class SwiftPorts:
    proxy: int  # the S3 (and Swift) endpoint
    account: int
    container: int
    object: int
    memcached: int


def s3_endpoint(ports: SwiftPorts) -> str:
    return f"http://127.0.0.1:{ports.proxy}"


LAUNCHER_SOURCE = '''\
"""Run a Debian swift-*-server script with Kiln's swift.conf, logging to stderr only (written by Kiln).

usage: python3 kiln_swift_run.py SWIFT_DIR SCRIPT SERVER_CONF
"""

import logging
import runpy
import sys

from swift.common import utils

# Importing utils already read /etc/swift/swift.conf's hash prefix/suffix into module globals, and
# the storage-policy and constraints modules read the file when imported. set_swift_dir re-points
# the path and resets (and re-validates) the hash globals; the server script imports the rest after.
utils.set_swift_dir(sys.argv[1])


class NoSyslog(logging.NullHandler):
    """Stands in for the syslog handler every Swift logger gets; --verbose adds the stderr one."""

    def __init__(self, *args, **kwargs):
        super().__init__()


utils.ThreadSafeSysLogHandler = NoSyslog
sys.argv = [sys.argv[2], sys.argv[3], "--verbose"]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def _user() -> str:
    # Swift (and memcached, when root) switch to this user; the current one means no switch at all.
    return pwd.getpwuid(os.geteuid()).pw_name


def swift_conf() -> str:
    # A fixed hash prefix/suffix: objects' on-disk locations depend on it, so it must never change
    # between runs; secrecy does not matter for a loopback-only store.
    return """\
# Written by kiln site up.
[swift-hash]
swift_hash_path_prefix = kiln-local
swift_hash_path_suffix = kiln-local

[storage-policy:0]
name = Policy-0
default = yes
"""


def _defaults(state: Path, port: int, log_name: str) -> str:
    # workers = 0: serve from the started process itself (no fork), so the pid Kiln records is the
    # server and it stays attached to the log Kiln gave it.
    return f"""\
# Written by kiln site up.
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {_user()}
swift_dir = {state}
devices = {state}/devices
mount_check = false
log_name = {log_name}
log_level = INFO
"""


def storage_conf(state: Path, kind: str, port: int) -> str:
    """account-, container- or object-server.conf: the server behind a healthcheck filter."""
    return (
        _defaults(state, port, f"swift-{kind}")
        + f"""
[pipeline:main]
pipeline = healthcheck {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}

[filter:healthcheck]
use = egg:swift#healthcheck
"""
    )


# The stock tempauth pipeline of Swift 2.30's proxy-server.conf-sample, with s3api "just before your
# auth filter" (its docs) and without container_sync (it wants a realms file). s3api checks at
# start-up that an auth filter follows it, and needs slo after it for multi-part uploads.
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit "
    "s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink "
    "proxy-logging proxy-server"
)


# Filters configured below; every other pipeline entry is a stock filter with no options.
_CONFIGURED = ("s3api", "tempauth", "cache", "proxy-server")
_EGG_NAMES = {
    "proxy-logging": "proxy_logging",
    "container-quotas": "container_quotas",
    "account-quotas": "account_quotas",
}


def proxy_conf(state: Path, ports: SwiftPorts) -> str:
    plain = "".join(
        f"\n[filter:{name}]\nuse = egg:swift#{_EGG_NAMES.get(name, name)}\n"
        for name in dict.fromkeys(PIPELINE.split())  # proxy-logging appears twice
        if name not in _CONFIGURED
    )
    account, user = S3_ACCESS_KEY.split(":")
    return (
        _defaults(state, ports.proxy, "swift-proxy")
        + f"""
[pipeline:main]
pipeline = {PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
# tempauth's accounts exist only once something creates them: let the first request do it.
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = {S3_REGION}

[filter:tempauth]
use = egg:swift#tempauth
user_{account}_{user} = {S3_SECRET_KEY} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{ports.memcached}
"""
        + plain
    )


def _ring_ports(ports: SwiftPorts) -> dict[str, int]:
    return {"account": ports.account, "container": ports.container, "object": ports.object}


def _build_ring(state: Path, kind: str, port: int) -> None:
    builder = state / f"{kind}.builder"
    builder.unlink(missing_ok=True)
    (state / f"{kind}.ring.gz").unlink(missing_ok=True)
    # 2^8 partitions, 1 replica, min_part_hours 1: plenty for one device.
    run_once(["swift-ring-builder", str(builder), "create", "8", "1", "1"])
    run_once(["swift-ring-builder", str(builder), "add", f"r1z1-127.0.0.1:{port}/d1", "100"])
    run_once(["swift-ring-builder", str(builder), "rebalance"])


def _build_rings(state: Path, ports: SwiftPorts) -> None:
    """Single-replica rings of one device each; rebuilt only when the storage ports change."""
    wanted = _ring_ports(ports)
    stamp = state / RING_STAMP
    rings = [state / f"{kind}.ring.gz" for kind in wanted]
    try:
        built = json.loads(stamp.read_text())
    except (FileNotFoundError, ValueError):
        built = None
    if built == wanted and all(ring.exists() for ring in rings):
        return
    stamp.unlink(missing_ok=True)  # a half-built set is rebuilt next time
    shutil.rmtree(state / "backups", ignore_errors=True)  # the ring builder's own history
    # Each swift-ring-builder call costs ~0.6 s of imports: build the three rings side by side.
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        for future in [pool.submit(_build_ring, state, kind, port) for kind, port in wanted.items()]:
            future.result()
    stamp.write_text(json.dumps(wanted))


def prepare(state: Path, ports: SwiftPorts) -> None:
    """Write swift.conf, the server confs and the launcher; build the rings once per set of ports."""
    (state / "devices" / "d1").mkdir(parents=True, exist_ok=True)
    (state / "swift.conf").write_text(swift_conf())
    (state / LAUNCHER).write_text(LAUNCHER_SOURCE)
    for kind in ("account", "container", "object"):
        (state / f"{kind}-server.conf").write_text(storage_conf(state, kind, getattr(ports, kind)))
    (state / "proxy-server.conf").write_text(proxy_conf(state, ports))
    _build_rings(state, ports)


def _server(state: Path, kind: str, port: int) -> ServiceSpec:
    script = shutil.which(f"swift-{kind}-server") or f"/usr/bin/swift-{kind}-server"
    return ServiceSpec(
        name=f"swift-{kind}",
        argv=(
            SYSTEM_PYTHON,
            str(state / LAUNCHER),
            str(state),
            script,
            str(state / f"{kind}-server.conf"),
        ),
        env={},
        healthy=lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck"),
    )


def services(state: Path, ports: SwiftPorts) -> list[ServiceSpec]:
    """In start order: memcached and the storage servers before the proxy that needs them."""
    memcached = ServiceSpec(
        name="swift-memcached",
        # -U 0: no UDP listener. -u: as root memcached will not start without it (ignored otherwise).
        argv=("memcached", "-l", "127.0.0.1", "-p", str(ports.memcached), "-U", "0", "-u", _user()),
        env={},
        healthy=lambda: tcp_open("127.0.0.1", ports.memcached),
    )
    return [
        memcached,
        _server(state, "account", ports.account),
        _server(state, "container", ports.container),
        _server(state, "object", ports.object),
        _server(state, "proxy", ports.proxy),
    ]
