"""The local site's S3 endpoint for real: Debian's Swift with s3api, driven by boto3."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from builder.host.net import free_port
from builder.publishers.mirror import add_content_md5_for_delete
from builder.site.process import ServiceProcess, _start_time
from builder.site.swift import (
    S3_ACCESS_KEY,
    S3_REGION,
    S3_SECRET_KEY,
    SwiftPorts,
    prepare,
    s3_endpoint,
    services,
)

pytestmark = pytest.mark.skipif(
    shutil.which("swift-proxy-server") is None or shutil.which("memcached") is None,
    reason="needs Debian's swift-proxy/-account/-container/-object and memcached",
)

START_BUDGET_S = 30.0


@dataclass(frozen=True)
class Site:
    state: Path
    ports: SwiftPorts
    startup_s: float


def _ports() -> SwiftPorts:
    chosen: set[int] = set()
    while len(chosen) < 5:  # free_port can repeat once a socket closes; keep them distinct
        chosen.add(free_port())
    return SwiftPorts(*sorted(chosen))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("swift")
    state, run_dir, log_dir = root / "state", root / "run", root / "log"
    state.mkdir()
    ports = _ports()
    prepare(state, ports)
    started: list[ServiceProcess] = []
    pids: list[int] = []

    def logs() -> str:
        return "\n".join(f"--- {p.spec.name}\n{p.tail(30)}" for p in started)

    try:
        begin = time.monotonic()
        for spec in services(state, ports):
            proc = ServiceProcess(spec, run_dir, log_dir)
            started.append(proc)
            pids.append(proc.start())
            remaining = START_BUDGET_S - (time.monotonic() - begin)
            assert proc.wait_healthy(max(remaining, 0.1)), f"{spec.name} not healthy\n{logs()}"
        yield Site(state, ports, time.monotonic() - begin)
    finally:
        for proc in reversed(started):
            proc.stop()
        assert not [p for p in started if p.running()], logs()
        assert [pid for pid in pids if _start_time(pid) is not None] == []


def _client(ports: SwiftPorts) -> Any:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint(ports),
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name=S3_REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    add_content_md5_for_delete(client)
    return client


def test_starts_quickly(site: Site) -> None:
    print(f"swift site healthy after {site.startup_s:.1f} s")
    assert site.startup_s < START_BUDGET_S


def test_bucket_object_round_trip(site: Site) -> None:
    s3 = _client(site.ports)
    s3.create_bucket(Bucket="kiln-test")
    assert "kiln-test" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.get_bucket_location(Bucket="kiln-test")["LocationConstraint"] in (None, S3_REGION)

    body = b"kiln artefact\n" * 1000
    s3.put_object(Bucket="kiln-test", Key="images/a.qcow2", Body=body)
    s3.put_object(Bucket="kiln-test", Key="images/b.qcow2", Body=b"b")
    listed = s3.list_objects_v2(Bucket="kiln-test", Prefix="images/")
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {
        "images/a.qcow2": len(body),
        "images/b.qcow2": 1,
    }
    assert s3.get_object(Bucket="kiln-test", Key="images/a.qcow2")["Body"].read() == body

    # Stored under the hash of Kiln's swift.conf prefix/suffix, not /etc/swift's.
    path = "/AUTH_kiln/kiln-test/images/a.qcow2"
    name = hashlib.md5(f"kiln-local{path}kiln-local".encode()).hexdigest()
    assert list((site.state / "devices" / "d1" / "objects").glob(f"*/*/{name}/*.data"))

    deleted = s3.delete_objects(
        Bucket="kiln-test",
        Delete={"Objects": [{"Key": "images/a.qcow2"}, {"Key": "images/b.qcow2"}]},
    )
    assert sorted(d["Key"] for d in deleted.get("Deleted", [])) == ["images/a.qcow2", "images/b.qcow2"]
    assert deleted.get("Errors", []) == []
    assert s3.list_objects_v2(Bucket="kiln-test").get("KeyCount") == 0
    s3.delete_bucket(Bucket="kiln-test")


def test_prepare_rebuilds_rings_only_for_new_ports(site: Site) -> None:
    ring = site.state / "object.ring.gz"
    before = ring.stat().st_mtime_ns
    prepare(site.state, site.ports)
    assert ring.stat().st_mtime_ns == before

    elsewhere = site.state.parent / "moved"
    elsewhere.mkdir()
    shutil.copytree(site.state, elsewhere, dirs_exist_ok=True, ignore=shutil.ignore_patterns("devices"))
    moved = replace(site.ports, object=free_port())
    prepare(elsewhere, moved)
    described = subprocess.run(
        ["swift-ring-builder", str(elsewhere / "object.builder")], capture_output=True, text=True
    ).stdout
    assert f"127.0.0.1:{moved.object}" in described
