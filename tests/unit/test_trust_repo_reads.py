"""How Kiln reads repos it does not control, beyond the metadata's own limits (test_repo_metadata_reader):

- a login comes from site.yaml (``rpm_repo_credentials``, builder/rpm/credentials.py) and goes only to
  its own origin, never to a server a redirect names; no message holds it;
- the rpm rebuild's published repo (``_published``): only "there is no repo yet" (HTTP 404 on
  repodata/repomd.xml, or none in the embedded site's tree) reads as empty; a tampered, bombed,
  failing or unreachable repo fails the build (exit 4) naming the URL.

Served over loopback by the metadata fuzzer's server (tests/support/metadata_fuzz.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.backends.rpmbuild import _published, embedded_repo_dir, repo_url
from builder.core.kind import BuildJob, HostFacts
from builder.endpoints import local_endpoints
from builder.errors import ExitCode, InvalidInput, RemoteDataError
from builder.host.http import Deadline, login_goes_to, read_all
from builder.pipeline.graph import load_targets
from builder.rpm.credentials import RepoLogins, login_secrets
from builder.rpm.source import RepoNotFound, download, repo_packages
from builder.siteconfig import RepoSite, SiteConfig, load_site
from builder.workspace import PACKAGE_ROOT, Workspace
from tests.support.metadata_fuzz import (
    PRIMARY_HEAD,
    PRIMARY_TAIL,
    Pkg,
    Repo,
    RepoServer,
    Served,
    gzip_bomb,
    package_xml,
)

LOGIN = ("reader", "s3cret-Pa55")
BASIC = "Basic " + base64.b64encode(b"reader:s3cret-Pa55").decode()


def _pkg(name: str, arch: str = "ppc64le") -> Pkg:
    return Pkg(name, arch, "0", "1.0", "1.el9", f"{name}-1.0-1.el9.src.rpm", [name], [])


@pytest.fixture
def server():
    with RepoServer() as running:
        yield running


@pytest.fixture
def guarded():
    with RepoServer(login=LOGIN) as running:
        yield running


def _lent(server: RepoServer, path: str = "/") -> RepoLogins:
    return RepoLogins((f"http://{LOGIN[0]}:{LOGIN[1]}@127.0.0.1:{server.port}{path}",))


# --- logins -------------------------------------------------------------------------------------------


def test_a_repo_behind_a_login_is_read_with_the_login_site_yaml_lends_its_url(guarded):
    guarded.put("kiln/el/9", Repo([_pkg("foo")]).files())
    url = guarded.url("kiln/el/9")
    with pytest.raises(RemoteDataError, match=r"repodata/repomd.xml: HTTP 401 Unauthorized") as refused:
        repo_packages(url)
    assert refused.value.http_status == 401 and refused.value.exit_code == ExitCode.FAILED
    assert [p.name for p in repo_packages(url, logins=_lent(guarded, "/kiln/"))] == ["foo"]
    assert guarded.authorizations[-2:] == [BASIC, BASIC]  # repomd.xml and primary
    with pytest.raises(RemoteDataError, match="HTTP 401"):  # a login for another path is not lent
        repo_packages(url, logins=_lent(guarded, "/other/"))


def test_a_download_names_its_url_without_the_login_it_was_given(guarded, tmp_path):
    guarded.put("srpms", {"foo.src.rpm": Served(b"not really an rpm")})
    with_login = f"http://{LOGIN[0]}:wrong-pass-x@127.0.0.1:{guarded.port}/srpms/foo.src.rpm"
    with pytest.raises(RemoteDataError) as refused:
        download(with_login, tmp_path / "foo.src.rpm")
    assert str(refused.value) == f"{guarded.url('srpms')}foo.src.rpm: HTTP 401 Unauthorized"
    assert not (tmp_path / "foo.src.rpm").exists()
    got = download(guarded.url("srpms") + "foo.src.rpm", tmp_path / "foo.src.rpm", logins=_lent(guarded))
    assert got.read_bytes() == b"not really an rpm"


def test_a_login_is_never_sent_to_the_server_a_redirect_names():
    with RepoServer(login=LOGIN) as guarded, RepoServer() as elsewhere:
        elsewhere.put("x", {"repodata/repomd.xml": Served(b"<repomd/>")})
        redirect = Served(b"", status=302, location=elsewhere.url("x") + "repodata/repomd.xml")
        guarded.put("x", {"repodata/repomd.xml": redirect})
        url = guarded.url("x") + "repodata/repomd.xml"
        bare, auth = _lent(guarded).for_url(url)
        body = read_all(bare, max_bytes=1000, deadline=Deadline.start(10), read_timeout_s=5, auth=auth)
        assert body == b"<repomd/>"
        assert guarded.authorizations == [BASIC] and elsewhere.authorizations == [None]


def test_a_login_goes_only_to_its_own_origin():
    assert login_goes_to("https://h/a/", "https://h:443/b/")
    assert login_goes_to("http://h/a/", "https://h/a/")  # the upgrade to TLS on the default ports
    assert not login_goes_to("https://h/a/", "http://h/a/")  # never downgraded to plain HTTP
    assert not login_goes_to("https://h/a/", "https://h:8443/a/")
    assert not login_goes_to("https://h/a/", "https://evil.example/a/")
    assert not login_goes_to("https://h/a/", "https://h:notaport/")


def test_the_http_client_refuses_a_url_that_still_carries_its_login():
    # A Kiln bug, not bad input: every message of the fetch would show the password.
    url = "http://u:pw-123456@127.0.0.1:1/x"
    with pytest.raises(ValueError, match="without userinfo") as refused:
        read_all(url, max_bytes=1, deadline=Deadline.start(1), read_timeout_s=1)
    assert "pw-123456" not in str(refused.value)


def test_site_yaml_repo_credentials_must_carry_a_login_and_never_show_it(tmp_path: Path):
    site = tmp_path / "site.yaml"
    site.write_text("rpm_repo_credentials: [https://u:Pa55-w0rd@repo.example/el/]\n")
    assert load_site(site, tmp_path).login_urls()[0] == "https://u:Pa55-w0rd@repo.example/el/"
    site.write_text("rpm_repo_credentials: [https://repo.example/el/, 'https://u:Pa55 w0rd@h/']\n")
    with pytest.raises(InvalidInput) as refused:
        load_site(site, tmp_path)
    assert "rpm_repo_credentials[0]: carries no user:password@" in str(refused.value)
    assert "Pa55" not in str(refused.value)


def test_the_secrets_of_a_login_are_the_password_as_written_and_decoded_and_its_basic_header():
    assert login_secrets(["https://u:p%40ss@h/", "https://token-abc@h/", "https://h/"]) == [
        "p%40ss", "p@ss", base64.b64encode(b"u:p@ss").decode(),
        "token-abc", "token-abc", base64.b64encode(b"token-abc:").decode(),
    ]  # fmt: skip


# --- the published repo: only a repo that is not there yet is empty ---------------------------------------


def test_a_published_repo_that_does_not_exist_yet_is_empty(server):
    assert _published(server.url("kiln/el/9/ppc64le"), RepoLogins()) == []


def test_a_published_repo_is_read_with_its_login(guarded):
    guarded.put("kiln", Repo([_pkg("liba-devel")]).files())
    assert [p.name for p in _published(guarded.url("kiln"), _lent(guarded))] == ["liba-devel"]


def _bombed() -> Repo:
    repo = Repo([])  # ~500 MB of valid packages in one small gzip member
    unit = package_xml(_pkg("boom", "x86_64")).encode() * 2500
    repo.primary_body = gzip_bomb(PRIMARY_HEAD.format(count=1).encode(), unit, 500, PRIMARY_TAIL.encode())
    return repo


BROKEN = {
    "tampered primary": (Repo([_pkg("foo")], checksums="stale"), "sha256 of the file is .*, repomd.xml says"),
    "gzip bomb": (_bombed(), "decompresses more than 100x"),
    "server error": (Repo([], transport={"repodata/repomd.xml": {"status": 500}}), "HTTP 500"),
    "primary missing": (Repo([], transport={"repodata/primary.xml.gz": {"status": 404}}), "HTTP 404"),
    "not repomd": (Repo([], repomd_edits=[lambda _: b"<html/>"]), "not repomd.xml"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_published_repo_that_cannot_be_trusted_fails_the_build_naming_its_url(server, case):
    repo, refusal = BROKEN[case]
    url = server.url("kiln")
    server.put("kiln", repo.files())
    with pytest.raises(RemoteDataError, match=refusal) as refused:
        _published(url, RepoLogins())
    assert not isinstance(refused.value, RepoNotFound)
    assert refused.value.exit_code == ExitCode.FAILED and str(refused.value).startswith(url)


def test_a_refusal_keeps_its_kind_and_status_when_it_is_placed_at_a_url():
    placed = RepoNotFound("HTTP 404 Not Found", http_status=404).at("http://h/repodata/repomd.xml")
    assert isinstance(placed, RepoNotFound) and placed.http_status == 404
    assert str(placed) == "http://h/repodata/repomd.xml: HTTP 404 Not Found"


def test_the_embedded_sites_repo_not_in_its_tree_is_empty_whether_the_site_is_up_or_not(tmp_path):
    closed = "http://127.0.0.1:9/kiln/el/9/ppc64le/"  # the discard port: nothing answers there
    assert _published(closed, RepoLogins(), tmp_path / "kiln/el/9/ppc64le") == []
    (tmp_path / "kiln/el/9/ppc64le/repodata").mkdir(parents=True)
    (tmp_path / "kiln/el/9/ppc64le/repodata/repomd.xml").write_bytes(b"<repomd/>")
    with pytest.raises(RemoteDataError, match=r"cannot read it .*the local site serves it \(kiln site up\)"):
        _published(closed, RepoLogins(), tmp_path / "kiln/el/9/ppc64le")  # published there, not served


def test_only_the_local_backend_without_a_url_of_its_own_is_read_from_the_embedded_sites_tree(tmp_path):
    workspace = Workspace(PACKAGE_ROOT)
    targets, _ = load_targets([workspace.recipes_dir / "rpm" / "kiln-hello.yaml"], workspace)
    target = next(t for t in targets if t.arch is Arch.PPC64LE)

    def job(site: SiteConfig) -> BuildJob:
        paths = [tmp_path] * 7  # render, out, tmp, build root, workspace, elements, cache
        return BuildJob(target, {}, *paths, site, HostFacts(Arch.X86_64, "emulated", probed=False))

    tree = local_endpoints(SiteConfig(), tmp_path).repo_root
    assert embedded_repo_dir(job(SiteConfig())) == tree / "kiln/el/9/ppc64le"
    assert repo_url(job(SiteConfig())).endswith("/kiln/el/9/ppc64le/")
    for repo in (RepoSite(base_url="https://repo.example/"), RepoSite(backend="path", path="/srv/repo")):
        assert embedded_repo_dir(job(SiteConfig(repo=repo))) is None
