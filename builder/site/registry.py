"""The container registry for the local site: Debian's docker-registry (distribution 2.x)."""

from __future__ import annotations

from pathlib import Path

from ..host.net import http_ok
from .process import ServiceSpec


def config(state: Path, port: int) -> str:
    return f"""\
# Written by kiln site up.
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {state}/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def prepare(state: Path, port: int) -> None:
    (state / "data").mkdir(parents=True, exist_ok=True)
    (state / "config.yml").write_text(config(state, port))


def service(state: Path, port: int) -> ServiceSpec:
    return ServiceSpec(
        name="registry",
        argv=("docker-registry", "serve", str(state / "config.yml")),
        env={},
        healthy=lambda: http_ok(f"http://127.0.0.1:{port}/v2/"),
    )
