"""Local git repos from PyPI sdists for the IPA elements: a pure plan (paths, tags, DIB variables),
then sdist -> tagged git repo, cached, with unsafe or tampered sdists refused."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest

from builder.errors import InvalidInput
from builder.host.run import Runner
from builder.ipa_sources import (
    SourcePin,
    ensure_repo,
    environment,
    latest_version,
    plan_repos,
    upstream_refs,
)

PINS = [SourcePin("ironic-python-agent", "10.2.0"), SourcePin("glean", "1.24.0")]


def sdist(project: str, version: str, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A small sdist: PKG-INFO, setup.cfg and a module under one top directory."""
    top = f"{project.replace('-', '_')}-{version}"
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n\nA fake.\n",
        "setup.cfg": f"[metadata]\nname = {project}\n",
        "pkg/__init__.py": "VALUE = 42\n",
        "bin/tool": "#!/bin/sh\necho tool\n",
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return out.getvalue()


class FakePyPI:
    """PyPI's JSON API and file host for one release, counting downloads."""

    def __init__(self, blob: bytes, sha256: str | None = None, version: str = "10.2.0"):
        self.blob = blob
        self.version = version
        self.sha256 = sha256 or hashlib.sha256(blob).hexdigest()
        self.json_urls: list[str] = []
        self.downloads: list[str] = []

    def fetch_json(self, url: str) -> dict:
        self.json_urls.append(url)
        files = [
            {"packagetype": "bdist_wheel", "filename": "x.whl", "url": "../../packages/x.whl"},
            {
                "packagetype": "sdist",
                "filename": "x.tar.gz",
                "url": "../../packages/ab/x.tar.gz",  # relative, as this host's PyPI mirror gives it
                "digests": {"sha256": self.sha256},
            },
        ]
        return {"info": {"version": self.version}, "releases": {"9.0.0": [], self.version: files}}

    def fetch(self, url: str, into: Path) -> None:
        self.downloads.append(url)
        into.write_bytes(self.blob)


def git(repo: Path, *args: str) -> str:
    result = Runner().capture(["git", "-C", str(repo), *args])
    assert result.ok, result.output
    return result.stdout.strip()


def ipa_plan(cache: Path):
    return next(p for p in plan_repos(PINS, cache) if p.repo == "ironic-python-agent")


def left_in_store(cache: Path) -> list[str]:
    store = cache / "ipa-git"
    return sorted(p.name for p in store.iterdir() if not p.name.endswith(".lock")) if store.exists() else []


def test_the_plan_is_pure_and_the_same_for_the_same_pins_in_any_order(tmp_path):
    cache = tmp_path / "cache"
    first = plan_repos(PINS, cache)
    assert first == plan_repos(list(reversed(PINS)), cache)
    assert not cache.exists()  # planning touches nothing
    assert [p.repo for p in first] == ["glean", "ironic-python-agent", "requirements"]
    ipa = first[1]
    assert ipa.tag == "10.2.0"
    assert ipa.directory.parent == cache / "ipa-git"
    assert ipa.directory.name.startswith("ironic-python-agent-10.2.0-")
    assert ipa.sdist_json == "https://pypi.org/pypi/ironic-python-agent/json"


def test_the_plan_points_dib_at_file_urls_and_tags(tmp_path):
    plans = plan_repos(PINS, tmp_path)
    env = environment(plans)
    by_repo = {p.repo: p for p in plans}
    assert env["DIB_REPOLOCATION_ironic_python_agent"] == by_repo["ironic-python-agent"].directory.as_uri()
    assert env["DIB_REPOLOCATION_ironic_python_agent"].startswith("file:///")
    assert env["DIB_REPOREF_ironic_python_agent"] == "10.2.0"
    assert env["DIB_REPOREF_glean"] == "1.24.0"
    assert env["DIB_INSTALLTYPE_simple_init"] == "repo"  # the pinned glean is the one installed
    assert env["DIB_REPOLOCATION_requirements"] == by_repo["requirements"].directory.as_uri()
    assert env["DIB_REPOREF_requirements"] == by_repo["requirements"].tag


def test_the_requirements_repo_pins_the_other_projects_but_not_ipa_itself(tmp_path):
    requirements = plan_repos(PINS, tmp_path)[-1]
    assert requirements.sdist_json is None
    assert dict(requirements.files) == {"upper-constraints.txt": "glean===1.24.0\n"}


def test_another_version_gets_another_directory(tmp_path):
    other = ipa_plan(tmp_path).directory
    newer = plan_repos([SourcePin("ironic-python-agent", "10.3.0")], tmp_path)[0].directory
    assert other != newer


def test_a_site_on_the_upstream_git_host_gets_no_local_repos_but_keeps_the_pins(tmp_path):
    assert plan_repos(PINS, tmp_path, upstream_git=True) == []
    assert upstream_refs(PINS) == {"DIB_REPOREF_glean": "1.24.0", "DIB_REPOREF_ironic_python_agent": "10.2.0"}


@pytest.mark.parametrize(
    ("pin", "why"),
    [
        (SourcePin("nova", "30.0.0"), "no DIB element clones it"),
        (SourcePin("ironic-python-agent", "10.2.0; rm -rf /"), "not a release version"),
        (SourcePin("ironic-python-agent", "../../x"), "not a release version"),
        (SourcePin("../glean", "1.0"), "not a PyPI project name"),
    ],
)
def test_a_pin_that_is_not_a_cloned_project_or_a_release_is_refused(tmp_path, pin, why):
    with pytest.raises(InvalidInput, match=why):
        plan_repos([pin], tmp_path)


def test_a_project_pinned_twice_differently_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="pinned twice"):
        plan_repos([SourcePin("glean", "1.0"), SourcePin("Glean", "1.1")], tmp_path)


def test_an_sdist_becomes_a_git_repo_tagged_with_its_version(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0"))
    repo = ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert repo.made and repo.sha256 == pypi.sha256
    assert pypi.json_urls == [plan.sdist_json]
    assert pypi.downloads == ["https://pypi.org/packages/ab/x.tar.gz"]  # resolved against the document
    assert git(plan.directory, "describe", "--tags") == "10.2.0"
    assert git(plan.directory, "rev-parse", "HEAD") == repo.commit
    assert (plan.directory / "pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (plan.directory / "PKG-INFO").is_file() and (plan.directory / "setup.cfg").is_file()
    assert git(plan.directory, "status", "--porcelain") == ""  # everything committed
    assert git(plan.directory, "ls-files", "-s", "bin/tool").startswith("100755")


def test_links_inside_the_sdist_are_kept(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    link = _member("ironic_python_agent-10.2.0/pkg/alias.py", tarfile.SYMTYPE, "__init__.py")
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0", extra=[link]))
    ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert (plan.directory / "pkg" / "alias.py").read_text() == "VALUE = 42\n"


def test_a_second_ensure_reuses_the_cached_repo_without_the_network(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0"))
    first = ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    second = ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert len(pypi.downloads) == 1 and len(pypi.json_urls) == 1
    assert not second.made and second.commit == first.commit and second.sha256 == first.sha256


def test_the_same_sdist_gives_the_same_commit_on_another_host(tmp_path):
    blob = sdist("ironic-python-agent", "10.2.0")
    commits = set()
    for host in ("a", "b"):
        pypi = FakePyPI(blob)
        plan = ipa_plan(tmp_path / host)
        commits.add(
            ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch).commit
        )
    assert len(commits) == 1


def test_a_clone_of_the_file_url_at_the_tag_has_the_version(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0"))
    ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    clone = tmp_path / "clone"
    assert Runner().capture(["git", "clone", "-q", plan.url, str(clone)]).ok  # as DIB clones it
    git(clone, "fetch", "-q", plan.url, f"{plan.tag}:fetch_{plan.tag}")
    git(clone, "reset", "-q", "--hard", "FETCH_HEAD")
    assert git(clone, "describe", "--tags") == "10.2.0"


def test_the_generated_requirements_repo_holds_upper_constraints(tmp_path):
    plan = plan_repos(PINS, tmp_path / "cache")[-1]
    repo = ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pytest.fail, fetch=pytest.fail)
    assert repo.made
    assert (plan.directory / "upper-constraints.txt").read_text() == "glean===1.24.0\n"
    assert git(plan.directory, "describe", "--tags") == plan.tag


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("ironic_python_agent-10.2.0/../evil"), "'..'"),
        (_member("/etc/evil"), "absolute"),
        (_member("ironic_python_agent-10.2.0/link", tarfile.SYMTYPE, "../../../etc/passwd"), "outside"),
        (_member("ironic_python_agent-10.2.0/abs", tarfile.SYMTYPE, "/etc/passwd"), "outside"),
        (_member("ironic_python_agent-10.2.0/up", tarfile.SYMTYPE, "../sibling"), "outside"),
        (_member("ironic_python_agent-10.2.0/hard", tarfile.LNKTYPE, "/etc/passwd"), "outside"),
        (_member("ironic_python_agent-10.2.0/.git/config"), ".git"),
        (_member("ironic_python_agent-10.2.0/dev", tarfile.CHRTYPE), "not a file"),
        (_member("other-top/file"), "one top directory"),
    ],
)
def test_an_unsafe_sdist_is_refused_and_nothing_is_left_in_the_cache(tmp_path, member, why):
    cache = tmp_path / "cache"
    plan = ipa_plan(cache)
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0", extra=[member]))
    with pytest.raises(InvalidInput, match=why):
        ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert not plan.directory.exists()
    assert left_in_store(cache) == []
    assert not (tmp_path / "etc").exists()


def test_an_sdist_whose_sha256_is_not_pypis_is_refused(tmp_path):
    cache = tmp_path / "cache"
    plan = ipa_plan(cache)
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0"), sha256="0" * 64)
    with pytest.raises(InvalidInput, match="sha256 mismatch"):
        ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert left_in_store(cache) == []


def test_an_sdist_of_another_release_is_refused(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    pypi = FakePyPI(sdist("ironic-python-agent", "9.0.0"))
    with pytest.raises(InvalidInput, match=re.escape("PKG-INFO says ironic-python-agent 9.0.0")):
        ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert left_in_store(tmp_path / "cache") == []


def test_a_dry_run_makes_nothing_and_reaches_no_network(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    repo = ensure_repo(
        plan, Runner(dry_run=True), tmp_path / "log", fetch_json=pytest.fail, fetch=pytest.fail
    )
    assert not repo.made and not (tmp_path / "cache").exists()


def test_a_release_pypi_does_not_have_is_refused(tmp_path):
    plan = ipa_plan(tmp_path / "cache")
    pypi = FakePyPI(sdist("ironic-python-agent", "10.2.0"), version="10.1.0")
    with pytest.raises(InvalidInput, match=re.escape("has no release 10.2.0")):
        ensure_repo(plan, Runner(), tmp_path / "log", fetch_json=pypi.fetch_json, fetch=pypi.fetch)
    assert pypi.downloads == [] and left_in_store(tmp_path / "cache") == []


def test_the_newest_release_comes_from_the_projects_document():
    pypi = FakePyPI(b"", version="11.0.0")
    assert latest_version("Ironic_Python_Agent", fetch_json=pypi.fetch_json) == "11.0.0"
    assert pypi.json_urls == ["https://pypi.org/pypi/ironic-python-agent/json"]
