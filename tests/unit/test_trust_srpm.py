"""Trust from structure, never from text: the SRPM signature verdict (real rpmkeys, decided by exit
status), recipe `defines` that would run code or move rpm's directories (refused by validate), and
reading back what a sandboxed build wrote without following its links."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import InvalidInput
from builder.host.run import Runner
from builder.rpm.sandbox import copy_out, directories, read_inside, regular_files, sandbox_argv
from builder.rpm.trust import Verdict, check_signature, signature_verdict
from tests.support.srpms import make_key, make_srpm, stop_agent

pytestmark = pytest.mark.needs_tool("rpmkeys")


@pytest.fixture(scope="module")
def srpms(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("rpmkeys") is None or shutil.which("rpmbuild") is None:
        pytest.fail("rpm is not installed: run `make test`, which installs it")
    work = tmp_path_factory.mktemp("trust")
    upstream = make_key(work / "keys", "Kiln Trust Upstream")
    stranger = make_key(work / "keys", "Kiln Stranger")
    try:
        made = {
            "signed": make_srpm(work / "made", "kiln-signed", key=upstream),
            "stranger": make_srpm(work / "made", "kiln-stranger", key=stranger),
            "unsigned": make_srpm(work / "made", "kiln-unsigned"),
        }
    finally:
        stop_agent(upstream)
        stop_agent(stranger)
    # rpmkeys prints the path it checked: "<path>: digests signatures OK" once meant "signed".
    vouching = work / "made" / "kiln-unsigned-1.0-1 digests signatures OK.src.rpm"
    shutil.copy(made["unsigned"], vouching)
    damaged = work / "made" / "damaged.src.rpm"
    data = bytearray(made["signed"].read_bytes())
    data[-100] ^= 0xFF  # a payload byte: the digests no longer match
    damaged.write_bytes(bytes(data))
    return {**made, "vouching": vouching, "damaged": damaged, "key": upstream.public}


@pytest.mark.parametrize(
    ("label", "verdict"),
    [
        ("signed", Verdict.SIGNED),
        ("stranger", Verdict.UNKNOWN_KEY),
        ("unsigned", Verdict.UNSIGNED),
        ("vouching", Verdict.UNSIGNED),
        ("damaged", Verdict.DAMAGED),
    ],
)
def test_the_signature_verdict_comes_from_rpms_exit_status_not_its_text(srpms, tmp_path, label, verdict):
    got, _ = signature_verdict(srpms[label], [srpms["key"]], Runner(), tmp_path / "work")
    assert got is verdict


def test_an_unsigned_srpm_whose_name_says_signatures_ok_is_refused(srpms, tmp_path):
    with pytest.raises(InvalidInput, match="is not signed"):
        check_signature(srpms["vouching"], [srpms["key"]], Runner(), tmp_path / "work")


def test_no_trusted_key_means_no_srpm_is_trusted(srpms, tmp_path):
    got, _ = signature_verdict(srpms["signed"], [], Runner(), tmp_path / "work")
    assert got is Verdict.UNKNOWN_KEY


# --- recipe defines: data, not code or rpm's own directories -----------------------------------------

RECIPE = """\
name: hostile-defines
kind: rpm-rebuild
arches: [x86_64]
build:
  source: {{path: ../files/example.src.rpm}}
  release: "9"
  verify_signature: false
  defines:
    {name}: {value}
"""


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("dist", "'%(touch /tmp/kiln-pwned)'", "'%(' would make rpm run code"),
        ("vendor", "'%{lua: os.execute(\"id\")}'", "'%{lua' would make rpm run code"),
        ("packager", "'%[1 + 1]'", "'%[' would make rpm run code"),
        ("vendor", "'%{expand:%{foo}}'", "'%{expand' would make rpm run code"),
        ("_srcrpmdir", "/etc", "_srcrpmdir is one of rpm's own path or helper macros"),
        ("_topdir", "/", "_topdir is one of rpm's own path or helper macros"),
        ("__gpg", "/tmp/evil", "__gpg is one of rpm's own path or helper macros"),
    ],
)
def test_kiln_validate_refuses_defines_that_run_code_or_move_rpms_directories_at_file_and_line(
    tmp_path, capsys, name, value, said
):
    root = tmp_path / "ws"
    (root / "recipes").mkdir(parents=True)
    (root / "files").mkdir()
    shutil.copytree(Path(__file__).resolve().parents[2] / "templates", root / "templates")
    shutil.copy(
        Path(__file__).resolve().parents[2] / "files" / "srpms" / "kiln-hello-1.0-1.src.rpm",
        root / "files" / "example.src.rpm",
    )
    recipe = root / "recipes" / "hostile.yaml"
    recipe.write_text(RECIPE.format(name=name, value=value))
    code = main(["--root", str(root), "--ledger", str(tmp_path / "ledger.sqlite"), "validate", str(recipe)])
    said_by_kiln = capsys.readouterr()
    out = said_by_kiln.out + said_by_kiln.err
    assert code == 1
    assert "hostile.yaml:9:5: " in out and f"build.defines.{name}" in out and said in out, out


def test_ordinary_defines_still_validate(tmp_path, capsys):
    root = tmp_path / "ws"
    (root / "recipes").mkdir(parents=True)
    (root / "files").mkdir()
    shutil.copytree(Path(__file__).resolve().parents[2] / "templates", root / "templates")
    shutil.copy(
        Path(__file__).resolve().parents[2] / "files" / "srpms" / "kiln-hello-1.0-1.src.rpm",
        root / "files" / "example.src.rpm",
    )
    recipe = root / "recipes" / "fine.yaml"
    recipe.write_text(RECIPE.format(name="with_foo", value="'%{?dist}.1'"))
    assert main(["--root", str(root), "--ledger", str(tmp_path / "l.sqlite"), "validate", str(recipe)]) == 0


# --- what the sandbox leaves behind is read without following it -------------------------------------


@pytest.fixture
def left_behind(tmp_path) -> Path:
    """A build root as a hostile build could leave it: links to host files, a FIFO, a big file."""
    root = tmp_path / "root"
    rpms = root / "kiln" / "top" / "RPMS" / "x86_64"
    rpms.mkdir(parents=True)
    (rpms / "good-1.0-1.x86_64.rpm").write_bytes(b"rpm bytes")
    secret = tmp_path / "host-secret"
    secret.write_text("host secret")
    (rpms / "shadow-1.0-1.x86_64.rpm").symlink_to(secret)
    os.mkfifo(rpms / "fifo-1.0-1.x86_64.rpm")
    (root / "kiln" / "top" / "RPMS" / "etc").symlink_to(tmp_path)  # a directory link out of the root
    (root / "kiln" / "top" / "SPECS").symlink_to(tmp_path)
    (root / "kiln" / "big.spec").write_bytes(b"x" * 2048)
    return root


def test_only_regular_files_and_real_directories_are_listed(left_behind):
    assert directories(left_behind, "kiln/top/RPMS") == ["x86_64"]
    assert regular_files(left_behind, "kiln/top/RPMS/x86_64", ".rpm") == ["good-1.0-1.x86_64.rpm"]


def test_a_link_a_fifo_or_a_linked_directory_is_refused_never_followed(left_behind, tmp_path):
    for rel in ("kiln/top/RPMS/x86_64/shadow-1.0-1.x86_64.rpm", "kiln/top/RPMS/x86_64/fifo-1.0-1.x86_64.rpm",
                "kiln/top/RPMS/etc/host-secret", "kiln/top/SPECS/host-secret"):  # fmt: skip
        with pytest.raises(InvalidInput, match="not read"):
            copy_out(left_behind, rel, tmp_path / "copied", limit=1 << 20)
        assert not (tmp_path / "copied").exists()
    with pytest.raises(InvalidInput, match="not read"):
        regular_files(left_behind, "kiln/top/SPECS", ".spec")


def test_a_file_over_its_limit_is_refused_and_one_within_it_is_copied(left_behind, tmp_path):
    with pytest.raises(InvalidInput, match="over the limit of 1024"):
        read_inside(left_behind, "kiln/big.spec", 1024)
    rel = "kiln/top/RPMS/x86_64/good-1.0-1.x86_64.rpm"
    assert copy_out(left_behind, rel, tmp_path / "good.rpm", 1024).read_bytes() == b"rpm bytes"


def test_the_sandbox_is_nobody_without_network_in_its_own_namespaces(tmp_path):
    argv = sandbox_argv(tmp_path / "root", ["rpm", "-i", "x.src.rpm"])
    unshare, chroot = argv[: argv.index("chroot")], argv[argv.index("chroot") :]
    assert {"--net", "--pid", "--mount", "--kill-child"} <= set(unshare)
    assert chroot[1:4] == ("--userspec=65534:65534", "--groups=65534", str(tmp_path / "root"))
    assert chroot[4:6] == ("/usr/bin/env", "-i") and argv[-3:] == ("rpm", "-i", "x.src.rpm")
