"""Host adaptations for DIB: apt mirror parsing, shim contents, the site environment (pure parts)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from builder.host import compat as hostcompat
from builder.host.compat import (
    NO_DEVICE_MAPPER,
    SUDO_HIDES_SHIMS,
    Adaptation,
    AptSource,
    dib_environment,
    host_apt_mirror,
    host_apt_security_mirror,
    parse_apt_sources,
    prepare_shims,
    shim_scripts,
)

DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""

DIB_OPTIONS = dict(
    security_mirror=None,
    include_security=True,
    extra_ca_dir=None,
    image_cache=Path("/cache"),
    tmpdir=Path("/tmp/b"),
)


def apt_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "etc/apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_deb822_stanzas_skip_comments_disabled_entries_and_source_types():
    text = DEBIAN_SOURCES + "\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n"
    text += "\nTypes: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n"
    assert parse_apt_sources(text, deb822=True) == [
        AptSource("http://deb.debian.org/debian", ("bookworm", "bookworm-updates"), ("main",)),
        AptSource("http://deb.debian.org/debian-security", ("bookworm-security",), ("main",)),
    ]


def test_deb822_continuation_lines_and_several_uris():
    text = "Types: deb deb-src\nURIs: http://a.example/debian/\n http://b.example/debian\nSuites: bookworm\n"
    sources = parse_apt_sources(text, deb822=True)
    assert [s.uri for s in sources] == ["http://a.example/debian", "http://b.example/debian"]


def test_one_line_format_with_options_and_comments():
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb http://mirror.example/debian-security bookworm-security main # trailing\n"
    )
    assert parse_apt_sources(text, deb822=False) == [
        AptSource("http://mirror.example/debian", ("bookworm",), ("main", "contrib")),
        AptSource("http://mirror.example/debian-security", ("bookworm-security",), ("main",)),
    ]


def test_host_mirror_is_the_debian_archive_not_security_nor_third_party(tmp_path):
    root = apt_root(
        tmp_path,
        {
            "sources.list.d/aaa-nodesource.sources": NODESOURCE,
            "sources.list.d/debian.sources": DEBIAN_SOURCES,
            # apt ignores other suffixes: a switched-off file must not count
            "sources.list.d/x.list.disabled-by-farm": "deb http://off.example/debian bookworm main\n",
        },
    )
    assert host_apt_mirror(root) == "http://deb.debian.org/debian"
    assert host_apt_security_mirror(root) == "http://deb.debian.org/debian-security"


def test_host_mirror_from_sources_list_and_snapshots(tmp_path):
    snapshot = "http://snapshot.debian.org/archive/debian/20250520T000000Z"
    root = apt_root(tmp_path, {"sources.list": f"deb {snapshot} bookworm main\n"})
    assert host_apt_mirror(root) == snapshot
    assert host_apt_security_mirror(root) is None


def test_no_debian_source_means_no_mirror(tmp_path):
    local = "deb file:/srv/debian bookworm main\n"  # not reachable from inside a chroot
    root = apt_root(tmp_path, {"sources.list.d/n.sources": NODESOURCE, "sources.list": local})
    assert host_apt_mirror(root) is None
    env = dib_environment(mirror=None, root=root, **DIB_OPTIONS)
    assert "DIB_DISTRIBUTION_MIRROR" not in env and "DIB_DEBIAN_SECURITY_MIRROR" not in env


def test_environment_defaults_to_the_hosts_apt_mirrors(tmp_path):
    root = apt_root(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    env = dib_environment(mirror=None, root=root, **DIB_OPTIONS)
    assert env == {
        "DIB_DISTRIBUTION_MIRROR": "http://deb.debian.org/debian",
        "DIB_DEBIAN_SECURITY_MIRROR": "http://deb.debian.org/debian-security",
        "DIB_IMAGE_CACHE": "/cache",
        "TMPDIR": "/tmp/b",
    }


def test_security_mirror_derives_from_an_explicit_archive(tmp_path):
    env = dib_environment(mirror="http://m.example/debian/", root=tmp_path, **DIB_OPTIONS)
    assert env["DIB_DISTRIBUTION_MIRROR"] == "http://m.example/debian"
    assert env["DIB_DEBIAN_SECURITY_MIRROR"] == "http://m.example/debian-security"


def test_leaving_security_out_writes_apt_sources_conf_and_needs_the_release(tmp_path):
    options = {**DIB_OPTIONS, "include_security": False}
    with pytest.raises(ValueError, match="release"):
        dib_environment(mirror="http://m.example/debian", root=tmp_path, **options)
    mirror, comps = "http://m.example/debian", ("main", "contrib")
    env = dib_environment(mirror=mirror, root=tmp_path, release="bookworm", components=comps, **options)
    assert env["DIB_APT_SOURCES_CONF"] == (
        "default:deb http://m.example/debian bookworm main contrib\n"
        "updates:deb http://m.example/debian bookworm-updates main contrib"
    )


def test_extra_ca_dir_and_debootstrap_cache(tmp_path):
    options = {**DIB_OPTIONS, "extra_ca_dir": Path("/certs")}
    env = dib_environment(mirror=None, root=tmp_path, debootstrap_cache=True, **options)
    assert env["KILN_EXTRA_CA_DIR"] == "/certs"
    assert env["DIB_DEBOOTSTRAP_CACHE"] == env["DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE"] == "1"


def test_no_shims_on_a_host_with_device_mapper(tmp_path):
    assert shim_scripts(tmp_path, [Adaptation("container", "x")]) == {}
    assert prepare_shims(tmp_path / "shims", []) == {}
    assert not (tmp_path / "shims").exists()


def test_shims_for_a_host_without_device_mapper(tmp_path):
    shims = tmp_path / "it's shims"
    scripts = shim_scripts(shims, [Adaptation(NO_DEVICE_MAPPER, "x"), Adaptation(SUDO_HIDES_SHIMS, "y")])
    assert sorted(scripts) == ["dmsetup", "kpartx", "sudo"]
    assert "partx -a" in scripts["kpartx"] and "ln -sfn /dev/" in scripts["kpartx"]
    assert "mknodes) exit 0" in scripts["dmsetup"]
    assert "path='" + str(shims).replace("'", "'\\''") + "':" in scripts["sudo"]
    assert "TMPDIR" not in scripts["sudo"].split("keep=()")[1].split("exec env -i")[0]
    for text in scripts.values():
        assert not re.search(r"@[A-Z]+@", text)  # every placeholder filled
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    env = prepare_shims(shims, [Adaptation(NO_DEVICE_MAPPER, "x")])
    assert env["PATH"].startswith(f"{shims}{os.pathsep}")
    assert sorted(p.name for p in shims.iterdir()) == ["dmsetup", "kpartx"]
    assert all(os.access(p, os.X_OK) for p in shims.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="the sudo shim passes through only as root")
def test_sudo_shim_resets_the_environment_unless_asked_to_keep_it(tmp_path):
    prepare_shims(tmp_path, [Adaptation(NO_DEVICE_MAPPER, "x"), Adaptation(SUDO_HIDES_SHIMS, "y")])
    caller = {"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp/build", "LANG": "C.UTF-8", "TZ": "/etc/x"}

    def sudo(*argv: str) -> dict[str, str]:
        out = subprocess.run([tmp_path / "sudo", *argv, "env"], env=caller, capture_output=True, text=True)
        return dict(line.split("=", 1) for line in out.stdout.splitlines())

    reset = sudo("-n")
    assert reset["PATH"].startswith(f"{tmp_path}:") and reset["HOME"] == "/root"
    assert reset["LANG"] == "C.UTF-8"
    assert "TMPDIR" not in reset and "TZ" not in reset  # a TZ with "/" fails env_check
    kept = sudo("-E", "--")
    assert kept["TMPDIR"] == "/tmp/build" and kept["PATH"].startswith(f"{tmp_path}:")


def test_cleanup_after_interrupt_of_nothing_does_nothing(tmp_path):
    assert hostcompat.cleanup_after_interrupt(tmp_path) == []


def test_detect_reports_adaptations_with_one_line_reasons():
    for adaptation in hostcompat.detect(["x86_64", "ppc64le"]):
        assert adaptation.name and adaptation.reason and "\n" not in adaptation.reason
