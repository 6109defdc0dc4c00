"""publish: Kiln's publishers against the real local site, next to what a bare client would do.

Starts its own local site (Glance and the repo HTTP server only) on free loopback ports with its
state in a temporary directory, and always stops it at the end. In the same run it times:

* **Glance**: uploading one image file (1 GiB of random bytes by default, never sparse) with
  ``GlancePublisher.publish`` (method ``upload``: candidate record, streamed PUT hashed on the fly,
  hash check against Glance's ``os_hash_value``, promote, rotate), against a raw HTTP upload of the
  same file to the same Glance with ``requests`` (``POST /v2/images``, then a streamed
  ``PUT /v2/images/<id>/file``). One untimed upload warms Glance up first; both images are deleted
  after each run, the order of the two alternates between repeats, and dirty pages are flushed
  (``sync``) before every timed run.
* **Repo**: a 5,000-package repo (noarch RPMs from one ``rpmbuild`` run, cached under
  ``~/.cache/kiln/bench-rpms/<count>/``), populated once by copying the packages into
  ``Packages/`` and running Kiln's metadata refresh once (one ``createrepo_c``, sign, switch).
  Then, per repeat: (a) ``RepoPublisher.publish`` of ONE new package (read its header, rpmsign,
  append its entries to the metadata -- the benchmark fails if the publish took createrepo_c's path
  instead --, detached signature, atomic ``repodata`` switch), against (b) a full metadata rebuild
  of the same tree (``createrepo_c`` without ``--update``, the same other flags, into a fresh
  output directory). Each repeat adds another package, so repeat N measures 5,000 + N packages.
  The test packages are tiny (about 6 KB, one empty file each); ``--payload-kib`` gives each one
  that many KiB of random bytes instead, for realistically sized packages.

Each figure is the best (minimum) of ``--repeats`` runs. The 1-minute load average before and
after goes into the JSON line: the Glance comparison is CPU-bound, so other load on the host moves
it (see docs/benchmarks.md).

    .venv/bin/python bench/publish.py                 # human report + one JSON line
    .venv/bin/python bench/publish.py --json          # the JSON line only
    .venv/bin/python bench/publish.py --check         # exit 1 if a target below is missed
    .venv/bin/python bench/publish.py --size-mib 256 --packages 1000 --repeats 3
    .venv/bin/python bench/publish.py --only repo --payload-kib 1024

Targets (from the issue): Kiln's Glance throughput at least 0.9x the raw upload's
(``raw_s / kiln_s >= 0.9``), and adding one package to the 5,000-package repo at most 0.2x the
time of a full metadata rebuild.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from builder.host.net import free_port  # noqa: E402
from builder.manifest import BuildManifest, artifact_for  # noqa: E402
from builder.publishers import repodata  # noqa: E402
from builder.publishers.from_site import SitePublishers  # noqa: E402
from builder.publishers.glance import GlancePublisher  # noqa: E402
from builder.publishers.repo import RepoPublisher  # noqa: E402
from builder.site.local import LocalSite, cache_dir  # noqa: E402
from builder.siteconfig import LocalPorts, LocalSiteSettings, SiteConfig  # noqa: E402
from tests.support.rpms import build_many_noarch_rpms, build_noarch_rpm  # noqa: E402

# The targets.
MIN_GLANCE_RATIO = 0.9  # raw_s / kiln_s: Kiln's throughput relative to a raw PUT
MAX_REPO_RATIO = 0.2  # incremental_s / full_s

NEEDED = ("glance-api", "createrepo_c", "rpmbuild", "rpmsign", "gpg")
RPM_PREFIX = "kbench"
REPO_COORDS = {"repo": "bench", "distro": "el", "release": "9", "arch": "x86_64"}
CREATEREPO_FLAGS = ["--quiet", "--no-database", "--general-compress-type", "gz"]  # as repo.py, less --update

Say = Callable[[str], None]


# --- the site -------------------------------------------------------------------------------------------


def start_site(state: Path, say: Say) -> tuple[SiteConfig, LocalSite]:
    ports = LocalPorts(**{name: free_port() for name in LocalPorts.model_fields})
    settings = LocalSiteSettings(state_dir=str(state), ports=ports, components=["glance", "repo"])
    config = SiteConfig(local=settings)
    site = LocalSite(state, settings)
    say(f"starting the local site (glance :{ports.glance}, repo :{ports.repo}) in {state}")
    started = time.monotonic()
    try:
        site.up(on_step=lambda step: say(f"  {step}"), timeout_s=180)
    except BaseException:
        site.down()
        raise
    say(f"  site up in {time.monotonic() - started:.1f} s")
    return config, site


# --- Glance ---------------------------------------------------------------------------------------------


def make_image(path: Path, size_mib: int) -> None:
    """Random bytes, written out (a sparse file would make reads free and the comparison unfair)."""
    chunk = 4 << 20
    remaining = size_mib << 20
    with path.open("wb") as handle:
        while remaining:
            n = min(chunk, remaining)
            handle.write(os.urandom(n))
            remaining -= n


def image_manifest(workdir: Path, image: Path) -> BuildManifest:
    artifact = artifact_for(workdir, image, "image", "disk-image", "raw")
    return BuildManifest(
        target="bench-publish:bookworm:x86_64",
        recipe="bench-publish",
        kind="guest-image",
        arch="x86_64",
        release="bookworm",
        variant=None,
        digest=artifact.sha256,
        artifacts=(artifact,),
        build={"distro": "debian", "release": "bookworm"},
        base_dir=workdir,
    )


def kiln_upload(publisher: GlancePublisher, manifest: BuildManifest) -> tuple[float, str]:
    started = time.perf_counter()
    result = publisher.publish(manifest, manifest.artifacts[0], name="bench-publish-kiln", keep=0)
    elapsed = time.perf_counter() - started
    if result.noop:
        raise RuntimeError("Kiln's publish was a no-op: an image of the previous run was left behind")
    return elapsed, result.image_id


def raw_upload(session: requests.Session, glance: str, image: Path) -> tuple[float, str]:
    size = image.stat().st_size
    started = time.perf_counter()
    created = session.post(
        f"{glance}/v2/images",
        json={"name": "bench-publish-raw", "disk_format": "raw", "container_format": "bare"},
    )
    created.raise_for_status()
    image_id = created.json()["id"]
    with image.open("rb") as handle:
        put = session.put(
            f"{glance}/v2/images/{image_id}/file",
            data=handle,  # a file object: requests streams it with a Content-Length
            headers={"Content-Type": "application/octet-stream", "X-OpenStack-Image-Size": str(size)},
        )
    elapsed = time.perf_counter() - started
    put.raise_for_status()
    return elapsed, image_id


def bench_glance(site: LocalSite, workdir: Path, size_mib: int, repeats: int, say: Say) -> dict[str, Any]:
    image = workdir / "bench.raw"
    say(f"glance: writing a {size_mib} MiB image of random bytes")
    make_image(image, size_mib)
    manifest = image_manifest(workdir, image)  # also reads it once: the file is in the page cache
    size = image.stat().st_size
    glance = site.urls.glance
    publisher = GlancePublisher.connect(cloud=None, endpoint=glance, method="upload")
    session = requests.Session()
    # Warm both clients (version discovery, connection set-up) outside the timed runs.
    publisher._images()
    session.get(f"{glance}/v2/images").raise_for_status()

    def delete(image_id: str) -> None:
        session.delete(f"{glance}/v2/images/{image_id}").raise_for_status()

    # And Glance: its first upload is slower than the next ones (about 1 s per GiB here), and it
    # must not count against whichever side goes first.
    say("glance: one untimed warm-up upload")
    os.sync()
    warm_s, warm_id = raw_upload(session, glance, image)
    delete(warm_id)
    say(f"  warm-up: {warm_s:7.2f} s")

    def one(which: str) -> float:
        os.sync()  # the previous run's writes must not be flushed during this one
        if which == "kiln":
            elapsed, image_id = kiln_upload(publisher, manifest)
        else:
            elapsed, image_id = raw_upload(session, glance, image)
        check = session.get(f"{glance}/v2/images/{image_id}").json()
        if check.get("status") != "active" or check.get("size") != size:
            raise RuntimeError(f"{which} upload left image {image_id} as {check}")
        delete(image_id)
        say(f"  {which:4}: {elapsed:7.2f} s  {size / elapsed / 1e6:7.1f} MB/s")
        return elapsed

    runs: dict[str, list[float]] = {"kiln": [], "raw": []}
    for i in range(repeats):
        order = ("kiln", "raw") if i % 2 == 0 else ("raw", "kiln")
        say(f"glance: repeat {i + 1}/{repeats} ({' then '.join(order)})")
        for which in order:
            runs[which].append(one(which))
    image.unlink()
    kiln_s, raw_s = min(runs["kiln"]), min(runs["raw"])
    ratio = raw_s / kiln_s
    say(
        f"glance, {size_mib} MiB, best of {repeats}: kiln {kiln_s:.2f} s ({size / kiln_s / 1e6:.1f} MB/s), "
        f"raw PUT {raw_s:.2f} s ({size / raw_s / 1e6:.1f} MB/s); raw/kiln = {ratio:.3f} "
        f"(target >= {MIN_GLANCE_RATIO:g}) -> {'met' if ratio >= MIN_GLANCE_RATIO else 'MISSED'}"
    )
    return {
        "size_mib": size_mib,
        "kiln_s": round(kiln_s, 3),
        "raw_s": round(raw_s, 3),
        "kiln_mb_s": round(size / kiln_s / 1e6, 1),
        "raw_mb_s": round(size / raw_s / 1e6, 1),
        "ratio_raw_over_kiln": round(ratio, 3),
        "kiln_runs": [round(t, 3) for t in runs["kiln"]],
        "raw_runs": [round(t, 3) for t in runs["raw"]],
        "target_met": ratio >= MIN_GLANCE_RATIO,
    }


# --- Repo -----------------------------------------------------------------------------------------------


def cached_rpms(count: int, payload_kib: int, say: Say) -> list[Path]:
    """``count`` noarch RPMs, built once with one rpmbuild run and kept under ~/.cache/kiln."""
    key = str(count) if payload_kib == 0 else f"{count}-{payload_kib}k"
    cache = cache_dir() / "bench-rpms" / key
    marker = cache / ".complete"
    if marker.exists():
        rpms = sorted(cache.glob("*.rpm"))
        if len(rpms) == count:
            say(f"repo: {count} cached packages in {cache}")
            return rpms
    what = f"{count} packages" + (f" of {payload_kib} KiB" if payload_kib else "")
    say(f"repo: building {what} with one rpmbuild run (cached in {cache} afterwards)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-rpms-") as tmp:
        built = build_many_noarch_rpms(Path(tmp), RPM_PREFIX, count, payload_kib)
        if len(built) != count:
            raise RuntimeError(f"rpmbuild made {len(built)} packages, not {count}")
        shutil.rmtree(cache, ignore_errors=True)
        staging = cache.with_name(f".{key}.{os.getpid()}")
        staging.mkdir(parents=True)
        for rpm in built:
            shutil.move(rpm, staging / rpm.name)
        (staging / ".complete").write_text(f"{count}\n")
        staging.replace(cache)
    say(f"  built in {time.monotonic() - started:.1f} s")
    return sorted(cache.glob("*.rpm"))


def full_rebuild(repo_dir: Path, out: Path) -> float:
    out.mkdir()
    started = time.perf_counter()
    subprocess.run(["createrepo_c", *CREATEREPO_FLAGS, "--outputdir", str(out), str(repo_dir)], check=True)
    return time.perf_counter() - started


def count_packages(metadata_dir: Path) -> int:
    """The ``packages="N"`` count at the top of the primary.xml.gz that repomd.xml names (Kiln's
    repodata/ also keeps the previous set, for clients that read the previous repomd.xml)."""
    href, _ = repodata.repomd_records(metadata_dir / "repomd.xml")["primary"]
    primary = metadata_dir.parent / href
    with gzip.open(primary, "rt") as handle:
        head = handle.read(1000)
    return int(head.split('packages="', 1)[1].split('"', 1)[0])


def bench_repo(
    config: SiteConfig, workdir: Path, packages: int, payload_kib: int, repeats: int, say: Say
) -> dict[str, Any]:
    rpms = cached_rpms(packages, payload_kib, say)
    publisher: RepoPublisher = SitePublishers(config, REPO).repo()
    repo_dir = publisher.repo_dir(**REPO_COORDS)
    dest = repo_dir / "Packages" / RPM_PREFIX[0]
    dest.mkdir(parents=True)
    say(f"repo: populating {repo_dir} with {len(rpms)} packages (copied, unsigned) + one metadata refresh")
    for rpm in rpms:
        shutil.copy2(rpm, dest / rpm.name)
    started = time.perf_counter()
    publisher._refresh_metadata(repo_dir)  # one createrepo_c (nothing to update from), repack, sign, switch
    initial_s = time.perf_counter() - started
    say(f"  initial metadata (createrepo_c --update with no previous metadata + sign): {initial_s:.2f} s")

    runs: dict[str, list[float]] = {"incremental": [], "full": []}
    for i in range(repeats):
        new_rpm = build_noarch_rpm(workdir / "new", f"{RPM_PREFIX}-new-{i}")
        os.sync()
        started = time.perf_counter()
        published = publisher.publish([new_rpm], **REPO_COORDS)
        incremental = time.perf_counter() - started
        if published.metadata_update != "appended":
            raise RuntimeError(f"the publish took the {published.metadata_update!r} path, not 'appended'")
        total = packages + i + 1
        if count_packages(repo_dir / "repodata") != total:
            raise RuntimeError(f"the incremental publish did not index {total} packages")
        os.sync()
        out = workdir / f"full-{i}"
        full = full_rebuild(repo_dir, out)
        if count_packages(out / "repodata") != total:
            raise RuntimeError(f"the full rebuild did not index {total} packages")
        shutil.rmtree(out)
        runs["incremental"].append(incremental)
        runs["full"].append(full)
        say(
            f"repo: repeat {i + 1}/{repeats} ({total} packages): add one {incremental:.3f} s, "
            f"full rebuild {full:.3f} s"
        )
    inc_s, full_s = min(runs["incremental"]), min(runs["full"])
    ratio = inc_s / full_s
    say(
        f"repo, {packages} packages + one per repeat, best of {repeats}: add one (Kiln) {inc_s:.3f} s, "
        f"full createrepo_c {full_s:.3f} s; incremental/full = {ratio:.3f} "
        f"(target <= {MAX_REPO_RATIO:g}) -> {'met' if ratio <= MAX_REPO_RATIO else 'MISSED'}"
    )
    return {
        "packages": packages,
        "payload_kib": payload_kib,
        "package_bytes_total": sum(rpm.stat().st_size for rpm in rpms),
        "initial_s": round(initial_s, 3),
        "incremental_s": round(inc_s, 3),
        "full_s": round(full_s, 3),
        "ratio_incremental_over_full": round(ratio, 3),
        "incremental_runs": [round(t, 3) for t in runs["incremental"]],
        "entries_from": "createrepo_c bindings" if repodata._createrepo else "createrepo_c --pkglist",
        "full_runs": [round(t, 3) for t in runs["full"]],
        "target_met": ratio <= MAX_REPO_RATIO,
    }


# --- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement (best is kept)")
    parser.add_argument("--size-mib", type=int, default=1024, help="Glance image size (default 1024)")
    parser.add_argument("--packages", type=int, default=5000, help="repo size before the add (default 5000)")
    parser.add_argument(
        "--payload-kib",
        type=int,
        default=0,
        help="give each repo package this many KiB of random bytes (default 0: the empty test packages)",
    )
    parser.add_argument("--only", choices=("glance", "repo"), help="run one half only")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.size_mib < 1 or args.packages < 1 or args.payload_kib < 0:
        parser.error("--repeats, --size-mib and --packages must be at least 1, --payload-kib at least 0")

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (scripts/bootstrap.sh installs them)", file=sys.stderr)
        return 2

    load_before = round(os.getloadavg()[0], 2)
    say(f"load average (1 min) before: {load_before:.2f} on {os.cpu_count()} CPUs")
    result: dict[str, Any] = {"benchmark": "publish", "repeats": args.repeats, "loadavg_before": load_before}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-publish-") as tmp:
        workdir = Path(tmp)
        config, site = start_site(workdir / "site", say)
        try:
            if args.only in (None, "glance"):
                (workdir / "glance").mkdir()
                result["glance"] = bench_glance(site, workdir / "glance", args.size_mib, args.repeats, say)
            if args.only in (None, "repo"):
                (workdir / "repo").mkdir()
                result["repo"] = bench_repo(
                    config, workdir / "repo", args.packages, args.payload_kib, args.repeats, say
                )
        finally:
            stopped = site.down()
            say(f"site down ({', '.join(stopped) or 'nothing was running'})")

    ok = all(part["target_met"] for key, part in result.items() if key in ("glance", "repo"))
    result.update(
        {
            "targets_met": ok,
            "loadavg_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
    )
    print(json.dumps(result, sort_keys=True))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
