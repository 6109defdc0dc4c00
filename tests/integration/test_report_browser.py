"""The build-matrix page in a real browser: Debian's headless Chromium opens `kiln report --html`'s
page (from a file) generated from a ledger of 26 builds over the example recipes' targets, the
filter (given in the URL fragment, which the page's script reads) narrows the rows, a screenshot is
saved, and the page logs no console error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from builder.cli import main
from builder.ledger import Ledger
from builder.workspace import PACKAGE_ROOT

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium missing: run `make test`, which installs it"
)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def _target(t: dict, digest: str) -> SimpleNamespace:
    return SimpleNamespace(
        id=t["id"], recipe=t["recipe"], kind=t["kind"], arch=SimpleNamespace(value=t["arch"]), digest=digest
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("report")
    ledger_path = work / "ledger.sqlite"
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "--root",
            str(PACKAGE_ROOT),
            "--ledger",
            str(ledger_path),
            "plan",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    targets = json.loads(plan.stdout)["targets"]
    build_root = work / "build"  # `kiln report` copies logs from below its build root only
    log = build_root / "debian-12_bookworm_x86_64" / "logs" / "build.log"
    log.parent.mkdir(parents=True)
    log.write_text("dib: finalise.d: 99-write-dpkg-manifest\n")
    now = time.time()
    with Ledger(ledger_path) as ledger:
        for i, t in enumerate(targets):
            if t["id"].startswith("kiln-hello"):
                continue  # never built
            for n in range(4):
                stale = i == 2 and n == 3  # its last build is of inputs it no longer has
                failed = i == 1 and n == 3
                build = ledger.start_build(_target(t, "0" * 64 if stale else t["digest"]), log_path=str(log))
                ids = ledger.finish_build(
                    build,
                    "failed" if failed else "succeeded",
                    artifacts=[]
                    if failed
                    else [("image", f"/nowhere/{build}.qcow2", "ab" * 32, (200 + 20 * i) << 20)],
                    error="disk-image-create exited 1 <script>alert(1)</script>" if failed else None,
                )
                ledger._db.execute(
                    "UPDATE builds SET started_at=?, finished_at=? WHERE id=?",
                    (
                        now - 86400 * (4 - n) - 900 * i,
                        now - 86400 * (4 - n) - 900 * i + 180 + 25 * n + 9 * i,
                        build,
                    ),
                )
                if ids and i % 2 == 0 and n == 3:
                    ledger.record_publication(ids[0], "glance", f"image-{build}")
        count = len(ledger.history())
    out = work / "site"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KILN_BUILD_ROOT", str(build_root))
        argv = ["--root", str(PACKAGE_ROOT), "--ledger", str(ledger_path), "report", "--html", str(out)]
        reported = main([*argv, "--json"])
    assert reported == 0
    return {"dir": out, "index": out / "index.html", "builds": count, "targets": targets}


def _rows(dom: str) -> tuple[list[str], list[str]]:
    body = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr([^>]*)>\s*<th scope=\"row\">([^<]+)<", body)
    shown = [name for attrs, name in rows if "hidden" not in attrs]
    return [name for _, name in rows], shown


def test_the_page_comes_from_a_ledger_of_at_least_20_builds_and_shows_every_state(page):
    assert page["builds"] >= 20
    html = page["index"].read_text()
    for state in ("published", "built", "stale", "failed", "never built", "n/a"):
        assert f'data-state="{state}"' in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<th scope="col">ppc64le</th>' in html and "<caption>" in html
    assert (page["dir"] / "logs").is_dir() and 'href="logs/build-' in html


def test_headless_chromium_shows_every_row_without_a_filter_and_saves_a_screenshot(page):
    shot = page["dir"].parent / "matrix.png"
    result = _chromium("--window-size=1400,1000", f"--screenshot={shot}", page["index"].as_uri())
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")
    assert _console_errors(result.stderr) == []
    dom = _chromium("--dump-dom", page["index"].as_uri())
    rows, shown = _rows(dom.stdout)
    assert len(rows) == len({t["id"].rpartition(":")[0] for t in page["targets"]}) and shown == rows
    assert f">{len(rows)} of {len(rows)} rows<" in dom.stdout
    assert _console_errors(dom.stderr) == []


def test_the_filter_in_the_url_narrows_the_rows_in_chromium(page):
    dom = _chromium("--dump-dom", page["index"].as_uri() + "#filter=ppc64le:failed")
    rows, shown = _rows(dom.stdout)
    assert len(shown) == 1 and len(rows) > 1
    assert f">1 of {len(rows)} rows<" in dom.stdout
    assert _console_errors(dom.stderr) == []
    dom = _chromium("--dump-dom", page["index"].as_uri() + "?filter=guest-image")
    _, shown = _rows(dom.stdout)
    assert shown and all("debian-12" in name for name in shown)
