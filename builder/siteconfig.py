"""site.yaml: where Kiln publishes and builds. Every publisher is the embedded local site by default.

```yaml
local:                       # the embedded site (kiln site up); ports are on 127.0.0.1
  state_dir: .kiln/site
glance:
  cloud: mycloud             # a clouds.yaml cloud (or $OS_CLOUD); absent: the local Glance
  method: glance-direct      # or upload
registry:
  url: registry.example.com:5000   # absent: the local registry
  docker_config: ~/.docker/config.json
repo:
  backend: s3                # local | path | rsync | s3
  s3: {bucket: kiln-repo, endpoint_url: https://s3.example.com}
build_hosts:
  ppc64le: {mode: emulated}  # native | emulated | ssh (+ host)
extra_ca_certificates: [/usr/local/share/ca-certificates/*.crt]
mirrors:
  debian: http://deb.debian.org/debian
rpm_repo_credentials:        # logins for RPM repos and SRPM servers Kiln reads (never in a recipe)
  - https://user:password@vendor.example.com/el/9/   # lent to every URL below it (same origin)
ipa_http: {root: /var/lib/ironic/httpboot, url: http://bifrost:8080}   # absent: <repo tree>/ipa
ipa: {upstream_git: false}   # true: IPA sources cloned from opendev.org, not local repos from PyPI
candidates:                  # kiln build --publish --candidate 42 (merge requests): never production names
  image_suffix: "-mr{id}"    # Glance image names and registry tags
  repo_suffix: "-mr{id}"     # RPM repository names
```
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .arch import Arch
from .errors import EnvironmentProblem, InvalidInput, Problem
from .recipe import URL_USERINFO, ArchName, HttpUrl, StrictModel
from .validation import problems_from_validation
from .yamlsource import LocatedDoc, load_file

Port = Annotated[int, Field(ge=1024, le=65535)]


class LocalPorts(StrictModel):
    glance: Port = 19292
    registry: Port = 15000
    repo: Port = 18080
    s3: Port = 18081
    swift_account: Port = 16012
    swift_container: Port = 16011
    swift_object: Port = 16010
    memcached: Port = 11311
    keystone: Port = 15357


Component = Literal["keystone", "glance", "registry", "repo", "s3"]


class LocalSiteSettings(StrictModel):
    state_dir: str = Field(".kiln/site", description="Relative paths are relative to the workspace root.")
    ports: LocalPorts = Field(default_factory=LocalPorts)
    components: list[Component] = Field(
        default_factory=lambda: ["keystone", "glance", "registry", "repo", "s3"],
        description="What `kiln site up` starts. Without keystone, Glance runs without authentication "
        "(kiln site up --no-auth does the same for one site).",
    )


class GlanceSite(StrictModel):
    cloud: str | None = Field(None, description="clouds.yaml cloud name; default $OS_CLOUD, else local.")
    method: Literal["upload", "glance-direct"] = "upload"
    verify_timeout_s: int = Field(600, ge=10)


class RegistrySite(StrictModel):
    url: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$")] | None = (
        None
    )
    docker_config: str | None = Field(None, description="config.json with registry credentials.")
    insecure: bool = Field(False, description="Plain HTTP (always true for 127.0.0.1).")


class S3Target(StrictModel):
    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")]
    prefix: str = ""
    endpoint_url: HttpUrl | None = Field(None, description="Absent: the local site's Swift S3.")
    region: str = "us-east-1"
    public_url: HttpUrl | None = Field(None, description="Where clients read the mirror from.")


class SigningKeyRef(StrictModel):
    gnupghome: str
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{16,40}$")]


class RepoSite(StrictModel):
    backend: Literal["local", "path", "rsync", "s3"] = "local"
    path: str | None = None
    rsync_target: str | None = None
    s3: S3Target | None = None
    base_url: HttpUrl | None = Field(None, description="URL clients use; local: the site's HTTP server.")
    signing_key: SigningKeyRef | None = Field(None, description="Absent: the site's generated key.")

    @model_validator(mode="after")
    def _backend_settings(self) -> RepoSite:
        needed = {"path": self.path, "rsync": self.rsync_target, "s3": self.s3}
        if self.backend in needed and needed[self.backend] is None:
            key = {"path": "path", "rsync": "rsync_target", "s3": "s3"}[self.backend]
            raise ValueError(f"backend {self.backend} needs {key}")
        return self


class IpaHttpSite(StrictModel):
    """Where IPA ramdisks are published for Bifrost (``publish.http`` in an ipa-ramdisk recipe)."""

    root: str | None = Field(None, description="A directory; absent: <local repo tree>/ipa (served).")
    url: HttpUrl | None = Field(None, description="Where clients read root; absent: <local repo URL>/ipa.")


class IpaSite(StrictModel):
    upstream_git: bool = Field(
        False,
        description="The build host reaches opendev.org: the IPA elements clone upstream (at the "
        "recipe's pinned tags) instead of Kiln's local git repos made from PyPI sdists.",
    )


# Packages a DIB guest or IPA base tree may hold when a recipe asks for them (its own list is
# intersected with this one): common to most images, slow to install, rarely the one a change adds.
DEFAULT_BASE_PACKAGES = [
    "cloud-init",
    "cloud-guest-utils",
    "ifupdown",
    "isc-dhcp-client",
    "openssh-server",
    "qemu-guest-agent",
    "sudo",
]


class BaseCacheSite(StrictModel):
    enabled: bool = Field(
        True,
        description="DIB builds (guest images, IPA) start from a cached base tree: the distro "
        "bootstrap plus the shared packages, keyed by the digest of its inputs.",
    )
    packages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BASE_PACKAGES),
        description="Of a recipe's packages, those that go into the base tree (the distro's own "
        "packages, e.g. the kernel, always do).",
    )
    max_gb: float = Field(20.0, gt=0, description="Base trees kept, least recently used evicted first.")
    store: str | None = Field(None, description="Where base trees are kept. Absent: ~/.cache/kiln/dib-base.")


class DibSite(StrictModel):
    base_cache: BaseCacheSite = Field(default_factory=BaseCacheSite)
    qcow2_compression: Literal["zstd", "zlib", "none"] = Field(
        "zstd",
        description="zstd: ~6x faster than zlib and smaller here; readable by QEMU >= 5.1. zlib: for "
        "hypervisors with an older QEMU. none: the largest file, the fastest build.",
    )


def _renamed_mode(value: Any) -> Any:
    if value == "ssh":
        raise ValueError(
            "mode ssh is now other-host: Kiln never dispatched builds over ssh; it refuses the build "
            "here and names the host (and the GitLab runner tag) where it belongs"
        )
    return value


class BuildHost(StrictModel):
    """Where builds for one foreign arch run: ``emulated`` here under qemu-user, or elsewhere —
    ``native`` (on any host of that arch) or ``other-host`` (on the host named): Kiln does not
    dispatch there; it refuses the build here, naming where it belongs."""

    mode: Annotated[Literal["native", "emulated", "other-host"], BeforeValidator(_renamed_mode)] = "emulated"
    host: str | None = Field(None, description="other-host: the host whose runner builds this arch.")

    @model_validator(mode="after")
    def _other_host_needs_host(self) -> BuildHost:
        if self.mode == "other-host" and not self.host:
            raise ValueError("mode other-host needs host (the host that builds this arch)")
        return self


def _one_entry_per_arch(value: Any) -> Any:
    """Two spellings of one arch (ppc64el and ppc64le) would silently collapse into one key."""
    if isinstance(value, dict):
        seen: dict[Arch, str] = {}
        for key in value:
            try:
                arch = Arch.parse(str(key))
            except ValueError:
                continue  # the key validator reports unknown arches
            if arch in seen:
                raise ValueError(f"{key!r} and {seen[arch]!r} name the same architecture ({arch.value})")
            seen[arch] = str(key)
    return value


class Mirrors(StrictModel):
    debian: HttpUrl | None = Field(None, description="Absent: the mirror apt on this host uses.")
    debian_security: HttpUrl | None = None
    security_suite: bool = Field(True, description="False: leave the security suite out (broken mirrors).")
    without_security: list[ArchName] = Field(
        default_factory=list,
        description="Arches whose security suite is left out (a mirror inconsistent for one arch).",
    )

    def include_security(self, arch: Arch) -> bool:
        return self.security_suite and arch not in self.without_security


RunnerTagKey = Annotated[str, StringConstraints(pattern=r"^(x86_64|ppc64le|aarch64|gpu)$")]


class Downstream(StrictModel):
    project: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")]
    branch: str = "main"


class GitLabSite(StrictModel):
    """How ``kiln pipeline`` writes GitLab child pipelines."""

    runner_tags: dict[RunnerTagKey, list[str]] = Field(
        default_factory=dict,
        description="Runner tags per arch (and 'gpu' for CUDA builds); an arch absent here gets "
        "[its runner tag] (builder/arch.py), gpu gets [gpu].",
    )
    retry: int = Field(
        2, ge=0, le=2, description="Retries on runner/system failures (never on a failed build)."
    )
    artifacts_expire_in: str = "1 week"
    downstream: Downstream | None = Field(None, description="A project to trigger after publishing.")
    before_script: list[str] = Field(
        default_factory=list,
        description="Run before every generated job (credentials from CI variables, PATH); "
        "never echo secrets.",
    )

    def tags(self, arch: Arch, gpu: bool = False) -> list[str]:
        tags = list(self.runner_tags.get(arch.value, [arch.runner_tag]))
        if gpu:
            tags += [t for t in self.runner_tags.get("gpu", ["gpu"]) if t not in tags]
        return tags


def _with_credentials(value: str) -> str:
    if not URL_USERINFO.match(value):
        raise ValueError("carries no user:password@: an entry here only lends its login to the URLs below it")
    return value


# A repo URL with its login (https://user:password@host/path/); the login is lent to every URL of the
# same scheme, host and port below that path (builder/rpm/credentials.py).
UrlWithCredentials = Annotated[HttpUrl, AfterValidator(_with_credentials)]


CANDIDATE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
ImageSuffix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]*\{id\}[A-Za-z0-9_.-]*$")]
RepoSuffix = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]*\{id\}[a-z0-9-]*$")]


class CandidateSite(StrictModel):
    """How a candidate (``kiln build --publish --candidate ID``, a merge request's build) is named:
    never the production names, so a candidate neither rotates nor replaces what users boot."""

    image_suffix: ImageSuffix = Field(
        "-mr{id}", description="Appended to Glance image names and registry tags; {id} is the candidate."
    )
    repo_suffix: RepoSuffix = Field("-mr{id}", description="Appended to RPM repository names.")

    def suffixes(self, candidate: str) -> tuple[str, str]:
        """(image suffix, repo suffix) for ``candidate``; InvalidInput for an id unfit for a name."""
        if not CANDIDATE_ID.match(candidate):
            raise InvalidInput(
                Problem(
                    f"--candidate {candidate!r}: a candidate id is 1-40 of a-z, 0-9 and '-' "
                    "(a merge request's IID, for example)"
                )
            )
        return self.image_suffix.replace("{id}", candidate), self.repo_suffix.replace("{id}", candidate)


class SiteConfig(StrictModel):
    local: LocalSiteSettings = Field(default_factory=LocalSiteSettings)
    glance: GlanceSite = Field(default_factory=GlanceSite)
    registry: RegistrySite = Field(default_factory=RegistrySite)
    repo: RepoSite = Field(default_factory=RepoSite)
    build_hosts: Annotated[dict[ArchName, BuildHost], BeforeValidator(_one_entry_per_arch)] = Field(
        default_factory=dict
    )
    extra_ca_certificates: list[str] = Field(default_factory=list)
    mirrors: Mirrors = Field(default_factory=Mirrors)
    # Named like a secret (masking.SECRET_KEY), so its values are masked in every output and in
    # site.yaml's own error messages.
    rpm_repo_credentials: list[UrlWithCredentials] = Field(
        default_factory=list,
        description="Logins for the RPM repos and SRPM servers Kiln reads (kiln rpm missing, "
        "build.source url/repo, the published repo): https://user:password@host/path/, lent to every "
        "URL of the same scheme, host and port below that path (the longest path wins).",
    )
    publish_after_build: bool = Field(False, description="kiln build publishes unless --no-publish.")
    gitlab: GitLabSite = Field(default_factory=GitLabSite)
    candidates: CandidateSite = Field(default_factory=CandidateSite)
    ipa_http: IpaHttpSite = Field(default_factory=IpaHttpSite)
    ipa: IpaSite = Field(default_factory=IpaSite)
    dib: DibSite = Field(default_factory=DibSite)

    def placement(self, arch: Arch, host: Arch) -> str:
        """How this host builds for ``arch``: "native" or "emulated" (qemu-user via binfmt).

        Raises EnvironmentProblem where ``build_hosts`` says builds for ``arch`` belong elsewhere:
        ``native`` (on a host of that arch only) or ``other-host`` (on the host named, e.g. as the
        GitLab child pipeline's job for that arch's runner tag; Kiln dispatches nothing there)."""
        if arch is host:
            return "native"
        setting = self.build_hosts.get(arch, BuildHost())
        if setting.mode == "emulated":
            return "emulated"
        where = f"host {setting.host}" if setting.mode == "other-host" else f"a {arch.value} host"
        raise EnvironmentProblem(
            f"site.yaml build_hosts.{arch.value}: mode {setting.mode}, and this host is {host.value}: "
            f"run this build on {where} (GitLab runner tag {arch.runner_tag}), or set mode: emulated "
            "to build it here under qemu-user"
        )

    def login_urls(self) -> list[str]:
        """Every URL site.yaml holds that may carry a login for Kiln's HTTP reads (the repo
        credentials, the mirrors, the published repo and IPA tree)."""
        candidates = [
            *self.rpm_repo_credentials,
            self.mirrors.debian,
            self.mirrors.debian_security,
            self.repo.base_url,
            self.repo.s3.public_url if self.repo.s3 else None,
            self.ipa_http.url,
        ]
        return [str(url) for url in candidates if url]

    def state_dir(self, root: Path) -> Path:
        path = Path(os.path.expanduser(self.local.state_dir))
        return path if path.is_absolute() else root / path


def load_site(path: Path | None, root: Path) -> SiteConfig:
    """site.yaml from ``path``, ``$KILN_SITE`` or ``ROOT/site.yaml``; defaults when none exists."""
    chosen = path or (Path(os.environ["KILN_SITE"]) if os.environ.get("KILN_SITE") else root / "site.yaml")
    if path is None and not os.path.exists(chosen):
        return SiteConfig()
    try:
        doc = load_file(chosen)
    except InvalidInput as exc:  # a YAML error may quote the text (a tag on a URL with a password)
        raise InvalidInput([_masked(p) for p in exc.problems]) from None
    if doc.data in (None, {}):
        return SiteConfig()
    if not isinstance(doc.data, dict):
        raise InvalidInput(doc.problem((), "site.yaml must be a mapping"))
    return _validate(doc)


def _validate(doc: LocatedDoc) -> SiteConfig:
    try:
        return SiteConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise InvalidInput([_masked(p) for p in problems_from_validation(exc, doc, SiteConfig)]) from None


# --- secrets in messages ------------------------------------------------------------------------------

MASK = "***"
# Credentials in a URL ("https://user:pass@host", "user:pass@host", "token@host"): the userinfo part.
# Greedy up to the last "@" before the host, as URL parsers read a password with an "@" in it.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#'\"]+@")
_BARE_USERINFO = re.compile(r"(?<![\w.:/-])[\w.%~!$&*+,;=-]+:[^\s/?#'\"]*@(?=[\w.-])")
# Keys whose values are secrets whatever they look like.
SECRET_KEY = re.compile(r"(?i)(pass(word|wd|phrase)?|secret|token|credential|api[_-]?key|private[_-]?key)")


def mask_secrets(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return _BARE_USERINFO.sub(MASK + "@", text)


def _masked(problem: Problem) -> Problem:
    """A site.yaml problem safe to print: URL credentials masked, and the value of a key named like
    a secret (password, token, ...) never shown, however the message quotes it."""
    message = mask_secrets(problem.message)
    if any(isinstance(part, str) and SECRET_KEY.search(part) for part in problem.key_path):
        message = re.sub(r"\(got .*\)", f"(got {MASK})", message, flags=re.S)
        message = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", MASK, message)
    return problem if message == problem.message else replace(problem, message=message)
