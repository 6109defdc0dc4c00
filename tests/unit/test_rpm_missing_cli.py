"""The real ``kiln rpm missing`` (a subprocess) against repos served over loopback by the metadata
fuzzer's server: hostile metadata ends with exit 4 naming the URL and what was wrong (never 70, never
a hang, never a bomb in memory), and the report shows epochs and noarch-only sources.

The deadline is set through ``$KILN_REPO_METADATA_DEADLINE_S`` (README: Configuration)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.workspace import PACKAGE_ROOT
from tests.support.metadata_fuzz import (
    PRIMARY_HEAD,
    PRIMARY_TAIL,
    Pkg,
    Repo,
    RepoServer,
    gzip_bomb,
    package_xml,
)

pytest.importorskip("rpm", reason="rpm's Python bindings (python3-rpm + the rpm shim)")

# Peak RSS of `kiln rpm missing` reading a bomb: the interpreter and Kiln's imports take ~60 MiB; the
# bomb decompresses to 3 GB, so reading it whole could not stay under this.
BOMB_RSS_CAP_MIB = 200


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mib: float


# `python -m builder ARGS`, then the process's own peak RSS (VmHWM: the high-water mark of its memory
# since exec) written to a file. getrusage's ru_maxrss would not do: it carries the forking
# process's (pytest's) high-water mark across exec.
KILN_REPORTING_ITS_PEAK = """\
import sys
from builder.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
sys.exit(code)
"""


def _kiln(tmp_path: Path, *args: str, deadline_s: float | None = None, timeout: float = 120) -> Ran:
    """``kiln ARGS`` in a child process, timed, with its own peak RSS."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(PACKAGE_ROOT)}
    if deadline_s is not None:
        env["KILN_REPO_METADATA_DEADLINE_S"] = str(deadline_s)
    peak = tmp_path / "peak-rss-kb"
    started = time.monotonic()
    ran = subprocess.run(
        [sys.executable, "-c", KILN_REPORTING_ITS_PEAK, str(peak), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    return Ran(ran.returncode, ran.stdout, ran.stderr, seconds, int(peak.read_text()) / 1024)


@pytest.fixture
def server():
    with RepoServer() as running:
        yield running


def _pkg(name: str, arch: str, version: str = "1.0", *, source: str | None = None, epoch: str = "0") -> Pkg:
    return Pkg(name, arch, epoch, version, "1.el9", f"{source or name}-{version}-1.el9.src.rpm", [name], [])


def _missing(tmp_path: Path, server: RepoServer, first: Repo, second: Repo, *more: str, **kw: float) -> Ran:
    server.put("first", first.files())
    server.put("second", second.files())
    return _kiln(
        tmp_path, "rpm", "missing", "--from", server.url("first"), "--to", server.url("second"), *more, **kw
    )


GOOD = [_pkg("foo", "ppc64le")]


def test_the_report_shows_epochs_and_the_noarch_only_sources_apart(server, tmp_path):
    first = Repo([
        _pkg("foo", "x86_64"), _pkg("foo-doc", "noarch", source="foo"),  # only foo-doc is there
        _pkg("bar", "x86_64", "1.0", epoch="2"),  # 2:1.0 against 1:9.0 there
        _pkg("data", "noarch"),  # builds only noarch, not there
    ])  # fmt: skip
    second = Repo([_pkg("foo-doc", "noarch", source="foo"), _pkg("bar", "ppc64le", "9.0", epoch="1")])
    ran = _missing(tmp_path, server, first, second, "--json")
    assert ran.code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert [(m["source"], m["status"], m["version"], m["have"]) for m in report["missing"]] == [
        ("bar", "older", "2:1.0-1.el9", "1:9.0-1.el9"),
        ("foo", "missing", "1.0-1.el9", None),
    ]
    assert [(m["source"], m["status"]) for m in report["noarch_only"]] == [("data", "noarch-only")]
    text = _missing(tmp_path, server, first, second).stdout
    assert "2:1.0-1.el9" in text and "only 1:9.0-1.el9" in text
    assert "noarch only, missing: no rebuild" in text
    assert "2 source package(s) to rebuild for ppc64le" in text


def test_a_server_that_drips_a_byte_at_a_time_ends_it_with_exit_4_within_the_deadline(server, tmp_path):
    dripping = Repo([_pkg("foo", "x86_64")])
    dripping.transport["repodata/primary.xml.gz"] = {"drip_s": 0.5}  # the whole file: ~20 minutes
    ran = _missing(tmp_path, server, dripping, Repo(GOOD), deadline_s=2)
    assert ran.code == 4, ran.stderr
    assert server.url("first") + "repodata/primary.xml.gz: not read within 2 s" in ran.stderr
    assert ran.seconds < 2 + 5  # the deadline, plus the interpreter's start and the other repo


BOMB_UNITS = {  # 1 MiB, repeated 3,000 times in one ~3-15 MB gzip member: 3 GB of valid XML
    "whitespace": (b" " * (1 << 20), "has an XML token (tag, value or text) over 1,048,576 bytes"),
    "packages": (package_xml(_pkg("boom", "x86_64")).encode() * 2500, "decompresses more than 100x"),
}


@pytest.mark.parametrize("shape", sorted(BOMB_UNITS))
def test_a_gzip_bomb_ends_it_with_exit_4_and_never_grows_in_memory(server, tmp_path, shape):
    unit, refusal = BOMB_UNITS[shape]
    bomb = Repo([])
    bomb.primary_body = gzip_bomb(PRIMARY_HEAD.format(count=1).encode(), unit, 3000, PRIMARY_TAIL.encode())
    ran = _missing(tmp_path, server, bomb, Repo(GOOD))
    assert ran.code == 4, ran.stderr
    assert server.url("first") + "repodata/primary.xml.gz: " + refusal in ran.stderr
    assert ran.peak_rss_mib < BOMB_RSS_CAP_MIB, f"peak RSS {ran.peak_rss_mib:.0f} MiB"


@pytest.mark.parametrize(
    ("package", "edit", "refusal"),
    [
        (Pkg("foo", "x86_64", "0", "1", "1", "foo-1-1.src.rpm", has_version=False), None, "no <version>"),
        (Pkg("foo", "x86_64", "0", "9" * 5000, "1", "foo-1-1.src.rpm"), None, "longer than 256 characters"),
        (
            Pkg("foo", "x86_64", "0", "1", "1", "foo-1-1.src.rpm"),
            lambda xml: xml.replace(b"?>\n", b'?>\n<!DOCTYPE m [<!ENTITY a "aaaa">]>\n', 1),
            "has a DOCTYPE",
        ),
        (
            Pkg("foo", "x86_64", "0", "1", "1", "foo-1-1.src.rpm"),
            lambda xml: xml[:-40],
            "not well-formed XML",
        ),
    ],
    ids=["no-version", "5000-digit-version", "entities", "truncated-xml"],
)
def test_malformed_metadata_ends_it_with_exit_4_naming_the_url_never_70(
    server, tmp_path, package, edit, refusal
):
    repo = Repo([package], checksums="none")
    if edit is not None:
        repo.xml_edits.append(edit)
    ran = _missing(tmp_path, server, repo, Repo(GOOD))
    assert ran.code == 4, ran.stderr
    assert refusal in ran.stderr and server.url("first") in ran.stderr
    assert "internal error" not in ran.stderr


# --- a repo that needs a login: it comes from site.yaml, and is never printed ------------------------------

LOGIN = ("kiln-reader", "p@ss:w0rd-7Hq2")  # '@' and ':' in it: written percent-encoded in a URL
PASSWORD_IN_URL = "p%40ss%3Aw0rd-7Hq2"


@pytest.fixture
def guarded():
    with RepoServer(login=LOGIN) as running:
        yield running


def _site_with(tmp_path: Path, *credentials: str) -> Path:
    site = tmp_path / "site.yaml"
    entries = "".join(f"\n  - {url}" for url in credentials) or " []"
    site.write_text(f"rpm_repo_credentials:{entries}\n")
    return site


def _with_login(url: str, password: str = PASSWORD_IN_URL) -> str:
    return url.replace("http://", f"http://{LOGIN[0]}:{password}@", 1)


def _never_shows_the_password(ran: Ran, *passwords: str) -> None:
    for secret in (*passwords, LOGIN[1], PASSWORD_IN_URL):
        assert secret not in ran.stdout and secret not in ran.stderr


def test_a_repo_that_needs_a_login_is_read_with_the_one_site_yaml_lends_it(guarded, tmp_path):
    # One site.yaml entry for the server's root lends its login to both repos below it.
    site = _site_with(tmp_path, _with_login(f"http://127.0.0.1:{guarded.port}/"))
    guarded.put("first", Repo([_pkg("foo", "x86_64"), _pkg("bar", "x86_64")]).files())
    guarded.put("second", Repo([_pkg("bar", "ppc64le")]).files())
    ran = _kiln(tmp_path, "--site", str(site), "rpm", "missing", "--from", guarded.url("first"),
                "--to", guarded.url("second"), "--json")  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert [m["source"] for m in json.loads(ran.stdout)["missing"]] == ["foo"]
    assert set(guarded.authorizations) == {"Basic " + base64.b64encode(":".join(LOGIN).encode()).decode()}
    _never_shows_the_password(ran)


@pytest.mark.parametrize("login", ["none", "wrong", "wrong-on-the-command-line"])
def test_without_the_right_login_it_is_exit_4_naming_the_url_without_the_password(guarded, tmp_path, login):
    wrong = "wr0ng-pa55word-x9"
    lent = [_with_login(f"http://127.0.0.1:{guarded.port}/", wrong)] if login == "wrong" else []
    site = _site_with(tmp_path, *lent)
    guarded.put("first", Repo([_pkg("foo", "x86_64")]).files())
    guarded.put("second", Repo(GOOD).files())
    first = guarded.url("first")
    if login == "wrong-on-the-command-line":
        first = _with_login(first, wrong)
    second = guarded.url("second")
    ran = _kiln(tmp_path, "--site", str(site), "rpm", "missing", "--from", first, "--to", second)
    assert ran.code == 4, ran.stderr
    assert guarded.url("first") + "repodata/repomd.xml: HTTP 401 Unauthorized" in ran.stderr
    _never_shows_the_password(ran, wrong)
