"""kiln build's orchestration: render, run the backend, manifest, ledger, skip when nothing changed.

The DIB backend itself runs for real in tests/e2e (slow); here it is replaced by a function that
writes an image file, so the decisions around it are tested fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.backends.dib import plan_run, read_env_file
from builder.build import Builder
from builder.cli import main
from builder.errors import EnvironmentProblem
from builder.ledger import Ledger, TargetState
from builder.manifest import artifact_for
from builder.siteconfig import SiteConfig
from builder.targets import load_targets
from tests.support.recipes import MINIMAL_GUEST

GUEST = (
    MINIMAL_GUEST
    + """\
  elements: [vm]
  packages: [openssh-server]
  formats: [qcow2, raw]
  env: {DIB_CLOUD_INIT_DATASOURCES: "NoCloud, None"}
verify:
  boot: {enabled: false}
"""
)


def test_env_file_and_argv_come_from_the_render_dir(workspace, write, tmp_path):
    write("recipes/g.yaml", GUEST)
    [target], _ = load_targets([workspace.recipes_dir], workspace)
    from builder.render import render_target, write_rendered

    render_dir = tmp_path / "render"
    write_rendered(render_target(target, workspace.templates_dir), render_dir)
    assert read_env_file(render_dir / "dib.env") == {
        "DIB_RELEASE": "bookworm",
        "DIB_CLOUD_INIT_DATASOURCES": "NoCloud, None",
    }
    run = plan_run(render_dir, tmp_path / "out", {"DIB_DISTRIBUTION_MIRROR": "http://127.0.0.1/debian"})
    assert run.argv[:3] == ["disk-image-create", "-a", "amd64"]
    assert run.env["DIB_DISTRIBUTION_MIRROR"] == "http://127.0.0.1/debian"
    assert [fmt for _, fmt in run.outputs] == ["qcow2", "raw"]
    assert run.outputs[0][0] == tmp_path / "out/image/g_bookworm_x86_64.qcow2"


@pytest.fixture
def fake_backend(monkeypatch):
    calls: list[str] = []

    def run_backend(self, target, render_dir, out_dir, log):
        calls.append(target.id)
        assert (render_dir / "build.json").exists()
        image = out_dir / "image" / f"{target.slug}.qcow2"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"QFI\xfb" + target.digest.encode())
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("fake build\n")
        return [artifact_for(out_dir, image, "image", "disk-image", "qcow2")], {"diskimage-builder": "test"}

    monkeypatch.setattr(Builder, "_run_backend", run_backend)
    return calls


def test_build_writes_manifest_and_ledger_then_reuses_an_unchanged_target(
    workspace, write, tmp_path, fake_backend
):
    write("recipes/g.yaml", GUEST)
    [target], _ = load_targets([workspace.recipes_dir], workspace)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        builder = Builder(workspace, SiteConfig(), ledger, build_root=tmp_path / "build")
        assert builder.existing_manifest(target) is None
        manifest = builder.build(target)
        assert fake_backend == [target.id]
        assert ledger.state(target.id, target.digest) is TargetState.UP_TO_DATE
        stored = json.loads((tmp_path / "build/g_bookworm_x86_64/manifest.json").read_text())
        assert stored["digest"] == target.digest and stored["artifacts"][0]["path"] == (
            "out/image/g_bookworm_x86_64.qcow2"
        )
        [record] = ledger.builds(target.id)
        assert record.tool_versions == {"diskimage-builder": "test"}
        assert ledger.artifacts(record.id)[0].sha256 == manifest.artifacts[0].sha256
        assert builder.existing_manifest(target) == manifest
        # A changed (or missing) artifact on disk means the earlier build cannot be reused.
        image = manifest.path_of(manifest.artifacts[0])
        image.write_bytes(b"truncated")
        assert builder.existing_manifest(target) is None


def test_kiln_build_skips_an_unchanged_published_target_in_well_under_a_second(
    workspace, write, tmp_path, fake_backend, capsys
):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    argv = [
        "--root",
        str(workspace.root),
        "--ledger",
        str(ledger_path),
        "build",
        "g",
        "--json",
        "--no-publish",
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)["targets"]
    assert [t["status"] for t in first] == ["built"]
    # Record a publication, as kiln publish would, then build again: nothing to do at all.
    with Ledger(ledger_path) as ledger:
        [record] = ledger.builds("g:bookworm:x86_64")
        ledger.record_publication(ledger.artifacts(record.id)[0].id, "glance", "image-id")
    started = time.monotonic()
    assert main([*argv[:-1], "--publish"]) == 0
    elapsed = time.monotonic() - started
    again = json.loads(capsys.readouterr().out)["targets"]
    assert [t["status"] for t in again] == ["skipped"]
    assert elapsed < 1.0
    assert fake_backend == ["g:bookworm:x86_64"]  # built once


def test_a_failed_build_is_recorded_and_exits_4(workspace, write, tmp_path, monkeypatch, capsys):
    from builder.errors import CommandFailed

    def failing(self, target, render_dir, out_dir, log):
        raise CommandFailed("disk-image-create: exited 1")

    monkeypatch.setattr(Builder, "_run_backend", failing)
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    code = main(["--root", str(workspace.root), "--ledger", str(ledger_path), "build", "g", "--no-publish"])
    assert code == 4
    assert "disk-image-create: exited 1" in capsys.readouterr().out
    with Ledger(ledger_path) as ledger:
        [record] = ledger.builds("g:bookworm:x86_64")
        assert record.status == "failed" and "exited 1" in (record.error or "")


def test_kinds_without_a_backend_are_refused_clearly(workspace, write, tmp_path, capsys):
    write("recipes/c.yaml", "name: c\nkind: container\narches: [x86_64]\nbuild: {release: bookworm}\n")
    code = main(["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite"), "build", "c"])
    assert code == 4
    assert "kiln build does not build container yet" in capsys.readouterr().out


def test_dependencies_are_built_first(workspace, write, tmp_path, fake_backend, monkeypatch):
    from builder.cli import _dependencies_first

    write(
        "recipes/base.yaml",
        "name: base\nkind: guest-image\narches: [x86_64]\n"
        "build: {builder: dib, distro: debian, release: bookworm}\n",
    )
    write(
        "recipes/top.yaml",
        "name: top\nkind: guest-image\narches: [x86_64]\nbuild: {builder: packer, "
        "distro: debian, release: bookworm, base: {recipe: base}, provisioners: [{shell: ['true']}]}\n",
    )
    targets, problems = load_targets(
        [workspace.recipes_dir / "top.yaml", workspace.recipes_dir / "base.yaml"], workspace
    )
    assert problems == []
    assert [t.recipe for t in _dependencies_first(targets)] == ["base", "top"]
    assert Path(workspace.root).exists()


def test_packer_machine_readable_lines_become_progress_and_argv_carries_run_vars(tmp_path):
    from builder.backends.packer import machine_readable_step, plan_run

    assert machine_readable_step("1700000000,,ui,say,==> qemu.image: Waiting for SSH...") == (
        "==> qemu.image: Waiting for SSH..."
    )
    assert machine_readable_step("1700000000,,ui,message,a%!(PACKER_COMMA) b") == "a, b"
    assert machine_readable_step("1700000000,qemu.image,artifact-count,1") is None
    run = plan_run(
        tmp_path / "render",
        tmp_path / "out",
        slug="s",
        fmt="qcow2",
        base_image=tmp_path / "b.qcow2",
        workspace_root=tmp_path,
        accelerator="tcg",
        ssh_private_key=tmp_path / "k",
        cache_dir=tmp_path,
    )
    assert run.argv[:4] == ["packer", "build", "-machine-readable", "-force"]
    assert f"base_image={tmp_path / 'b.qcow2'}" in run.argv and "accelerator=tcg" in run.argv
    assert run.argv[-1] == "image.pkr.hcl" and run.output == tmp_path / "out/image/s.qcow2"
    assert run.env["CHECKPOINT_DISABLE"] == "1"


def test_a_target_whose_build_host_is_elsewhere_is_refused_before_anything_runs(
    workspace, write, tmp_path, fake_backend
):
    write("recipes/g.yaml", GUEST.replace("arches: [x86_64]", "arches: [ppc64le]"))
    [target], _ = load_targets([workspace.recipes_dir], workspace)
    site = SiteConfig.model_validate({"build_hosts": {"ppc64le": {"mode": "native"}}})
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        builder = Builder(workspace, site, ledger, build_root=tmp_path / "build")
        if Arch.host() is Arch.PPC64LE:
            pytest.skip("on a ppc64le host this target builds natively")
        with pytest.raises(EnvironmentProblem, match=r"build_hosts\.ppc64le: mode native"):
            builder.build(target)
        assert fake_backend == [] and ledger.builds(target.id) == []
        assert not (tmp_path / "build").exists()
