"""The destinations ``bench/pipeline_scale.py --ask`` asks: 1,000 published targets, and a count.

* The RPM repo and the Bifrost directory are what Kiln asks them through: real HTTP (a threaded
  ``http.server`` on 127.0.0.1 serving the publication records Kiln's own publishers write), read by
  ``ServedRepo.published`` / ``HttpDirPublisher.published`` (``publication_record.fetch_record``).
  Every request the server answers is counted.
* Glance and the registry are **stand-ins** at the client interface the routes call
  (``published_images``), counting calls: a real local Glance and registry holding 1,000 targets'
  images (3 arches of containers, an agent's three images) cost minutes to fill on this machine; the
  routes' own logic (names, candidate names, digests, the boot set) runs unchanged.

The published targets are every x86_64 target (one per recipe: "the x86_64 runner published, the
others have not yet"), placed by asking each route once with a recorder and writing what it asked for.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from builder.arch import Arch
from builder.publishers.glance import GlanceImage
from builder.publishers.http_dir import RECORD_NAME, HttpDirPublisher
from builder.publishers.publication_record import PublicationRecord, write_record
from builder.publishers.registry import PublishedImage
from builder.publishers.repo import RepoKey, RepoPublisher, ServedRepo


class RecordServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root``; ``requests`` counts what it answered."""

    def __init__(self, root: Path):
        self.requests = 0
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def send_response(self, code: int, message: str | None = None) -> None:
                server.requests += 1
                super().send_response(code, message)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class StandInGlance:
    def __init__(self) -> None:
        self.images: dict[tuple[str, str, str], list[GlanceImage]] = {}
        self.calls = 0

    def published_images(self, target_id: str, digest: str, name: str | None = None) -> list[GlanceImage]:
        self.calls += 1
        return list(self.images.get((target_id, digest, name or ""), []))


class StandInRegistry:
    class client:  # RegistryPublisher.client
        registry = "127.0.0.1:5000"

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], dict[str, PublishedImage]] = {}
        self.calls = 0

    def published_images(self, repository: str, tag: str) -> dict[str, PublishedImage]:
        self.calls += 1
        return dict(self.tags.get((repository, tag), {}))


class BenchPublishers:
    """The Publishers the routes ask (core.route.Publishers)."""

    def __init__(self, root: Path, url: str):
        self.root = root
        self._glance = StandInGlance()
        self._registry = StandInRegistry()
        self._repo = RepoPublisher(root / "repo", RepoKey(root, "0" * 40, f"{url}/repo/KEY"), f"{url}/repo")
        self._served_repo = ServedRepo(f"{url}/repo")  # what the route asks: the repo over HTTP
        self._http_dir = HttpDirPublisher(root / "ipa", f"{url}/ipa")

    def glance(self) -> StandInGlance:
        return self._glance

    def registry(self) -> tuple[StandInRegistry, str]:
        return self._registry, "bench"

    def repo(self) -> RepoPublisher:
        return self._repo

    def served_repo(self) -> ServedRepo:
        return self._served_repo

    def http_dir(self) -> HttpDirPublisher:
        return self._http_dir

    def mirror(self) -> None:
        return None

    def counts(self, server: RecordServer) -> dict[str, int]:
        return {
            "http_requests": server.requests,
            "glance_calls": self._glance.calls,
            "registry_calls": self._registry.calls,
        }


class _Recorder:
    """Stands in for every client while a route is asked once about ``target``: it says "there" to
    every question, so the route asks everything it would, and notes what and where."""

    client = StandInRegistry.client

    def __init__(self, target: Any) -> None:
        self.target = target
        self.asked: list[tuple[str, tuple[Any, ...]]] = []

    def glance(self) -> _Recorder:
        return self

    def registry(self) -> tuple[_Recorder, str]:
        return self, "bench"

    def repo(self) -> _Recorder:
        return self

    def served_repo(self) -> _Recorder:
        return self

    def http_dir(self) -> _Recorder:
        return self

    def published_images(self, *args: Any, **kwargs: Any) -> Any:
        if "name" in kwargs:  # Glance: (target id, digest, name=...)
            self.asked.append(("glance", (*args, kwargs["name"])))
            return [GlanceImage("recorded", kwargs["name"], "2026-12-01T00:00:00Z", {"kiln_boot_set": ""})]
        self.asked.append(("registry", args))  # the registry: (repository, tag)
        return {self.target.arch.value: PublishedImage(self.target.digest, "sha256:" + "e" * 64)}

    def published(self, *args: Any) -> tuple[str, PublicationRecord]:
        self.asked.append(("repo" if len(args) == 5 else "http", args))
        return "", PublicationRecord(self.target.id, self.target.digest, 0.0)


def publish_x86_64(targets: list[Any], publishers: BenchPublishers) -> int:
    """Make every x86_64 target published at its destination, as its route will look for it."""
    count = 0
    for target in targets:
        route = target.spec.route
        if route is None or target.arch is not Arch.X86_64:
            continue
        recorder = _Recorder(target)
        route.published_at(target, recorder, None, target.spec.facts(target.build_json))
        record = PublicationRecord.now(target.id, target.digest)
        for where, args in recorder.asked:
            if where == "repo":
                repo, distro, release, arch, _ = args
                publishers.repo().record(repo, distro, release, arch, record)
            elif where == "http":
                write_record(publishers.root / "ipa" / args[0] / RECORD_NAME, record)
            elif where == "registry":
                images = publishers._registry.tags.setdefault(args, {})
                images[target.arch.value] = PublishedImage(target.digest, "sha256:" + "e" * 64)
            else:  # Glance: an agent's kernel and ramdisk, each naming the set
                target_id, digest, kernel = args
                stem = kernel.rsplit(" ", 1)[0]
                for artifact in ("kernel", "initramfs"):
                    name = f"{stem} {artifact}"
                    properties = {"kiln_artifact": artifact, "kiln_boot_set": "kernel,initramfs"}
                    image = GlanceImage(f"img-{count}-{artifact}", name, "2026-12-01T00:00:00Z", properties)
                    publishers._glance.images[(target_id, digest, name)] = [image]
        count += 1
    return count
