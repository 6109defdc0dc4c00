"""Backends' plans seen through `--dry-run` (pure): the IPA ramdisk per arch, and `kiln rpm rebuild`."""

from __future__ import annotations

import json

from builder.cli import main
from builder.workspace import PACKAGE_ROOT


def _plans(capsys, tmp_path) -> dict[str, dict]:
    argv = ["--root", str(PACKAGE_ROOT), "--ledger", str(tmp_path / "l.sqlite")]
    assert main([*argv, "build", "ipa-bookworm", "--dry-run", "--json"]) == 0
    return {t["target"]: t["plan"] for t in json.loads(capsys.readouterr().out)["targets"]}


def test_ppc64le_renders_with_arch_ppc64el_and_builds_no_iso(capsys, tmp_path):
    plan = _plans(capsys, tmp_path)["ipa-bookworm:bookworm:ppc64le"]
    [command] = plan["commands"]  # no grub-mkrescue: POWER boots kernel + initramfs (petitboot)
    assert command["env"]["ARCH"] == "ppc64el"
    assert "--extra-args=-a ppc64el" in command["argv"]
    assert [o.rsplit(".", 1)[-1] for o in plan["outputs"]] == ["kernel", "initramfs"]


def test_x86_64_builds_kernel_initramfs_and_a_grub_iso_from_local_git_repos(capsys, tmp_path):
    plan = _plans(capsys, tmp_path)["ipa-bookworm:bookworm:x86_64"]
    build, iso = plan["commands"]
    assert build["argv"][0] == "ironic-python-agent-builder" and iso["argv"][0] == "grub-mkrescue"
    env = build["env"]
    assert env["ARCH"] == "amd64"
    assert env["DIB_REPOLOCATION_ironic_python_agent"].startswith("file:///")
    assert env["DIB_REPOREF_ironic_python_agent"] == "13.0.0"  # the recipe's pin, as a git tag
    assert env["DIB_REPOREF_glean"] == "1.25.1"
    assert env["KILN_IPA_PACKAGES"].split() == ["lvm2", "mdadm"]  # raid: true adds mdadm
    assert [o.rsplit(".", 1)[-1] for o in plan["outputs"]] == ["kernel", "initramfs", "iso"]
    assert all(o.startswith("/") for o in plan["outputs"])


def test_kiln_rpm_rebuild_dry_run_runs_through_kiln_builds_options(capsys, tmp_path, workspace):
    """`kiln rpm rebuild` reuses `kiln build`: every option the latter reads must exist for it. (A
    workspace of the test's own: the ad hoc recipe is written under its .kiln/adhoc/.)"""
    srpm = PACKAGE_ROOT / "files" / "srpms" / "kiln-hello-1.0-1.src.rpm"
    argv = ["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite"), "rpm", "rebuild"]
    code = main([*argv, str(srpm), "--arch", "ppc64le", "--no-verify-signature", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rpmbuild --target ppc64le" in out


def test_a_site_that_reaches_the_git_host_clones_upstream_at_the_pinned_tags(capsys, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("ipa: {upstream_git: true}\n")
    argv = ["--root", str(PACKAGE_ROOT), "--site", str(site), "--ledger", str(tmp_path / "l.sqlite")]
    assert main([*argv, "build", "ipa-bookworm", "--arch", "x86_64", "--dry-run", "--json"]) == 0
    [target] = json.loads(capsys.readouterr().out)["targets"]
    env = target["plan"]["commands"][0]["env"]
    assert not [k for k in env if k.startswith("DIB_REPOLOCATION_")]  # the elements' own URLs
    assert env["DIB_REPOREF_ironic_python_agent"] == "13.0.0"
