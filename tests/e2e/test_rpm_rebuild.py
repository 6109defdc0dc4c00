"""SRPM rebuilds for real: a small C package with a patch and a %check, packaged and signed by the
test, rebuilt for ppc64le (under qemu-user) and x86_64 in Debian chroots, published to the local
site's signed repo, and installed from there by Debian's dnf with gpgcheck and repo_gpgcheck.

The ppc64el build root is bootstrapped once (~4.5 min under qemu-user, cached in ~/.cache/kiln);
warm, the module takes under a minute (the local site starts in ~15 s of it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.publishers.from_site import SitePublishers
from builder.rpm.buildroot import RootSpec
from builder.workspace import PACKAGE_ROOT
from tests.support.processes import stop_gpg_daemons_under
from tests.support.srpms import greet_patch, make_key, make_srpm, stop_agent

pytestmark = [pytest.mark.slow, pytest.mark.site]

KILN = [sys.executable, "-m", "builder"]
RECIPE = """\
name: {name}
kind: rpm-rebuild
arches: [{arches}]
build:
  source: {source}
  release: "9"
  release_suffix: .kiln1
  trusted_keys: [../files/upstream.asc]
  patches: [{patches}]
{extra}
publish:
  repo: {{repo: {repo}}}
"""


# The spec asks, when rpm expands it, who it runs as and which network interfaces it sees.
HOSTILE_SUMMARY = "uid %(id -u) ifaces %(grep -c : /proc/net/dev)"


def hostile_preamble(marker: Path) -> str:
    """Spec lines that leave a file at ``marker``-shell and -lua wherever rpm evaluates them (but not
    while the test itself makes the SRPM)."""
    return (
        f'%global kiln_shell %(test -n "$KILN_TEST_MAKING_SRPM" || touch {marker}-shell)\n'
        f'%{{lua: if not os.getenv("KILN_TEST_MAKING_SRPM") then io.open("{marker}-lua", "w"):close() end}}\n'
    )


class Workspace:
    def __init__(self, root: Path, site_file: Path):
        self.root, self.site_file = root, site_file
        self.files = root / "files"
        self.ledger = root / "ledger.sqlite"
        self.build_root = root / "build"
        # Where a hostile spec tries to leave a mark on the host (never inside the workspace).
        self.marker = Path(tempfile.gettempdir()) / f"kiln-marker-{secrets.token_hex(6)}"

    def marks(self) -> list[Path]:
        return sorted(self.marker.parent.glob(self.marker.name + "*"))

    def recipe(self, name: str, *, arches: str = "x86_64", source: str, patches: str = "", extra: str = "",
               repo: str = "kiln") -> None:  # fmt: skip
        (self.root / "recipes" / f"{name}.yaml").write_text(
            RECIPE.format(name=name, arches=arches, source=source, patches=patches, extra=extra, repo=repo)
        )

    def kiln(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KILN_BUILD_ROOT": str(self.build_root)}
        return subprocess.run(
            [*KILN, "--root", str(self.root), "--site", str(self.site_file),
             "--ledger", str(self.ledger), *args],
            capture_output=True, text=True, env=env, timeout=3600,
        )  # fmt: skip

    def build(self, *args: str) -> tuple[int, list[dict], str]:
        result = self.kiln("build", *args, "--publish", "--json")
        try:
            targets = json.loads(result.stdout)["targets"]
        except (ValueError, KeyError):
            targets = []
        return result.returncode, targets, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def ws(local_site, site_file, tmp_path_factory) -> Workspace:
    if shutil.which("debootstrap") is None or not Path("/proc/sys/fs/binfmt_misc/qemu-ppc64le").exists():
        pytest.skip("debootstrap or the ppc64le binfmt handler missing: run `make test`, which sets them up")
    root = tmp_path_factory.mktemp("rpm-e2e")
    shutil.copytree(PACKAGE_ROOT / "templates", root / "templates")
    (root / "recipes").mkdir()
    workspace = Workspace(root, site_file)
    workspace.files.mkdir()
    upstream = make_key(root / "keys", "Kiln Test Upstream")
    other = make_key(root / "keys", "Kiln Test Stranger")
    try:
        shutil.copy(upstream.public, workspace.files / "upstream.asc")
        made = root / "made"
        srpms = {
            "signed": make_srpm(made, key=upstream),
            "unsigned": make_srpm(made, "kiln-unsigned"),
            "stranger": make_srpm(made, "kiln-stranger", key=other),
            "s390x-only": make_srpm(made, "kiln-s390x", exclusive_arch=("s390x",), key=upstream),
            "failing-check": make_srpm(made, "kiln-failcheck", check="./greet | grep -q nonsense",
                                       key=upstream),
            "unmapped": make_srpm(made, "kiln-unmapped", build_requires=("gcc", "libfrobnicate-devel"),
                                  key=upstream),
            "lib": make_srpm(made, "kiln-lib", with_devel=True, key=upstream),
            "app": make_srpm(made, "kiln-app", build_requires=("gcc", "make", "kiln-lib-devel"),
                             uses_lib="kiln-lib-devel", key=upstream),
            "hostile": make_srpm(made, "kiln-hostile", summary=HOSTILE_SUMMARY,
                                 preamble=hostile_preamble(workspace.marker)),
        }  # fmt: skip
    finally:
        stop_agent(upstream)
        stop_agent(other)
    for label, srpm in srpms.items():
        shutil.copy(srpm, workspace.files / f"{label}.src.rpm")
    # rpmkeys repeats the file's name in what it prints: this name once vouched for itself.
    shutil.copy(srpms["hostile"], workspace.files / "kiln-hostile-signatures OK.src.rpm")
    (workspace.files / "greet.patch").write_text(greet_patch())
    (workspace.files / "stale.patch").write_text(greet_patch().replace("hello from", "howdy from"))
    return workspace


@pytest.fixture(scope="module")
def rebuilt(ws) -> dict:
    ws.recipe("kiln-greet", arches="x86_64, ppc64le", source="{path: ../files/signed.src.rpm}",
              patches="../files/greet.patch")  # fmt: skip
    code, targets, said = ws.build("kiln-greet")
    assert code == 0, said
    return {t["target"].rsplit(":", 1)[1]: t for t in targets}


def _artifacts(outcome: dict, type_: str) -> list[Path]:
    manifest_path = Path(outcome["manifest"])
    manifest = json.loads(manifest_path.read_text())
    return [manifest_path.parent / a["path"] for a in manifest["artifacts"] if a["type"] == type_]


def test_the_ppc64le_rebuild_says_ppc64le_and_carries_the_suffixed_release(rebuilt):
    [rpm] = _artifacts(rebuilt["ppc64le"], "rpm")
    info = subprocess.run(["rpm", "-qpi", str(rpm)], capture_output=True, text=True, check=True).stdout
    assert "Architecture: ppc64le" in info
    assert "Release     : 1.el9.kiln1" in info
    assert rebuilt["ppc64le"]["verification"].startswith("passed")


def test_the_changed_srpm_names_kilns_changes_and_is_published_under_source(rebuilt, local_site):
    [srpm] = _artifacts(rebuilt["x86_64"], "srpm")
    changelog = subprocess.run(
        ["rpm", "-qp", "--changelog", str(srpm)], capture_output=True, text=True
    ).stdout
    assert "Rebuilt by Kiln" in changelog and "Patch: greet.patch" in changelog
    source = [p for p in rebuilt["x86_64"]["published"] if p["artifact"] == srpm.name]
    assert source and source[0]["location"].endswith("/kiln/el/9/source/")


def test_the_ledger_and_manifest_record_that_the_signature_was_checked(rebuilt, ws):
    manifest = json.loads(Path(rebuilt["x86_64"]["manifest"]).read_text())
    assert manifest["build"]["verify_signature"] is True
    with sqlite3.connect(ws.ledger) as db:
        rows = [r[0] for r in db.execute("SELECT tool_versions FROM builds")]
    assert any('"srpm-signature": "signed"' in (row or "") for row in rows)


def _libc_shim(rpm: Path, workdir: Path) -> Path:
    """A noarch package providing what the rebuilt binary requires from glibc (no EL BaseOS here)."""
    requires = subprocess.run(["rpm", "-qp", "--requires", str(rpm)], capture_output=True, text=True).stdout
    provides = [r.strip() for r in requires.splitlines() if r.strip() and not r.startswith(("rpmlib(", "/"))]
    top = workdir / "shim"
    spec = top / "shim.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        "Name: kiln-test-libc\nVersion: 1\nRelease: 1\nSummary: shim\nLicense: MIT\nBuildArch: noarch\n"
        + "".join(f"Provides: {p}\n" for p in provides)
        + "%description\nshim\n%files\n"
    )
    subprocess.run(
        ["rpmbuild", "-bb", "--define", f"_topdir {top}", str(spec)], check=True, capture_output=True
    )
    return next((top / "RPMS" / "noarch").glob("*.rpm"))


def _dnf(url: str, key_url: str, root: Path, arch: str, *packages: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["dnf", "-y", "-q", f"--installroot={root}", "--releasever=9", f"--forcearch={arch}",
             "--setopt=reposdir=/dev/null", f"--setopt=cachedir={root}-cache", "--setopt=keepcache=0",
             f"--repofrompath=kiln,{url}", "--setopt=kiln.gpgcheck=1", "--setopt=kiln.repo_gpgcheck=1",
             f"--setopt=kiln.gpgkey={key_url}", "install", *packages],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        for keyrings in (root, Path(f"{root}-cache")):
            stop_gpg_daemons_under(keyrings)


def test_dnf_installs_the_ppc64le_rebuild_from_the_signed_repo_and_it_prints_the_patched_greeting(
    rebuilt, local_site, site_settings, tmp_path
):
    [rpm] = _artifacts(rebuilt["ppc64le"], "rpm")
    publisher = SitePublishers(site_settings, local_site.state).repo()
    publisher.publish([_libc_shim(rpm, tmp_path)], repo="kiln", distro="el", release="9", arch="ppc64le")
    root = tmp_path / "root"
    installed = _dnf(f"{local_site.urls.repo}/kiln/el/9/ppc64le/", f"{local_site.urls.repo}/RPM-GPG-KEY-kiln",
                     root, "ppc64le", "kiln-greet")  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    binary = root / "usr/bin/kiln-greet"
    assert binary.read_bytes()[:4] == b"\x7fELF"
    ppc_root = RootSpec(Arch.PPC64LE).directory(Path.home() / ".cache" / "kiln")
    # Debian's /lib64/ld64.so.2 is an absolute symlink: run the root's loader by its host path.
    loader = ppc_root / "lib/powerpc64le-linux-gnu/ld64.so.2"
    ran = subprocess.run(
        ["qemu-ppc64le-static", "-L", str(ppc_root), loader, str(binary)], capture_output=True, text=True
    )
    assert ran.stdout == "hello POWER from kiln-greet\n"


def test_a_warm_rebuild_does_not_bootstrap_its_root_again(ws, rebuilt):
    ws.recipe("kiln-greet-warm", source="{path: ../files/signed.src.rpm}", extra="  without: [docs]")
    result = ws.kiln("build", "kiln-greet-warm", "--arch", "x86_64")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "build root cached" in result.stderr and "bootstrapped" not in result.stderr


# --- refusals: each with a clear message and nothing published -------------------------------------------


def _refused(ws, local_site, site_settings, name: str, source: str, **recipe) -> str:
    repo = f"refused-{name}"
    ws.recipe(name, source=source, repo=repo, **recipe)
    code, targets, said = ws.build(name)
    assert code != 0, said
    publisher = SitePublishers(site_settings, local_site.state).repo()
    assert not (publisher.root / repo).exists(), "a refused rebuild published something"
    return " ".join(t.get("error") or "" for t in targets) or said


def test_an_unsigned_srpm_is_refused(ws, local_site, site_settings):
    error = _refused(ws, local_site, site_settings, "kiln-unsigned", "{path: ../files/unsigned.src.rpm}")
    assert "is not signed" in error and "verify_signature: false" in error


def test_an_srpm_signed_by_an_unknown_key_is_refused(ws, local_site, site_settings):
    error = _refused(ws, local_site, site_settings, "kiln-stranger", "{path: ../files/stranger.src.rpm}")
    assert "key not in build.trusted_keys" in error


def test_an_unsigned_srpm_whose_name_says_signatures_ok_is_refused_and_its_spec_never_runs(
    ws, local_site, site_settings
):
    source = "{path: '../files/kiln-hostile-signatures OK.src.rpm'}"
    error = _refused(ws, local_site, site_settings, "kiln-name-vouches", source)
    assert "is not signed" in error
    assert ws.marks() == [], "the refused SRPM's spec ran on the host"


def test_a_hostile_spec_is_evaluated_only_in_the_sandbox_as_nobody_without_network(ws):
    """verify_signature: false (the shipped example's setting): the spec's %(...) and Lua run, but in
    the build root, as nobody, with only a loopback interface; nothing lands on the host."""
    ws.recipe("kiln-hostile", source="{path: ../files/hostile.src.rpm}", extra="  verify_signature: false")
    code, targets, said = ws.build("kiln-hostile")
    assert ws.marks() == [], f"the spec ran on the host: {ws.marks()}"
    assert code == 0, said
    [outcome] = targets
    for rpm in _artifacts(outcome, "rpm") + _artifacts(outcome, "srpm"):
        summary = subprocess.run(
            ["rpm", "-qp", "--qf", "%{SUMMARY}", str(rpm)], capture_output=True, text=True, check=True
        ).stdout
        assert summary == "uid 65534 ifaces 1", f"{rpm.name}: {summary}"


def test_a_download_whose_sha256_does_not_match_is_refused_before_anything_runs(
    ws, local_site, site_settings
):
    publisher = SitePublishers(site_settings, local_site.state).repo()
    served = publisher.root / "srpm-downloads"
    served.mkdir(exist_ok=True)
    shutil.copy(ws.files / "signed.src.rpm", served / "kiln-greet-1.0-1.src.rpm")
    url = f"{local_site.urls.repo}/srpm-downloads/kiln-greet-1.0-1.src.rpm"
    error = _refused(
        ws, local_site, site_settings, "kiln-mismatch", f"{{url: '{url}', sha256: '{'0' * 64}'}}"
    )
    assert "sha256 mismatch" in error


def test_an_srpm_whose_exclusivearch_rules_out_the_arch_is_refused_at_validate_time(ws):
    ws.recipe("kiln-s390x", source="{path: ../files/s390x-only.src.rpm}")
    result = ws.kiln("validate", str(ws.root / "recipes" / "kiln-s390x.yaml"))
    assert result.returncode == 1
    assert "ExclusiveArch" in result.stdout + result.stderr
    (ws.root / "recipes" / "kiln-s390x.yaml").unlink()


def test_a_patch_that_does_not_apply_is_refused_naming_the_patch(ws, local_site, site_settings):
    error = _refused(ws, local_site, site_settings, "kiln-stale", "{path: ../files/signed.src.rpm}",
                     patches="../files/greet.patch, ../files/stale.patch")  # fmt: skip
    assert "patch stale.patch does not apply" in error


def test_a_failing_check_fails_the_build(ws, local_site, site_settings):
    error = _refused(
        ws, local_site, site_settings, "kiln-failcheck", "{path: ../files/failing-check.src.rpm}"
    )
    assert "%check failed" in error


def test_an_unmapped_buildrequire_is_refused_naming_it(ws, local_site, site_settings):
    error = _refused(ws, local_site, site_settings, "kiln-unmapped", "{path: ../files/unmapped.src.rpm}")
    assert "libfrobnicate-devel" in error and "build_requires_map" in error


# --- order -------------------------------------------------------------------------------------------


def test_a_recipe_that_buildrequires_anothers_devel_package_builds_after_it_from_the_repo(ws):
    ws.recipe("kiln-app", source="{path: ../files/app.src.rpm}", repo="ordered")
    ws.recipe("kiln-lib", source="{path: ../files/lib.src.rpm}", repo="ordered")
    code, targets, said = ws.build("kiln-app", "kiln-lib", "--arch", "x86_64")
    assert code == 0, said
    assert [t["target"] for t in targets] == ["kiln-lib:9:x86_64", "kiln-app:9:x86_64"]
    log = sorted((ws.build_root / "kiln-app_9_x86_64" / "logs").glob("build-*.log"))[-1].read_text()
    assert "kiln-lib-devel" in log and "rpm -i --nodeps" in log
    [rpm] = [p for p in _artifacts(targets[1], "rpm")]
    assert rpm.name.startswith("kiln-app-1.0-1.el9.kiln1")


# --- the S3 mirror ------------------------------------------------------------------------------------


def test_dnf_pointed_at_the_s3_mirror_installs_the_rebuild_with_the_mirrors_repo_file_and_key(
    rebuilt, ws, local_site, site_settings, tmp_path
):
    import requests
    import yaml

    from builder.siteconfig import RepoSite, S3Target

    bucket = "kiln-rpm-mirror"
    public = f"{local_site.urls.s3}/v1/AUTH_kiln/{bucket}"  # Swift's own URL: anonymous reads
    settings = site_settings.model_copy(
        update={"repo": RepoSite(backend="s3", s3=S3Target(bucket=bucket, public_url=public))}
    )
    site_file = tmp_path / "site-s3.yaml"
    site_file.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    publishers = SitePublishers(settings, local_site.state)
    mirror = publishers.mirror()
    mirror.ensure_bucket()
    mirror.client.put_bucket_acl(Bucket=bucket, ACL="public-read")  # the operator's choice for a public repo
    [rpm] = _artifacts(rebuilt["ppc64le"], "rpm")
    shim = publishers.repo().publish([_libc_shim(rpm, tmp_path)], repo="kiln", distro="el", release="9",
                                     arch="ppc64le")  # fmt: skip
    mirror.sync(shim.repo_dir, "kiln/el/9/ppc64le")
    published = subprocess.run(
        [*KILN, "--root", str(ws.root), "--site", str(site_file), "--ledger", str(tmp_path / "l.sqlite"),
         "publish", rebuilt["ppc64le"]["manifest"]],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert published.returncode == 0, published.stdout + published.stderr
    repo_file = requests.get(f"{public}/kiln/kiln-el9.repo", timeout=30)
    assert repo_file.status_code == 200, "the mirror has no .repo file"
    settings_of = dict(line.split("=", 1) for line in repo_file.text.splitlines() if "=" in line)
    assert settings_of["baseurl"].startswith(public) and settings_of["gpgkey"] == f"{public}/RPM-GPG-KEY-kiln"
    assert requests.get(settings_of["gpgkey"], timeout=30).text.startswith("-----BEGIN PGP PUBLIC KEY BLOCK")
    root = tmp_path / "root"
    url = settings_of["baseurl"].replace("$basearch", "ppc64le")
    installed = _dnf(url, settings_of["gpgkey"], root, "ppc64le", "kiln-greet")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (root / "usr/bin/kiln-greet").is_file()


# --- kiln rpm rebuild ----------------------------------------------------------------------------------


def test_kiln_rpm_rebuild_builds_one_srpm_ad_hoc(ws):
    result = ws.kiln(
        "rpm", "rebuild", str(ws.files / "signed.src.rpm"), "--arch", "ppc64le",
        "--trusted-key", str(ws.files / "upstream.asc"), "--no-publish", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    [outcome] = json.loads(result.stdout)["targets"]
    assert outcome["target"] == "kiln-greet:9:ppc64le" and outcome["status"] == "built"
    assert (ws.root / ".kiln" / "adhoc" / "kiln-greet" / "kiln-greet.yaml").is_file()
    [rpm] = _artifacts(outcome, "rpm")
    assert rpm.name == "kiln-greet-1.0-1.el9.kiln1.ppc64le.rpm"


def test_kiln_rpm_rebuild_of_a_package_name_needs_a_repo(ws):
    result = ws.kiln("rpm", "rebuild", "kiln-greet", "--arch", "ppc64le")
    assert result.returncode == 1
    assert "needs --repo" in result.stderr


def test_a_source_package_named_in_a_repo_is_found_through_its_metadata_and_rebuilt(
    rebuilt, ws, local_site, site_settings
):
    publisher = SitePublishers(site_settings, local_site.state).repo()
    shutil.copy(publisher.root / "RPM-GPG-KEY-kiln", ws.files / "site.asc")  # rpmsign signed the SRPM
    repo = f"{local_site.urls.repo}/kiln/el/9/source/"
    ws.recipe("kiln-greet-from-repo", source=f"{{package: kiln-greet, repo: '{repo}'}}", repo="from-repo")
    recipe = ws.root / "recipes" / "kiln-greet-from-repo.yaml"
    recipe.write_text(recipe.read_text().replace("../files/upstream.asc", "../files/site.asc"))
    code, targets, said = ws.build("kiln-greet-from-repo", "--arch", "x86_64")
    assert code == 0, said
    [rpm] = _artifacts(targets[0], "rpm")
    assert rpm.name.startswith("kiln-greet-1.0-1.el9.kiln1")
