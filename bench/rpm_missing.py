"""rpm_missing: how long ``kiln rpm missing`` takes to compare two 20,000-package repos, against reading
the same metadata with no limits at all.

Generates two repos' metadata in memory, like an EL AppStream pair: the first (x86_64) has 20,000
binary packages from ~11,000 source packages (arch packages, -devel, noarch -doc subpackages, some
sources noarch only, some epochs), each with a summary, a description, ~10 provides, ~20 requires and
a few files, as createrepo writes them (~50 MB of primary.xml, ~4 MB gzipped); the second (ppc64le)
has the same sources, some older, some absent, some with only their noarch subpackages. Both are
served over loopback HTTP (a thread in this process). Then, in one process, it times:

* baseline: what Kiln did before it read metadata inside limits: each repo's repomd.xml and primary
  fetched whole with ``requests``, ``gzip.decompress``, ``xml.etree.ElementTree.fromstring`` (C
  parser, entities and all), the same fields taken from every package (no comparison, no checks);
* floor (secondary): the least work that reads the same fields: whole downloads, ``gzip.decompress``,
  C expat's ``iterparse`` with each package cleared as it ends, nothing checked or kept;
* kiln (the headline figure): ``repo_packages`` on both repos (streamed, decompressed and parsed
  chunk by chunk inside builder/limits.py's limits, checksums verified, every field checked) and
  ``find_missing`` (by source package, rpm's own ``labelCompare``): the work of ``kiln rpm missing``
  without the interpreter's start.

Each figure is the best of ``--repeats`` runs. Peak memory is measured first, before any timing run
(so that no freed memory is already in the process), in a forked child per measurement: the growth of
its RSS (ru_maxrss minus its RSS at the fork) and the peak of Python's own allocations (tracemalloc).

    .venv/bin/python bench/rpm_missing.py            # human report + one JSON line
    .venv/bin/python bench/rpm_missing.py --json     # the JSON line only
    .venv/bin/python bench/rpm_missing.py --check    # exit 1 unless kiln is under 5 s
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import platform
import random
import resource
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.arch import Arch  # noqa: E402
from builder.rpm.missing import find_missing  # noqa: E402
from builder.rpm.source import repo_packages  # noqa: E402
from tests.support.metadata_fuzz import PRIMARY_HEAD, PRIMARY_TAIL, RepoServer, Served  # noqa: E402

MAX_SECONDS = 5.0  # the target for the pair
PACKAGES = 20_000
_COMMON = "{http://linux.duke.edu/metadata/common}"
_RPM = "{http://linux.duke.edu/metadata/rpm}"
_REPO = "{http://linux.duke.edu/metadata/repo}"


# --- the repos ---------------------------------------------------------------------------------------


def _package(rng: random.Random, name: str, arch: str, evr: tuple[str, str, str], source: str) -> str:
    epoch, version, release = evr
    provides = "".join(
        f'<rpm:entry name="{name}{suffix}" flags="EQ" epoch="{epoch}" ver="{version}" rel="{release}"/>'
        for suffix in ["", f"({arch})", *(f"-cap{i}" for i in range(rng.randrange(2, 14)))]
    )
    requires = "".join(
        f'<rpm:entry name="lib{rng.randrange(2000)}.so.{rng.randrange(9)}()(64bit)"/>'
        for _ in range(rng.randrange(5, 35))
    )
    files = "".join(f"<file>/usr/bin/{name}-{i}</file>" for i in range(rng.randrange(0, 4)))
    text = escape(f"{name} does many useful things. " * rng.randrange(2, 12))
    return (
        f'<package type="rpm"><name>{name}</name><arch>{arch}</arch>'
        f'<version epoch="{epoch}" ver="{version}" rel="{release}"/>'
        f'<checksum type="sha256" pkgid="YES">{rng.getrandbits(256):064x}</checksum>'
        f"<summary>The {name} package</summary><description>{text}</description>"
        "<packager>Builder &lt;builder@example.com&gt;</packager>"
        f"<url>https://example.org/{name}</url>"
        f'<time file="1700000000" build="1690000000"/><size package="{rng.randrange(10**4, 10**7)}" '
        f'installed="{rng.randrange(10**4, 10**8)}" archive="123456"/>'
        f'<location href="Packages/{name[0]}/{name}-{version}-{release}.{arch}.rpm"/>'
        "<format><rpm:license>GPL-2.0-or-later</rpm:license><rpm:vendor>Example</rpm:vendor>"
        f"<rpm:group>Unspecified</rpm:group><rpm:buildhost>builder-{rng.randrange(50)}</rpm:buildhost>"
        f"<rpm:sourcerpm>{source}-{version}-{release}.src.rpm</rpm:sourcerpm>"
        f'<rpm:header-range start="4504" end="{rng.randrange(5000, 90000)}"/>'
        f"<rpm:provides>{provides}</rpm:provides><rpm:requires>{requires}</rpm:requires>{files}"
        "</format></package>\n"
    )


def make_primaries(packages: int, seed: int = 1) -> tuple[bytes, bytes, int]:
    """(first primary.xml, second primary.xml, packages in the second)."""
    rng = random.Random(seed)
    first: list[str] = []
    second: list[str] = []
    source = 0
    while len(first) < packages:
        source += 1
        name = f"pkg{source:05d}"
        evr = (
            rng.choice(["0"] * 9 + ["1", "2"]),
            f"{rng.randrange(1, 20)}.{rng.randrange(30)}",
            f"{rng.randrange(1, 9)}.el9",
        )
        layout = rng.choice(["arch", "arch+devel", "arch+devel+doc", "arch+doc", "noarch"])
        subpackages = [(name, "noarch" if layout == "noarch" else "x86_64")]
        subpackages += [(f"{name}-devel", "x86_64")] if "devel" in layout else []
        subpackages += [(f"{name}-doc", "noarch")] if "doc" in layout else []
        fate = rng.choices(["same", "older", "absent", "noarch-there"], weights=[80, 10, 5, 5])[0]
        for sub, arch in subpackages:
            first.append(_package(rng, sub, arch, evr, name))
            if fate == "absent" or (fate == "noarch-there" and arch != "noarch"):
                continue
            there = evr if fate != "older" else (evr[0], "0.1", evr[2])
            second.append(_package(rng, sub, "ppc64le" if arch != "noarch" else arch, there, name))
    head = PRIMARY_HEAD.format(count=len(first))

    def document(entries: list[str]) -> bytes:
        return (head + "".join(entries) + PRIMARY_TAIL).encode()

    return document(first), document(second), len(second)


def repo_files(primary: bytes) -> dict[str, Served]:
    body = gzip.compress(primary, compresslevel=6, mtime=0)
    repomd = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">'
        f'<data type="primary"><checksum type="sha256">{hashlib.sha256(body).hexdigest()}</checksum>'
        f'<open-checksum type="sha256">{hashlib.sha256(primary).hexdigest()}</open-checksum>'
        f'<location href="repodata/primary.xml.gz"/><size>{len(body)}</size>'
        f"<open-size>{len(primary)}</open-size></data></repomd>\n"
    ).encode()
    return {"repodata/repomd.xml": Served(repomd), "repodata/primary.xml.gz": Served(body)}


# --- the measured work -------------------------------------------------------------------------------


def baseline(urls: tuple[str, str]) -> int:
    """Each repo read whole, with no limits: what Kiln did before (plus nothing)."""
    import requests

    count = 0
    for url in urls:
        repomd = ET.fromstring(requests.get(url + "repodata/repomd.xml", timeout=60).content)
        data = next(d for d in repomd.iter(f"{_REPO}data") if d.get("type") == "primary")
        href = data.find(f"{_REPO}location").get("href")  # type: ignore[union-attr]
        root = ET.fromstring(gzip.decompress(requests.get(url + href, timeout=60).content))
        for pkg in root.iter(f"{_COMMON}package"):
            version = pkg.find(f"{_COMMON}version")
            fmt = pkg.find(f"{_COMMON}format")
            fields = (
                pkg.findtext(f"{_COMMON}name"),
                pkg.findtext(f"{_COMMON}arch"),
                version.get("ver") if version is not None else None,
                pkg.find(f"{_COMMON}location").get("href"),  # type: ignore[union-attr]
                fmt.findtext(f"{_RPM}sourcerpm") if fmt is not None else None,
                [e.get("name") for e in fmt.iter(f"{_RPM}entry")] if fmt is not None else [],
            )
            count += bool(fields)
    return count


def floor(urls: tuple[str, str]) -> int:
    """The least work that reads the same fields: whole downloads, then C expat's pull parser on the
    decompressed bytes, packages cleared as they end; no limits, no checks, nothing kept."""
    import io

    import requests

    count = 0
    for url in urls:
        data = gzip.decompress(requests.get(url + "repodata/primary.xml.gz", timeout=60).content)
        for _, element in ET.iterparse(io.BytesIO(data)):
            if element.tag == f"{_COMMON}package":
                count += bool(element.findtext(f"{_COMMON}name"))
                element.clear()
    return count


def kiln(urls: tuple[str, str]) -> int:
    """``kiln rpm missing``'s work: both repos read inside limits, compared by source package."""
    report = find_missing(repo_packages(urls[0]), repo_packages(urls[1]), Arch.PPC64LE)
    return len(report) + len(report.noarch_only)


def best_of(repeats: int, run: Callable[[], Any]) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), times, result


def peak_memory_mib(run: Callable[[], Any]) -> tuple[float, float]:
    """(RSS growth, tracemalloc peak) while ``run`` runs, in MiB, in a forked child: its own high-water
    mark, and Python's allocations (tracemalloc slows it: timings come from other runs)."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()

    def measure() -> None:
        import tracemalloc

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        tracemalloc.start()
        run()
        child.send((grown / 1024, tracemalloc.get_traced_memory()[1] / (1 << 20)))

    proc = context.Process(target=measure)
    proc.start()
    measured = parent.recv()
    proc.join()
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=PACKAGES, help="binary packages in the first repo")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; best is kept")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless kiln is under {MAX_SECONDS:g} s")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.json else print

    first, second, second_count = make_primaries(args.packages)
    with RepoServer() as server:
        server.put("first", repo_files(first))
        server.put("second", repo_files(second))
        urls = (server.url("first"), server.url("second"))
        gzipped = len(server.files["first/repodata/primary.xml.gz"].body)
        say(
            f"repos: {args.packages:,} and {second_count:,} packages; primary.xml {len(first) / 1e6:.1f} MB "
            f"and {len(second) / 1e6:.1f} MB ({gzipped / 1e6:.1f} MB gzipped)"
        )
        base_rss, base_py = peak_memory_mib(lambda: baseline(urls))
        kiln_rss, kiln_py = peak_memory_mib(lambda: kiln(urls))
        say(
            f"peak memory, RSS growth (tracemalloc peak): baseline {base_rss:.0f} MiB ({base_py:.0f} MiB), "
            f"kiln {kiln_rss:.0f} MiB ({kiln_py:.0f} MiB)"
        )
        base_s, base_all, _ = best_of(args.repeats, lambda: baseline(urls))
        say(f"baseline (whole downloads, ElementTree, no limits): best {base_s:.3f} s  {_runs(base_all)}")
        floor_s, floor_all, _ = best_of(args.repeats, lambda: floor(urls))
        say(
            f"floor (whole downloads, C iterparse, nothing checked): best {floor_s:.3f} s  {_runs(floor_all)}"
        )
        kiln_s, kiln_all, found = best_of(args.repeats, lambda: kiln(urls))
        say(f"kiln (repo_packages x2 inside limits + find_missing): best {kiln_s:.3f} s  {_runs(kiln_all)}")
    ratio = kiln_s / base_s
    ok = kiln_s < MAX_SECONDS
    result = {
        "benchmark": "rpm_missing",
        "packages_first": args.packages,
        "packages_second": second_count,
        "primary_xml_bytes": len(first),
        "repeats": args.repeats,
        "baseline_s": round(base_s, 3),
        "kiln_s": round(kiln_s, 3),
        "ratio": round(ratio, 2),
        "reported_sources": found,
        "floor_s": round(floor_s, 3),
        "ratio_vs_floor": round(kiln_s / floor_s, 2),
        "baseline_rss_growth_mib": round(base_rss, 1),
        "baseline_tracemalloc_peak_mib": round(base_py, 1),
        "kiln_rss_growth_mib": round(kiln_rss, 1),
        "kiln_tracemalloc_peak_mib": round(kiln_py, 1),
        "targets_met": ok,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    say(
        f"kiln/baseline = {ratio:.2f}x, kiln/floor = {kiln_s / floor_s:.2f}x; {found} sources reported "
        f"(target: < {MAX_SECONDS:g} s) -> {'met' if ok else 'MISSED'}"
    )
    print(json.dumps(result, sort_keys=True))
    return 1 if args.check and not ok else 0


def _runs(times: list[float]) -> str:
    return "(runs: " + ", ".join(f"{t:.3f}" for t in times) + ")"


if __name__ == "__main__":
    sys.exit(main())
