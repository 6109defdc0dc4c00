"""Local git repositories made from PyPI sdists, for the DIB elements that git-clone their sources.

An IPA ramdisk build clones its Python sources with DIB's ``source-repositories`` element. Each
``source-repository-<element>`` file names a repository as ``<name> git <dest> <url>``, and DIB
overrides the URL and the ref with ``DIB_REPOLOCATION_<name>`` / ``DIB_REPOREF_<name>`` (``<name>``
with every character outside ``[A-Za-z0-9]`` turned into ``_``: diskimage-builder
``elements/source-repositories/extra-data.d/98-source-repositories``). What is cloned:

- ``ironic-python-agent git /tmp/ironic-python-agent https://opendev.org/openstack/ironic-python-agent``
  (ironic-python-agent-builder ``dib/ironic-python-agent-ramdisk/source-repository-ironic-python-agent``):
  ``DIB_REPOLOCATION_ironic_python_agent``, ``DIB_REPOREF_ironic_python_agent``.
- ``requirements git /tmp/requirements https://opendev.org/openstack/requirements``
  (``dib/ironic-python-agent-ramdisk/source-repository-requirements``): ``DIB_REPOLOCATION_requirements``,
  ``DIB_REPOREF_requirements``. Needed at build time: ``install.d/.../60-ironic-python-agent-ramdisk-install``
  runs ``pip install -c /tmp/requirements/upper-constraints.txt /tmp/ironic-python-agent``.
- ``glean git /tmp/glean.git https://opendev.org/opendev/glean`` (diskimage-builder
  ``elements/simple-init/source-repository-simple-init``): ``DIB_REPOLOCATION_glean``, ``DIB_REPOREF_glean``.
  DIB clones it whenever simple-init is in the build, but installs glean from PyPI unless
  ``DIB_INSTALLTYPE_simple_init=repo``; Kiln sets that, so the pinned glean is the one installed.
- ``ironic-lib git /tmp/ironic-lib https://opendev.org/openstack/ironic-lib``: older
  ironic-python-agent-builder releases only (``source-repository-ironic-lib``); pinnable for them.

Choices:

- A repo is the sdist's top directory, committed once with a fixed author and date (the same sdist
  gives the same commit id on every host) and tagged with the version, lightweight: pbr reads the
  version from the tag (and from the sdist's PKG-INFO, which the tree keeps). The sdist's URL and
  sha256 come from PyPI's JSON for the project (``<index>/<project>/json``, the release's entry under
  ``releases``: this host's PyPI proxy answers the per-release ``<project>/<version>/json`` with 404
  and gives file URLs relative to the document); a mismatch is refused, and so is a PKG-INFO naming
  another project or version.
- ``openstack/requirements`` is not on PyPI (``openstack-requirements`` there is old and conflicts:
  FIELD-NOTES), so Kiln generates a repo holding only ``upper-constraints.txt``: one ``name===version``
  line per pinned project other than ironic-python-agent (the project being installed from the tree
  is not constrained against itself). IPA's other dependencies are left unpinned, which FIELD-NOTES
  found to work. It is made only when ironic-python-agent is pinned (the IPA element is what reads it).
- Repos live under ``<cache>/ipa-git/<project>-<version>-<key>/`` (the key covers what went into the
  repo, so a change in how Kiln makes them is a new directory), made in a temporary directory beside
  it and renamed in place under a lock, as ``host/rootfs.py`` does: a cached repo is reused without
  the network. They belong to the user that made them; DIB must run as that user (git refuses to
  clone a repo owned by someone else: "dubious ownership").
- A site that reaches the upstream git host needs none of this (``upstream_git=True``): no repos, no
  ``DIB_REPOLOCATION_*``; :func:`upstream_refs` still pins the releases by their upstream tags.

:func:`plan_repos` is pure; :func:`ensure_repo` does the I/O (HTTP, tar, git through the Runner).
"""

from __future__ import annotations

import email.parser
import fcntl
import hashlib
import json
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from .errors import CommandFailed, EnvironmentProblem, InvalidInput, Problem

if TYPE_CHECKING:
    from .host.run import Runner

PYPI_JSON = "https://pypi.org/pypi"
STORE = "ipa-git"
REPO_FORMAT = 1  # bump when the way a repo is made changes: a new key, a new directory
MARKER = "kiln-source.json"  # in the repo's .git/: written last, before the rename
BRANCH = "master"  # DIB's default REPOREF for git repositories
AUTHOR_NAME = "Kiln"
AUTHOR_EMAIL = "kiln@localhost"
COMMIT_DATE = "2000-01-01T00:00:00+0000"
GIT_TIMEOUT_S = 300.0
HTTP_TIMEOUT_S = 120.0
MAX_SDIST_BYTES = 256 << 20
MAX_UNPACKED_BYTES = 1 << 30
MAX_MEMBERS = 100_000
REQUIREMENTS = "requirements"
IPA = "ironic-python-agent"

# PyPI project (normalized) -> the repository name in DIB's source-repository files.
DIB_REPOS = {
    "ironic-python-agent": "ironic-python-agent",
    "glean": "glean",
    "ironic-lib": "ironic-lib",
}
# What else a pinned project's repo needs DIB to do with it.
EXTRA_ENV = {"glean": {"DIB_INSTALLTYPE_simple_init": "repo"}}

_PROJECT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")


@dataclass(frozen=True)
class SourcePin:
    project: str  # the PyPI project
    version: str  # its release: also the git tag


@dataclass(frozen=True)
class RepoPlan:
    repo: str  # DIB's repository name
    project: str  # the PyPI project, or "requirements" for the generated constraints repo
    version: str
    tag: str
    directory: Path
    sdist_json: str | None  # PyPI's JSON for the project (the release's sdist URL, sha256); None: generated
    files: tuple[tuple[str, str], ...]  # the generated repo's files (path, text)
    env: tuple[tuple[str, str], ...]

    @property
    def url(self) -> str:
        return self.directory.as_uri()


@dataclass(frozen=True)
class LocalRepo:
    plan: RepoPlan
    commit: str  # "" under a dry run
    sha256: str  # the sdist's; "" for a generated repo or a dry run
    made: bool  # False: found in the cache


def dib_var(repo: str) -> str:
    """The suffix DIB gives a repository's variables: ``ironic-python-agent`` -> ``ironic_python_agent``."""
    return re.sub(r"[^A-Za-z0-9]", "_", repo)


def normalize(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _checked(pins: Iterable[SourcePin]) -> dict[str, SourcePin]:
    by_project: dict[str, SourcePin] = {}
    for pin in pins:
        if not _PROJECT.match(pin.project):
            raise InvalidInput(Problem(f"{pin.project!r}: not a PyPI project name"))
        if not _VERSION.match(pin.version):
            raise InvalidInput(Problem(f"{pin.project} {pin.version!r}: not a release version (e.g. 10.2.0)"))
        name = normalize(pin.project)
        if name not in DIB_REPOS:
            known = ", ".join(sorted(DIB_REPOS))
            raise InvalidInput(
                Problem(f"{pin.project}: no DIB element clones it; Kiln makes repos for {known}")
            )
        if name in by_project and by_project[name].version != pin.version:
            raise InvalidInput(
                Problem(f"{name}: pinned twice ({by_project[name].version} and {pin.version})")
            )
        by_project[name] = SourcePin(name, pin.version)
    return by_project


def _key(content: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps({"format": REPO_FORMAT, **content}, sort_keys=True).encode()
    ).hexdigest()[:16]


def _env(repo: str, url: str, ref: str, extra: Mapping[str, str] = {}) -> tuple[tuple[str, str], ...]:
    var = dib_var(repo)
    return tuple(sorted({f"DIB_REPOLOCATION_{var}": url, f"DIB_REPOREF_{var}": ref, **extra}.items()))


def plan_repos(
    pins: Iterable[SourcePin], cache_dir: Path, *, upstream_git: bool = False, index_url: str = PYPI_JSON
) -> list[RepoPlan]:
    """The local repos the pinned projects need (pure): paths, tags and DIB's variables.

    ``cache_dir`` is Kiln's cache (``~/.cache/kiln``) and must be absolute; ``upstream_git`` (the
    site reaches opendev.org) plans nothing. Ordered by repository name, the generated
    requirements repo last."""
    checked = _checked(pins)
    if upstream_git:
        return []
    if not cache_dir.is_absolute():
        raise ValueError(f"cache_dir must be absolute: {cache_dir}")
    store = cache_dir / STORE
    plans = []
    for name, pin in sorted(checked.items(), key=lambda item: DIB_REPOS[item[0]]):
        repo = DIB_REPOS[name]
        directory = (
            store / f"{name}-{pin.version}-{_key({'repo': repo, 'project': name, 'version': pin.version})}"
        )
        plans.append(
            RepoPlan(
                repo=repo,
                project=name,
                version=pin.version,
                tag=pin.version,
                directory=directory,
                sdist_json=f"{index_url.rstrip('/')}/{name}/json",
                files=(),
                env=_env(repo, directory.as_uri(), pin.version, EXTRA_ENV.get(name, {})),
            )
        )
    if IPA in checked:
        plans.append(_requirements_plan(checked, store))
    return plans


def _requirements_plan(checked: Mapping[str, SourcePin], store: Path) -> RepoPlan:
    lines = [f"{name}==={pin.version}" for name, pin in sorted(checked.items()) if name != IPA]
    files = (("upper-constraints.txt", "".join(line + "\n" for line in lines)),)
    key = _key({"repo": REQUIREMENTS, "files": files})
    tag = f"kiln-{key}"
    directory = store / f"{REQUIREMENTS}-constraints-{key}"
    return RepoPlan(
        REQUIREMENTS,
        REQUIREMENTS,
        tag,
        tag,
        directory,
        None,
        files,
        _env(REQUIREMENTS, directory.as_uri(), tag),
    )


def environment(plans: Iterable[RepoPlan]) -> dict[str, str]:
    """Every planned repo's variables for DIB, in one mapping."""
    return {key: value for plan in plans for key, value in plan.env}


def upstream_refs(pins: Iterable[SourcePin]) -> dict[str, str]:
    """For a site that clones from the upstream git host: the pinned releases as DIB refs (tags)."""
    return {
        f"DIB_REPOREF_{dib_var(DIB_REPOS[name])}": pin.version for name, pin in sorted(_checked(pins).items())
    }


# --- I/O -----------------------------------------------------------------------------------------


def get_json(url: str) -> Any:
    """``url``'s JSON document; a 404 is the pin's fault (InvalidInput), anything else the network's."""
    import requests  # on first use, not at start-up: a heavy import

    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as exc:
        raise EnvironmentProblem(f"{url}: cannot reach it ({exc})") from exc
    if response.status_code == 404:
        raise InvalidInput(Problem(f"{url}: not found (is the release on PyPI?)"))
    if not response.ok:
        raise EnvironmentProblem(f"{url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise EnvironmentProblem(f"{url}: not JSON") from exc


def latest_version(
    project: str, *, fetch_json: Callable[[str], Any] = get_json, index_url: str = PYPI_JSON
) -> str:
    """The newest release PyPI names for ``project`` (for a recipe that pins none)."""
    if not _PROJECT.match(project):
        raise InvalidInput(Problem(f"{project!r}: not a PyPI project name"))
    url = f"{index_url.rstrip('/')}/{normalize(project)}/json"
    document = fetch_json(url)
    version = document.get("info", {}).get("version") if isinstance(document, dict) else None
    if not isinstance(version, str) or not _VERSION.match(version):
        raise EnvironmentProblem(f"{url}: no release version in info.version")
    return version


def download(url: str, into: Path) -> None:
    """``url`` saved as ``into`` (at most MAX_SDIST_BYTES)."""
    import requests  # on first use, not at start-up: a heavy import

    written = 0
    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT_S) as response:
            response.raise_for_status()
            with into.open("wb") as handle:
                for chunk in response.iter_content(1 << 20):
                    written += len(chunk)
                    if written > MAX_SDIST_BYTES:
                        raise InvalidInput(Problem(f"{url}: larger than {MAX_SDIST_BYTES} bytes"))
                    handle.write(chunk)
    except requests.RequestException as exc:
        raise EnvironmentProblem(f"{url}: download failed ({exc})") from exc


def is_ready(plan: RepoPlan) -> bool:
    return (plan.directory / ".git" / MARKER).is_file()


def ensure_repo(
    plan: RepoPlan,
    runner: Runner,
    log: Path,
    *,
    fetch_json: Callable[[str], Any] = get_json,
    fetch: Callable[[str, Path], None] = download,
) -> LocalRepo:
    """The cached repo for ``plan``, made once (sdist -> git, tagged); a cached one is reused
    without the network. A refused sdist leaves nothing in the cache. A dry-run runner makes nothing."""
    if runner.dry_run:
        return LocalRepo(plan, "", "", made=False)
    final = plan.directory
    if is_ready(plan):
        return _recorded(plan, made=False)
    final.parent.mkdir(parents=True, exist_ok=True)
    with final.with_name(final.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build making the same repo: wait for it
        if is_ready(plan):
            return _recorded(plan, made=False)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            if plan.sdist_json is None:
                tree, source = work / "tree", {}
                for name, text in plan.files:
                    (tree / name).parent.mkdir(parents=True, exist_ok=True)
                    (tree / name).write_text(text, encoding="utf-8")
            else:
                tree, source = _fetch_and_unpack(plan, work, fetch_json, fetch)
            commit = _commit_and_tag(tree, plan, runner, log)
            record = {
                "repo": plan.repo,
                "project": plan.project,
                "version": plan.version,
                "tag": plan.tag,
                "commit": commit,
                **source,
            }
            (tree / ".git" / MARKER).write_text(json.dumps(record, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)  # left by hand, never by Kiln (no marker)
            tree.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _recorded(plan, made=True)


def _recorded(plan: RepoPlan, *, made: bool) -> LocalRepo:
    record = json.loads((plan.directory / ".git" / MARKER).read_text())
    return LocalRepo(plan, record["commit"], record.get("sha256", ""), made=made)


def _sdist_entry(plan: RepoPlan, document: Any) -> tuple[str, str]:
    where = str(plan.sdist_json)
    # The project's document (``releases``: every version's files); a release's own (``urls``) also does.
    releases = document.get("releases") if isinstance(document, dict) else None
    if isinstance(releases, dict):
        files = releases.get(plan.version)
    elif isinstance(document, dict) and isinstance(document.get("urls"), list):
        files = document["urls"]
    else:
        raise EnvironmentProblem(f"{where}: not PyPI's JSON for a project (no 'releases')")
    if not isinstance(files, list):
        raise InvalidInput(Problem(f"{where}: {plan.project} has no release {plan.version}"))
    sdists = [
        f
        for f in files
        if isinstance(f, dict)
        and f.get("packagetype") == "sdist"
        and str(f.get("filename", "")).endswith(".tar.gz")
    ]
    if len(sdists) != 1:
        raise InvalidInput(
            Problem(f"{plan.project} {plan.version}: PyPI has {len(sdists)} .tar.gz sdists, need one")
        )
    url, sha256 = sdists[0].get("url"), (sdists[0].get("digests") or {}).get("sha256")
    if isinstance(url, str):
        url = urljoin(where, url)  # mirrors (and this host's) give paths relative to the document
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http"):
        raise InvalidInput(Problem(f"{where}: the sdist's URL {url!r} is not HTTP(S)"))
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InvalidInput(Problem(f"{where}: no sha256 for the sdist"))
    return url, sha256


def _fetch_and_unpack(
    plan: RepoPlan, work: Path, fetch_json: Callable[[str], Any], fetch: Callable[[str, Path], None]
) -> tuple[Path, dict[str, str]]:
    assert plan.sdist_json is not None
    url, expected = _sdist_entry(plan, fetch_json(plan.sdist_json))
    archive = work / "sdist.tar.gz"
    fetch(url, archive)
    digest = hashlib.sha256()
    with archive.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != expected:
        raise InvalidInput(
            Problem(f"{url}: sha256 mismatch: PyPI says {expected}, downloaded {got}; no repo made")
        )
    tree = unpack_sdist(archive, work / "unpacked", url)
    _check_pkg_info(tree, plan, url)
    return tree, {"sdist": url, "sha256": expected}


def unpack_sdist(archive: Path, into: Path, name: str) -> Path:
    """The sdist's one top directory, unpacked under ``into``; absolute paths, ``..``, links out of
    the tree, devices and ``.git`` are refused before anything is written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            top = _check_members(members, name)
            into.mkdir(parents=True)
            extract_filter = getattr(tarfile, "data_filter", None)
            if extract_filter is not None:
                tar.extractall(into, members=members, filter=extract_filter)
            else:  # pragma: no cover - Python without PEP 706; the checks above still hold
                tar.extractall(into, members=members)
    except getattr(tarfile, "FilterError", ()) as exc:
        raise InvalidInput(Problem(f"{name}: unsafe member refused: {exc}")) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(Problem(f"{name}: not a readable tar archive ({exc})")) from exc
    return into / top


def _check_members(members: list[tarfile.TarInfo], name: str) -> str:
    def refuse(member: tarfile.TarInfo, why: str) -> InvalidInput:
        return InvalidInput(Problem(f"{name}: member {member.name!r} refused: {why}"))

    if len(members) > MAX_MEMBERS:
        raise InvalidInput(Problem(f"{name}: more than {MAX_MEMBERS} members"))
    tops: set[str] = set()
    total = 0
    for member in members:
        path = member.name
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if path.startswith("/") or not parts:
            raise refuse(member, "an absolute or empty path")
        if ".." in parts:
            raise refuse(member, "a '..' component")
        if any(p.lower() == ".git" for p in parts):
            raise refuse(member, "a .git path")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise refuse(member, "not a file, directory or link")
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname("/".join(parts)), member.linkname))
            # inside the top directory: that directory becomes the repo
            if member.linkname.startswith("/") or target.split("/")[0] != parts[0]:
                raise refuse(member, f"a link pointing outside the sdist ({member.linkname})")
        if member.islnk() and (member.linkname.startswith("/") or ".." in member.linkname.split("/")):
            raise refuse(member, f"a hard link pointing outside the sdist ({member.linkname})")
        total += max(member.size, 0)
        tops.add(parts[0])
    if total > MAX_UNPACKED_BYTES:
        raise InvalidInput(Problem(f"{name}: unpacks to more than {MAX_UNPACKED_BYTES} bytes"))
    if len(tops) != 1:
        raise InvalidInput(Problem(f"{name}: an sdist has one top directory, this has {len(tops)}"))
    return tops.pop()


def _check_pkg_info(tree: Path, plan: RepoPlan, name: str) -> None:
    pkg_info = tree / "PKG-INFO"
    if not tree.is_dir() or not pkg_info.is_file():
        raise InvalidInput(Problem(f"{name}: no PKG-INFO at the top: not an sdist"))
    headers = email.parser.Parser().parsestr(
        pkg_info.read_text(encoding="utf-8", errors="replace"), headersonly=True
    )
    found = (normalize(headers.get("Name", "")), headers.get("Version", ""))
    if found != (plan.project, plan.version):
        raise InvalidInput(
            Problem(f"{name}: PKG-INFO says {found[0]} {found[1]}, expected {plan.project} {plan.version}")
        )


def _commit_and_tag(tree: Path, plan: RepoPlan, runner: Runner, log: Path) -> str:
    git = ["git", f"--git-dir={tree / '.git'}", f"--work-tree={tree}"]
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",  # no user hooks, signing or filters
        "GIT_INDEX_FILE": str(tree / ".git" / "index"),
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_AUTHOR_DATE": COMMIT_DATE,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_DATE": COMMIT_DATE,
    }
    message = (
        f"{plan.project} {plan.version}"
        + (" from its PyPI sdist" if plan.sdist_json else "")
        + " (made by Kiln)"
    )
    steps = (
        ["init", "-q", "-b", BRANCH],
        ["add", "--all", "--force", "--", "."],
        ["commit", "-q", "--no-verify", "--no-gpg-sign", "-m", message],
        ["tag", plan.tag],
    )
    for step in steps:
        runner.run([*git, *step], cwd=tree, env=env, timeout=GIT_TIMEOUT_S, log_path=log)
    head = runner.capture([*git, "rev-parse", "HEAD"], cwd=tree, env=env, log_path=log)
    if not head.ok:
        raise CommandFailed(f"git rev-parse HEAD in {tree}: {head.error or head.stderr.strip()}")
    return head.stdout.strip()
