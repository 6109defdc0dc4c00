"""The rpm-rebuild kind's pure parts: spec changes, the BuildRequires table, rpm version order, SRPM
headers, signature verdicts, dependency order and cycles, the mock config and the dry-run plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.errors import InvalidInput
from builder.pipeline.graph import load_targets
from builder.render import render_target
from builder.rpm.brmap import map_build_requires
from builder.rpm.buildroot import RootSpec
from builder.rpm.changes import Changes, apply_changes, patch_failure
from builder.rpm.missing import find_missing, source_nvr
from builder.rpm.source import RepoPackage, SrpmHeader, arch_refusal, read_header
from builder.rpm.versions import vercmp
from builder.rpm.written import default_source_repo
from builder.workspace import PACKAGE_ROOT
from tests.support.srpms import make_srpm

SPEC = """\
Name: demo
Version: 1.0
Release: 1%{?dist}
Summary: demo
License: MIT
Source0: demo-1.0.tar.gz
Patch0: upstream.patch

%description
demo

%prep
%autosetup -p1

%build
make

%files
/usr/bin/demo

%changelog
* Mon Jan 01 2024 Upstream <u@example.com> - 1.0-1
- Initial
"""


def test_kiln_suffixes_the_release_and_applies_its_patches_after_upstreams_at_the_end_of_prep():
    changed = apply_changes(SPEC, Changes(".kiln1", ("fix.patch",), arch="ppc64le"), now=0)
    lines = changed.splitlines()
    assert "Release: 1%{?dist}.kiln1" in lines
    # declared as a Source, so %autosetup does not apply it a second time
    assert lines.index("Source9000: fix.patch") == lines.index("Patch0: upstream.patch") + 1
    applying = next(i for i, line in enumerate(lines) if "%{SOURCE9000}" in line)
    assert lines.index("%autosetup -p1") < applying < lines.index("%build")
    assert "kiln: patch fix.patch does not apply" in lines[applying]


def test_kilns_changelog_entry_comes_first_and_names_what_kiln_changed():
    changes = Changes("kiln2", ("fix.patch",), (("with_foo", "1"),), ("tests",), "ppc64le")
    changed = apply_changes(SPEC, changes, now=0)
    entry = changed.split("%changelog\n", 1)[1]
    assert entry.startswith("* Thu Jan 01 1970 Kiln <kiln@localhost>\n- Rebuilt by Kiln for ppc64le\n")
    for line in ("- Release suffix .kiln2", "- Patch: fix.patch", "- Macro: %with_foo 1", "- Without: tests"):
        assert line in entry
    assert entry.index("Kiln <kiln@localhost>") < entry.index("Upstream")


def test_a_spec_without_changelog_gets_one_and_a_spec_without_release_is_refused():
    assert "%changelog\n* " in apply_changes(SPEC.split("%changelog")[0], Changes(".k", ()), now=0)
    with pytest.raises(InvalidInput, match="no Release"):
        apply_changes(SPEC.replace("Release:", "Rel:"), Changes(".k", ()), "demo.spec")


def test_the_failed_patch_is_found_in_the_build_log():
    assert patch_failure("+ echo\nkiln: patch 0002-x.patch does not apply\nerror: Bad exit") == "0002-x.patch"
    assert patch_failure("error: Bad exit status from /var/tmp/rpm-tmp (%check)") is None


def test_buildrequires_map_through_the_table_the_override_and_the_published_repo():
    mapped = map_build_requires(
        ["gcc", "make >= 4", "pkgconfig(zlib)", "liba-devel", "special"],
        {"special": ["libspecial-dev"]},
        {"liba-devel"},
    )
    assert mapped.debian == ("gcc", "make", "zlib1g-dev", "libspecial-dev")
    assert mapped.from_repo == ("liba-devel",)


def test_an_unmapped_buildrequire_is_an_error_naming_it():
    with pytest.raises(InvalidInput, match=r"BuildRequires libfrobnicate-devel: .*build_requires_map"):
        map_build_requires(["gcc", "libfrobnicate-devel"])


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("1.0", "1.0.1", -1),
        ("2", "10", -1),
        ("1.0~rc1", "1.0", -1),
        ("1.el9.kiln1", "1.el9", 1),
        ("1a", "1", 1),
    ],
)
def test_versions_compare_as_rpm_compares_them(a, b, order):
    assert vercmp(a, b) == order and vercmp(b, a) == -order


def test_the_example_srpms_header_is_read_with_createrepo_c():
    header = read_header(PACKAGE_ROOT / "files/srpms/kiln-hello-1.0-1.src.rpm")
    assert (header.name, header.version, header.release) == ("kiln-hello", "1.0", "1")
    assert header.build_requires == ("gcc", "make")
    assert header.exclusive_arch == () and header.exclude_arch == ()


def test_exclusivearch_and_excludearch_are_read_from_the_header_and_rule_arches_out(tmp_path):
    header = read_header(make_srpm(tmp_path, "kiln-s390x", exclusive_arch=("s390x", "x86_64")))
    assert header.exclusive_arch == ("s390x", "x86_64")
    assert arch_refusal(header, Arch.X86_64) is None
    assert "ExclusiveArch: s390x x86_64 rules out ppc64le" in (arch_refusal(header, Arch.PPC64LE) or "")
    excluding = SrpmHeader("x", "0", "1", "1", (), (), ("ppc64le",))
    assert "ExcludeArch" in (arch_refusal(excluding, Arch.PPC64LE) or "")


def _workspace_with(tmp_path: Path, recipes: dict[str, tuple[str, Path]]):
    from builder.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(PACKAGE_ROOT / "templates", root / "templates")
    (root / "recipes").mkdir(parents=True)
    (root / "files").mkdir()
    for name, (extra, srpm) in recipes.items():
        shutil.copy(srpm, root / "files" / srpm.name)
        (root / "recipes" / f"{name}.yaml").write_text(
            f"name: {name}\nkind: rpm-rebuild\narches: [x86_64, ppc64le]\nbuild:\n"
            f"  source: {{path: ../files/{srpm.name}}}\n  release: '9'\n  verify_signature: false\n{extra}"
        )
    return Workspace(root)


def test_a_rebuild_that_buildrequires_anothers_devel_package_depends_on_it_per_arch(tmp_path):
    lib = make_srpm(tmp_path, "kiln-lib", with_devel=True)
    app = make_srpm(tmp_path, "kiln-app", build_requires=("gcc", "kiln-lib-devel"))
    workspace = _workspace_with(tmp_path, {"app": ("", app), "lib": ("", lib)})
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert not problems
    by_id = {t.id: t for t in targets}
    assert by_id["app:9:ppc64le"].depends_on == ("lib:9:ppc64le",)
    assert by_id["app:9:x86_64"].depends_on == ("lib:9:x86_64",)
    assert by_id["lib:9:x86_64"].depends_on == ()


def test_a_cycle_of_rebuilds_is_reported_with_its_members_and_nothing_is_expanded(tmp_path):
    one = make_srpm(tmp_path, "kiln-one", build_requires=("gcc", "kiln-two-devel"))
    two = make_srpm(tmp_path, "kiln-two", build_requires=("gcc", "kiln-one-devel"))
    workspace = _workspace_with(tmp_path, {"one": ("", one), "two": ("", two)})
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert targets == []
    message = " ".join(p.message for p in problems)
    assert "dependency cycle between recipes" in message and "one" in message and "two" in message
    assert "nothing in it is built" in message


def test_an_exclusivearch_srpm_in_the_workspace_is_refused_at_validate_time(tmp_path):
    only = make_srpm(tmp_path, "kiln-only", exclusive_arch=("x86_64",))
    workspace = _workspace_with(tmp_path, {"only": ("", only)})
    _, problems = load_targets([workspace.recipes_dir], workspace)
    [problem] = problems
    assert "cannot build for ppc64le" in problem.message and "ExclusiveArch" in problem.message


def test_the_mock_config_is_rendered_for_the_target_arch_and_dist(tmp_path):
    srpm = make_srpm(tmp_path, "kiln-mocked")
    extra = "  build_root: mock\n  defines: {with_foo: '1'}\n"
    workspace = _workspace_with(tmp_path, {"mocked": (extra, srpm)})
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert not problems
    target = next(t for t in targets if t.arch is Arch.PPC64LE)
    files = {f.path: f.content.decode() for f in render_target(target, workspace.templates_dir)}
    config = files["mock.cfg"]
    assert "include('templates/almalinux-9.tpl')" in config
    assert "config_opts['target_arch'] = \"ppc64le\"" in config
    assert "config_opts['macros']['%dist'] = \".el9\"" in config
    assert 'config_opts[\'macros\']["%with_foo"] = "1"' in config


def test_the_mock_plan_adds_forcearch_only_when_emulating(tmp_path):
    from builder.backends.rpmbuild import mock_argv
    from builder.core.kind import BuildJob, HostFacts
    from builder.siteconfig import SiteConfig

    srpm = make_srpm(tmp_path, "kiln-mocked")
    workspace = _workspace_with(tmp_path, {"mocked": ("  build_root: mock\n", srpm)})
    targets, _ = load_targets([workspace.recipes_dir], workspace)
    target = next(t for t in targets if t.arch is Arch.PPC64LE)

    def job(placement: str) -> BuildJob:
        host = HostFacts(Arch.X86_64, placement, probed=False)
        return BuildJob(target, {}, tmp_path / "r", tmp_path / "o", tmp_path / "t", tmp_path, workspace.root,
                        tmp_path, tmp_path, SiteConfig(), host)  # fmt: skip

    assert mock_argv(job("emulated"), Path("x.src.rpm"), tmp_path)[-2:] == ("--forcearch", "ppc64le")
    assert "--forcearch" not in mock_argv(job("native"), Path("x.src.rpm"), tmp_path)


def test_the_dry_run_plan_rebuilds_in_an_overlay_on_the_cached_root(tmp_path):
    from builder.backends.rpmbuild import RpmbuildBackend
    from builder.core.kind import BuildJob, HostFacts
    from builder.siteconfig import SiteConfig

    srpm = make_srpm(tmp_path, "kiln-planned")
    workspace = _workspace_with(tmp_path, {"planned": ("", srpm)})
    targets, _ = load_targets([workspace.recipes_dir], workspace)
    target = next(t for t in targets if t.arch is Arch.PPC64LE)
    rendered = {f.path: f.content for f in render_target(target, workspace.templates_dir)}
    host = HostFacts(Arch.X86_64, "emulated", probed=False)
    job = BuildJob(target, rendered, tmp_path / "r", tmp_path / "o", tmp_path / "t", tmp_path, workspace.root,
                   tmp_path, tmp_path / "cache", SiteConfig(), host)  # fmt: skip
    plan = RpmbuildBackend().plan(job)
    bootstrap, overlay, unpack, source_rpm, rebuild = (c.argv for c in plan.commands)
    root = RootSpec(Arch.PPC64LE).directory(tmp_path / "cache")
    assert bootstrap[:3] == ("debootstrap", "--arch=ppc64el", "--variant=minbase") and str(root) in bootstrap
    assert overlay[:3] == ("mount", "-t", "overlay") and f"lowerdir={root}," in overlay[-2]
    for sandboxed in (unpack, source_rpm, rebuild):  # the SRPM is opened only as nobody, without network
        assert sandboxed[0] == "unshare" and "--net" in sandboxed and "--userspec=65534:65534" in sandboxed
    assert unpack[-2:] == ("-i", "/kiln/source.src.rpm")
    assert source_rpm[-2:] == ("-bs", "/kiln/package.spec")
    assert "--nodeps" in rebuild and "dist .el9" in rebuild
    assert rebuild[-2:] == ("--rebuild", "/kiln/top/SRPMS/SRPM")


def test_a_roots_cache_key_follows_its_content():
    assert RootSpec(Arch.PPC64LE).key != RootSpec(Arch.X86_64).key
    assert (
        RootSpec(Arch.PPC64LE).key
        == RootSpec(Arch.PPC64LE, packages=("rpm", "make", "gcc", "patch", "libc6-dev")).key
    )
    assert RootSpec(Arch.PPC64LE).key != RootSpec(Arch.PPC64LE, packages=("rpm",)).key


def _pkg(name: str, version: str, arch: str, source: str | None = None) -> RepoPackage:
    sourcerpm = f"{source or name}-{version}-1.src.rpm"
    return RepoPackage(
        name, arch, "0", version, "1", f"Packages/{name}.rpm", ("sha256", ""), sourcerpm, (), ()
    )


def test_missing_reports_absent_and_older_sources_but_not_noarch_ones():
    first = [_pkg("a", "1", "x86_64"), _pkg("a-devel", "1", "x86_64", "a"), _pkg("b", "2", "x86_64"),
             _pkg("c", "1", "x86_64"), _pkg("docs", "1", "noarch")]  # fmt: skip
    second = [_pkg("a", "1", "ppc64le"), _pkg("b", "1", "ppc64le"), _pkg("c", "1", "aarch64")]
    found = {m.source: m for m in find_missing(first, second, Arch.PPC64LE)}
    assert set(found) == {"b", "c"}
    assert (found["b"].version, found["b"].have) == ("2-1", "1-1")
    assert found["c"].have is None


def test_source_names_and_the_default_source_repo():
    assert source_nvr("foo-bar-1.2-3.el9.src.rpm") == ("foo-bar", "1.2", "3.el9")
    assert default_source_repo("http://h/kiln/el/9/x86_64/") == "http://h/kiln/el/9/source/"


def test_the_rendered_build_argv_is_json_with_the_bconds(tmp_path):
    srpm = make_srpm(tmp_path, "kiln-bconds")
    workspace = _workspace_with(tmp_path, {"bconds": ("  without: [tests]\n  run_check: false\n", srpm)})
    targets, _ = load_targets([workspace.recipes_dir], workspace)
    argv = json.loads(render_target(targets[0], workspace.templates_dir)[-1].content)["argv"]
    assert argv[argv.index("--without") : argv.index("--without") + 2] == ["--without", "tests"]
    assert "--nocheck" in argv
