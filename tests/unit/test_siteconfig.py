"""site.yaml: defaults, where it is looked for, and errors that point at file:line:column and key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.errors import EnvironmentProblem, InvalidInput
from builder.siteconfig import SiteConfig, load_site


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that is also the working directory, so errors name plain ``site.yaml``."""
    monkeypatch.delenv("KILN_SITE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(root: Path, text: str) -> list[str]:
    write(root / "site.yaml", text)
    with pytest.raises(InvalidInput) as info:
        load_site(None, root)
    return [str(p) for p in info.value.problems]


# --- where the file comes from ------------------------------------------------------------------


def test_defaults_when_no_site_file_exists(site_dir):
    site = load_site(None, site_dir)
    assert site == SiteConfig()
    assert site.repo.backend == "local"
    assert site.local.ports.glance == 19292
    assert site.local.components == ["keystone", "glance", "registry", "repo", "s3"]
    assert site.local.ports.keystone == 15357
    assert site.glance.method == "upload"
    assert site.build_hosts == {}
    assert site.state_dir(site_dir) == site_dir / ".kiln/site"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_site_file_means_defaults(site_dir, text):
    (site_dir / "site.yaml").write_text(text)
    assert load_site(None, site_dir) == SiteConfig()


def test_root_site_yaml_is_read(site_dir):
    write(site_dir / "site.yaml", "glance: {method: glance-direct}\n")
    assert load_site(None, site_dir).glance.method == "glance-direct"


def test_kiln_site_env_wins_over_root_site_yaml(site_dir, monkeypatch):
    write(site_dir / "site.yaml", "glance: {method: glance-direct}\n")
    other = write(site_dir / "elsewhere.yaml", "glance: {cloud: prod}\n")
    monkeypatch.setenv("KILN_SITE", str(other))
    site = load_site(None, site_dir)
    assert site.glance.cloud == "prod"
    assert site.glance.method == "upload"


def test_explicit_path_wins_over_kiln_site(site_dir, monkeypatch):
    env_file = write(site_dir / "env.yaml", "glance: {cloud: from-env}\n")
    arg_file = write(site_dir / "arg.yaml", "glance: {cloud: from-arg}\n")
    monkeypatch.setenv("KILN_SITE", str(env_file))
    assert load_site(arg_file, site_dir).glance.cloud == "from-arg"


def test_explicit_missing_path_is_an_error(site_dir):
    with pytest.raises(InvalidInput) as info:
        load_site(site_dir / "nope.yaml", site_dir)
    assert str(info.value).startswith("nope.yaml:1:1: cannot read")


def test_non_mapping_site_file_is_refused(site_dir):
    assert problems(site_dir, "- a\n- b\n") == ["site.yaml:1:1: site.yaml must be a mapping"]


# --- errors name file:line:column and key path -------------------------------------------------


def test_misspelt_key_names_location_key_and_suggestion(site_dir):
    found = problems(
        site_dir,
        """
        local:
          state_dir: /srv/kiln
          stat_dir: typo
        """,
    )
    assert found == ["site.yaml:3:3: local.stat_dir: unknown key (did you mean 'state_dir'?)"]


def test_unknown_key_without_a_close_match_lists_the_choices(site_dir):
    found = problems(site_dir, "local:\n  flavour: big\n")
    assert found == [
        "site.yaml:2:3: local.flavour: unknown key (expected one of: state_dir, ports, components)"
    ]


def test_unknown_top_level_key(site_dir):
    [message] = problems(site_dir, "glance: {}\nregistries: {}\n")
    assert message.startswith("site.yaml:2:1: registries: unknown key")
    assert "registry" in message


def test_privileged_port_is_refused(site_dir):
    found = problems(
        site_dir,
        """
        local:
          ports:
            glance: 80
        """,
    )
    assert found == ["site.yaml:3:5: local.ports.glance: must be >= 1024 (got 80)"]


def test_port_above_range_is_refused(site_dir):
    [message] = problems(site_dir, "local:\n  ports: {repo: 70000}\n")
    assert message.startswith("site.yaml:2:11: local.ports.repo: must be <= 65535")


def test_bad_repo_backend_lists_choices(site_dir):
    found = problems(
        site_dir,
        """
        glance: {}
        repo:
          backend: ftp
        """,
    )
    assert found == ["site.yaml:3:3: repo.backend: must be one of local, path, rsync, s3 (got 'ftp')"]


def test_backend_s3_needs_s3_settings(site_dir):
    found = problems(
        site_dir,
        """
        glance: {}
        repo:
          backend: s3
        """,
    )
    assert found == ["site.yaml:2:1: repo: backend s3 needs s3"]


@pytest.mark.parametrize(("backend", "needed"), [("path", "path"), ("rsync", "rsync_target")])
def test_other_backends_need_their_settings(site_dir, backend, needed):
    [message] = problems(site_dir, f"repo:\n  backend: {backend}\n")
    assert message == f"site.yaml:1:1: repo: backend {backend} needs {needed}"


def test_backend_s3_with_settings_is_accepted(site_dir):
    write(
        site_dir / "site.yaml",
        """
        repo:
          backend: s3
          s3: {bucket: kiln-repo, endpoint_url: "https://s3.example.com"}
        """,
    )
    repo = load_site(None, site_dir).repo
    assert repo.backend == "s3"
    assert repo.s3 is not None
    assert repo.s3.bucket == "kiln-repo"
    assert repo.s3.region == "us-east-1"


def test_bad_bucket_name_points_at_the_bucket(site_dir):
    [message] = problems(
        site_dir,
        """
        repo:
          backend: s3
          s3:
            bucket: Kiln_Repo
        """,
    )
    assert message.startswith("site.yaml:4:5: repo.s3.bucket:")
    assert "Kiln_Repo" in message


def test_several_problems_are_all_reported(site_dir):
    found = problems(
        site_dir,
        """
        local:
          ports: {glance: 22}
        repo: {backend: ftp}
        """,
    )
    assert len(found) == 2
    assert found[0].startswith("site.yaml:2:11: local.ports.glance:")
    assert found[1].startswith("site.yaml:3:8: repo.backend:")


# --- state_dir ----------------------------------------------------------------------------------


def test_relative_state_dir_is_under_the_root(site_dir):
    write(site_dir / "site.yaml", "local: {state_dir: var/site}\n")
    root = site_dir / "workspace"
    assert load_site(None, site_dir).state_dir(root) == root / "var/site"


def test_absolute_state_dir_is_kept(site_dir):
    absolute = site_dir / "elsewhere" / "state"
    write(site_dir / "site.yaml", f"local: {{state_dir: {absolute}}}\n")
    assert load_site(None, site_dir).state_dir(site_dir / "workspace") == absolute


def test_home_relative_state_dir_is_expanded(site_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(site_dir / "home"))
    write(site_dir / "site.yaml", "local: {state_dir: ~/kiln}\n")
    assert load_site(None, site_dir).state_dir(Path("/unused")) == site_dir / "home" / "kiln"


# --- build_hosts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "arch"),
    [("ppc64el", Arch.PPC64LE), ("ppc64le", Arch.PPC64LE), ("amd64", Arch.X86_64), ("arm64", Arch.AARCH64)],
)
def test_build_hosts_accept_arch_spellings(site_dir, spelling, arch):
    write(site_dir / "site.yaml", f"build_hosts:\n  {spelling}: {{mode: native}}\n")
    hosts = load_site(None, site_dir).build_hosts
    assert list(hosts) == [arch]
    assert hosts[arch].mode == "native"


def test_build_host_default_mode_is_emulated(site_dir):
    write(site_dir / "site.yaml", "build_hosts:\n  aarch64: {}\n")
    assert load_site(None, site_dir).build_hosts[Arch.AARCH64].mode == "emulated"


def test_unknown_build_host_arch_is_located(site_dir):
    [message] = problems(site_dir, "build_hosts:\n  sparc: {mode: native}\n")
    assert message.startswith("site.yaml:2:3: build_hosts.sparc: unknown architecture 'sparc'")


def test_bad_build_host_mode_is_located(site_dir):
    [message] = problems(site_dir, "build_hosts:\n  ppc64le:\n    mode: kvm\n")
    assert (
        message == "site.yaml:3:5: build_hosts.ppc64le.mode: "
        "must be one of native, emulated, other-host (got 'kvm')"
    )


def test_two_spellings_of_one_build_host_arch_are_refused(site_dir):
    write(
        site_dir / "site.yaml",
        """
        build_hosts:
          ppc64el: {mode: native}
          ppc64le: {mode: other-host, host: power9.example.com}
        """,
    )
    with pytest.raises(InvalidInput):
        load_site(None, site_dir)


def test_an_other_host_build_host_needs_a_host(site_dir):
    write(site_dir / "site.yaml", "build_hosts:\n  ppc64le: {mode: other-host}\n")
    with pytest.raises(InvalidInput):
        load_site(None, site_dir)


def test_the_old_ssh_mode_is_refused_saying_what_it_never_did(site_dir):
    write(site_dir / "site.yaml", "build_hosts:\n  ppc64le: {mode: ssh, host: power9.example.com}\n")
    with pytest.raises(InvalidInput, match="now other-host: Kiln never dispatched builds over ssh"):
        load_site(None, site_dir)


def test_security_suite_can_be_left_out_for_one_arch_only():
    from builder.arch import Arch
    from builder.siteconfig import Mirrors

    mirrors = Mirrors.model_validate({"without_security": ["ppc64el"]})
    assert mirrors.include_security(Arch.X86_64) is True
    assert mirrors.include_security(Arch.PPC64LE) is False
    assert Mirrors(security_suite=False).include_security(Arch.X86_64) is False


def test_the_hosts_own_arch_builds_natively_whatever_build_hosts_says(site_dir):
    write(site_dir / "site.yaml", "build_hosts:\n  ppc64le: {mode: other-host, host: power9.example.com}\n")
    assert load_site(None, site_dir).placement(Arch.PPC64LE, host=Arch.PPC64LE) == "native"


def test_a_foreign_arch_is_emulated_by_default(site_dir):
    assert load_site(None, site_dir).placement(Arch.PPC64LE, host=Arch.X86_64) == "emulated"


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("{mode: native}", "on a ppc64le host"),
        ("{mode: other-host, host: power9.example.com}", "on host power9"),
    ],
)
def test_a_foreign_arch_that_belongs_elsewhere_is_refused_naming_where(site_dir, setting, where):
    write(site_dir / "site.yaml", f"build_hosts:\n  ppc64le: {setting}\n")
    with pytest.raises(EnvironmentProblem) as refused:
        load_site(None, site_dir).placement(Arch.PPC64LE, host=Arch.X86_64)
    message = str(refused.value)
    assert message.startswith("site.yaml build_hosts.ppc64le: mode ")
    assert where in message and "runner tag ppc64le" in message and "this host is x86_64" in message
