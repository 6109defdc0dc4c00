"""Registry publishing against the real local registry, checked with skopeo and docker."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from builder.arch import Arch
from builder.errors import CommandFailed
from builder.publishers.registry import ArchImage, RegistryClient, RegistryPublisher
from tests.support import registry_auth
from tests.support.oci import make_layout

pytestmark = pytest.mark.site

BASE_LAYER = {"etc/os-release": b"ID=kiln-test\n"}


def _images(tmp_path, marker: str) -> list[ArchImage]:
    return [
        ArchImage(
            arch,
            make_layout(
                tmp_path / f"{marker}-{arch.value}",
                arch,
                [BASE_LAYER, {"kiln-arch": f"{marker} {arch.value}".encode()}],
            ),
        )
        for arch in (Arch.X86_64, Arch.PPC64LE)
    ]


def _skopeo_raw(site, ref: str) -> dict:
    result = subprocess.run(
        ["skopeo", "inspect", *registry_auth.authfile_args(site), "--raw", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_multi_arch_tag_lists_both_platforms_and_shared_layers_upload_once(local_site, tmp_path):
    publisher = RegistryPublisher(registry_auth.client(local_site))
    result = publisher.push(
        "kiln/multi", "1.0", _images(tmp_path, "a"), {"org.opencontainers.image.title": "multi"}
    )
    assert result.uploaded_blobs == 5 and result.skipped_blobs == 1  # the base layer is shared
    index = _skopeo_raw(local_site, f"{local_site.urls.registry}/kiln/multi:1.0")
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "ppc64le")}
    assert index["annotations"]["org.opencontainers.image.title"] == "multi"
    again = publisher.push("kiln/multi", "1.0", _images(tmp_path, "a"))
    assert again.uploaded_blobs == 0


def test_pushing_one_arch_keeps_the_other_arches_under_the_tag(local_site, tmp_path):
    """One CI job per arch: each pushes its own arch; the tag ends up with both, neither lost."""
    publisher = RegistryPublisher(registry_auth.client(local_site))
    amd64, ppc64le = _images(tmp_path, "one")
    first = publisher.push("kiln/perarch", "1.0", [amd64], {"io.kiln.digests": "x86_64=aaa"})
    second = publisher.push("kiln/perarch", "1.0", [ppc64le], {"io.kiln.digests": "ppc64le=bbb"})
    index = _skopeo_raw(local_site, f"{local_site.urls.registry}/kiln/perarch:1.0")
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert by_arch == {"amd64": first.manifests["x86_64"], "ppc64le": second.manifests["ppc64le"]}
    assert index["annotations"]["io.kiln.digests"] == "ppc64le=bbb,x86_64=aaa"
    rebuilt = publisher.push(
        "kiln/perarch", "1.0", _images(tmp_path, "two")[:1], {"io.kiln.digests": "x86_64=ccc"}
    )
    index = _skopeo_raw(local_site, f"{local_site.urls.registry}/kiln/perarch:1.0")
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert by_arch == {"amd64": rebuilt.manifests["x86_64"], "ppc64le": second.manifests["ppc64le"]}
    assert index["annotations"]["io.kiln.digests"] == "ppc64le=bbb,x86_64=ccc"


def test_docker_pulls_each_platform(local_site, tmp_path, docker_engine):
    publisher = RegistryPublisher(registry_auth.client(local_site))
    publisher.push("kiln/pullme", "1.0", _images(tmp_path, "p"))
    ref = f"{local_site.urls.registry}/kiln/pullme:1.0"
    for platform, arch in (("linux/amd64", "amd64"), ("linux/ppc64le", "ppc64le")):
        subprocess.run(
            ["docker", "pull", "-q", "--platform", platform, ref],
            check=True,
            capture_output=True,
            env=registry_auth.docker_env(local_site),
        )
        inspected = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Architecture}}", ref],
            capture_output=True,
            text=True,
            check=True,
        )
        assert inspected.stdout.strip() == arch
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


class _FailingProxy(BaseHTTPRequestHandler):
    """Forwards to the registry but answers 500 to every manifest PUT under a tag (or to everything)."""

    upstream = ""
    fail_all = False
    fail_tagged_puts = True
    corrupt_blobs = False  # flip a byte of every blob it hands out (a broken or hostile registry)
    failures = 0

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        tagged_put = (
            self.fail_tagged_puts
            and self.command == "PUT"
            and "/manifests/" in self.path
            and "sha256:" not in self.path
        )
        if self.fail_all or tagged_put:
            type(self).failures += 1
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        reply = requests.request(
            self.command,
            self.upstream + self.path,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=60,
        )
        self.send_response(reply.status_code)
        for key, value in reply.headers.items():
            if key.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            if key.lower() == "location":
                value = value.replace(self.upstream, f"http://127.0.0.1:{self.server.server_port}")
            self.send_header(key, value)
        content = reply.content
        if self.corrupt_blobs and self.command == "GET" and "/blobs/sha256:" in self.path and content:
            content = bytes([content[0] ^ 1]) + content[1:]
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_PUT = do_POST = do_HEAD = do_PATCH = _handle

    def log_message(self, *args) -> None:
        pass


def test_registry_500s_are_retried_then_fail_clearly_without_moving_the_tag(local_site, tmp_path):
    good = RegistryPublisher(registry_auth.client(local_site))
    good.push("kiln/faulty", "stable", _images(tmp_path, "old"))
    before = good.tag_digest("kiln/faulty", "stable")

    _FailingProxy.upstream = f"http://{local_site.urls.registry}"
    _FailingProxy.failures = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sleeps: list[float] = []
        client = RegistryClient(
            f"127.0.0.1:{server.server_port}",
            auth=registry_auth.credentials(local_site),
            retries=3,
            sleep=sleeps.append,
        )
        with pytest.raises(CommandFailed, match=r"PUT .*/manifests/stable failed: HTTP 500"):
            RegistryPublisher(client).push("kiln/faulty", "stable", _images(tmp_path, "new"))
        assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff between the 4 attempts
        assert _FailingProxy.failures == 4
    finally:
        server.shutdown()
    assert good.tag_digest("kiln/faulty", "stable") == before  # the tag did not move
    retried = good.push("kiln/faulty", "stable", _images(tmp_path, "new"))
    assert good.tag_digest("kiln/faulty", "stable") == retried.index_digest != before


# --- what is there already: a fresh runner asks the registry, and pulls a parent by digest --------------


def test_published_images_reads_each_arch_kiln_digest_and_manifest(local_site, tmp_path):
    publisher = RegistryPublisher(registry_auth.client(local_site))
    pushed = publisher.push(
        "kiln/known", "1.0", _images(tmp_path, "k"), {"io.kiln.digests": "ppc64le=bbb,x86_64=aaa"}
    )
    found = publisher.published_images("kiln/known", "1.0")
    assert {arch: (i.kiln_digest, i.manifest_digest) for arch, i in found.items()} == {
        "x86_64": ("aaa", pushed.manifests["x86_64"]),
        "ppc64le": ("bbb", pushed.manifests["ppc64le"]),
    }
    assert publisher.published_images("kiln/known", "absent") == {}
    publisher.push("kiln/unknown", "1.0", _images(tmp_path, "u"))  # pushed without Kiln's annotation
    assert publisher.published_images("kiln/unknown", "1.0") == {}


def test_pull_layout_fetches_one_arch_by_digest_into_a_layout_skopeo_reads(local_site, tmp_path):
    publisher = RegistryPublisher(registry_auth.client(local_site))
    images = _images(tmp_path, "pull")
    pushed = publisher.push("kiln/pulled", "1.0", images)
    digest = pushed.manifests["ppc64le"]
    layout = publisher.pull_layout("kiln/pulled", digest, tmp_path / "got" / "oci")
    original = images[1].layout
    assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == sorted(
        p.name for p in (original / "blobs" / "sha256").iterdir()
    )
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}"], capture_output=True, text=True, check=True
    )
    assert json.loads(inspected.stdout)["Architecture"] == "ppc64le"
    assert not (tmp_path / "got" / "oci.partial").exists()


def test_pull_layout_refuses_blobs_whose_bytes_do_not_match_and_leaves_no_layout(local_site, tmp_path):
    good = RegistryPublisher(registry_auth.client(local_site))
    digest = good.push("kiln/corrupt", "1.0", _images(tmp_path, "c")).manifests["x86_64"]
    _FailingProxy.upstream = f"http://{local_site.urls.registry}"
    _FailingProxy.fail_tagged_puts, _FailingProxy.corrupt_blobs = False, True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RegistryClient(f"127.0.0.1:{server.server_port}", auth=registry_auth.credentials(local_site))
        with pytest.raises(CommandFailed, match=r"blob sha256:[0-9a-f]{64} of kiln/corrupt has other bytes"):
            RegistryPublisher(client).pull_layout("kiln/corrupt", digest, tmp_path / "bad" / "oci")
    finally:
        _FailingProxy.fail_tagged_puts, _FailingProxy.corrupt_blobs = True, False
        server.shutdown()
    assert sorted((tmp_path / "bad").iterdir()) == []  # neither the layout nor a partial one
