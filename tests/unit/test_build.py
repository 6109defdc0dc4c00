"""kiln build's loop (builder/pipeline/build.py): render, backend, manifest, ledger, the verification
gate, publishing, skips, and the pure dry run.

The DIB backend itself runs for real in tests/e2e (slow); here the guest-image/dib kind is
registered with a fake backend and verifier (tests/support/fakes.py), so the decisions are fast.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.backends.dib import parse_env_file, plan_command
from builder.cli import main
from builder.core.route import Found
from builder.core.targets import dependencies_first
from builder.errors import EnvironmentProblem
from builder.kinds import guest_dib
from builder.ledger import Ledger, TargetState
from builder.pipeline import publish as publishing
from builder.pipeline.build import BuildOptions, Pipeline
from builder.pipeline.graph import load_targets
from builder.publishers.routes import GLANCE
from builder.siteconfig import SiteConfig
from tests.support.fakes import FakeImageBackend, FakeVerifier, swapped_kind
from tests.support.recipes import MINIMAL_GUEST

GUEST = (
    MINIMAL_GUEST
    + """\
  elements: [vm]
  packages: [openssh-server]
  formats: [qcow2, raw]
  env: {DIB_CLOUD_INIT_DATASOURCES: "NoCloud, None"}
publish:
  glance: {visibility: public}
"""
)


@pytest.fixture
def fake_backend():
    backend = FakeImageBackend()
    with swapped_kind(guest_dib.KIND, backend=backend, verifier=lambda verify: None):
        yield backend


@pytest.fixture
def glance_calls(monkeypatch):
    """Publishing to Glance recorded instead of done: (target, visibility) per call; asked, the
    stand-in answers from what was published to it (a fresh ledger finds it there)."""
    calls: list[tuple[str, str]] = []
    held: set[tuple[str, str]] = set()

    def route(items, publishers, on_step):
        out = []
        for manifest, settings, _facts in ((i.manifest, i.settings, i.facts) for i in items):
            calls.append((manifest.target, settings.glance.visibility))
            held.add((manifest.target, manifest.digest))
            out.append(
                publishing.Publication(manifest.target, manifest.artifacts[0].name, "glance", "image-id")
            )
        return out

    def published_at(target, publishers, candidate=None, facts=None):
        return Found("image-id") if (target.id, target.digest) in held and candidate is None else None

    monkeypatch.setattr(GLANCE, "publish", route)
    monkeypatch.setattr(GLANCE, "published_at", published_at)
    return calls


def _kiln(workspace, ledger: Path, *argv: str) -> list[str]:
    return ["--root", str(workspace.root), "--ledger", str(ledger), *argv]


def test_the_dib_command_and_env_come_from_the_rendered_files(workspace, write, tmp_path):
    from builder.render import render_target

    write("recipes/g.yaml", GUEST)
    [target], _ = load_targets([workspace.recipes_dir], workspace)
    rendered = {f.path: f.content for f in render_target(target, workspace.templates_dir)}
    assert parse_env_file(rendered["dib.env"].decode()) == {
        "DIB_RELEASE": "bookworm",
        "DIB_CLOUD_INIT_DATASOURCES": "NoCloud, None",
    }
    command, outputs = plan_command(
        rendered, tmp_path / "out", {"DIB_DISTRIBUTION_MIRROR": "http://127.0.0.1/debian"}
    )
    assert command.argv[:3] == ("disk-image-create", "-a", "amd64")
    assert command.argv[-3:] == ("debian-minimal", "vm", "kiln-extra-ca")
    assert command.env["DIB_DISTRIBUTION_MIRROR"] == "http://127.0.0.1/debian"
    assert [o.format for o in outputs] == ["qcow2", "raw"]
    assert outputs[0].path == tmp_path / "out/image/g_bookworm_x86_64.qcow2"


def test_an_env_file_line_that_is_not_key_value_is_refused_with_its_line():
    from builder.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"dib.env:2: not a KEY=value line"):
        parse_env_file("A=1\nB='unterminated\n")


def test_build_writes_manifest_and_ledger_then_reuses_an_unchanged_target(
    workspace, write, tmp_path, fake_backend
):
    write("recipes/g.yaml", GUEST)
    [target], _ = load_targets([workspace.recipes_dir], workspace)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(workspace, SiteConfig(), ledger, build_root=tmp_path / "build")
        assert pipeline.existing_manifest(target) is None
        manifest = pipeline.build(target)
        assert fake_backend.built == [target.id]
        assert ledger.state(target.id, target.digest) is TargetState.UP_TO_DATE
        stored = json.loads((tmp_path / "build/g_bookworm_x86_64/manifest.json").read_text())
        assert stored["digest"] == target.digest
        assert stored["artifacts"][0]["path"] == "out/image/g_bookworm_x86_64.qcow2"
        assert stored["verification"] == {"status": "pending"}  # built, not yet through the gate
        assert stored["publish"]["glance"]["keep"] == 3  # defaults filled in by the model, once
        [record] = ledger.builds(target.id)
        assert record.tool_versions == {"diskimage-builder": "test"}
        assert ledger.artifacts(record.id)[0].sha256 == manifest.artifacts[0].sha256
        assert pipeline.existing_manifest(target) == manifest
        # A changed (or missing) artifact on disk means the earlier build cannot be reused.
        manifest.path_of(manifest.artifacts[0]).write_bytes(b"truncated")
        assert pipeline.existing_manifest(target) is None


def test_kiln_build_skips_an_unchanged_published_target_in_well_under_a_second(
    workspace, write, tmp_path, fake_backend, glance_calls, capsys
):
    write("recipes/g.yaml", GUEST)
    argv = _kiln(workspace, tmp_path / "ledger.sqlite", "build", "g", "--json")
    assert main([*argv, "--publish"]) == 0
    first = json.loads(capsys.readouterr().out)["targets"]
    assert [(t["status"], t["verification"]) for t in first] == [
        ("built", "off (the recipe: guest-image (dib) checks nothing here)")
    ]
    assert glance_calls == [("g:bookworm:x86_64", "public")]
    started = time.monotonic()
    assert main([*argv, "--publish"]) == 0
    elapsed = time.monotonic() - started
    again = json.loads(capsys.readouterr().out)["targets"]
    assert [t["status"] for t in again] == ["skipped"]
    assert elapsed < 1.0
    assert fake_backend.built == ["g:bookworm:x86_64"] and len(glance_calls) == 1  # built and published once


def test_a_failed_verification_then_build_publish_publishes_nothing(
    workspace, write, tmp_path, glance_calls, capsys
):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    backend, verifier = FakeImageBackend(), FakeVerifier(passes=False)
    with swapped_kind(guest_dib.KIND, backend=backend, verifier=lambda verify: verifier):
        assert main(_kiln(workspace, ledger_path, "build", "g", "--json")) == 4
        [first] = json.loads(capsys.readouterr().out)["targets"]
        assert first["status"] == "failed" and "no boot marker" in first["error"]
        # Again, now asking to publish: the build is reused, verified again (it fails again), and
        # nothing is published.
        assert main(_kiln(workspace, ledger_path, "build", "g", "--json", "--publish")) == 4
        [second] = json.loads(capsys.readouterr().out)["targets"]
    assert second["status"] == "failed" and "nothing published" in second["error"]
    assert backend.built == ["g:bookworm:x86_64"] and verifier.runs == ["g:bookworm:x86_64"] * 2
    assert glance_calls == []
    with Ledger(ledger_path) as ledger:
        [record] = ledger.builds("g:bookworm:x86_64")
        assert ledger.verification(record.id) == ("failed", "boot (fake): no boot marker within 30s")
        assert all(ledger.publications(a.id) == [] for a in ledger.artifacts(record.id))


def test_a_reused_build_that_was_never_verified_is_verified_before_it_is_published(
    workspace, write, tmp_path, glance_calls, capsys
):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    backend, verifier = FakeImageBackend(), FakeVerifier(passes=True)
    with swapped_kind(guest_dib.KIND, backend=backend, verifier=lambda verify: verifier):
        assert main(_kiln(workspace, ledger_path, "build", "g", "--no-verify", "--json")) == 0
        [first] = json.loads(capsys.readouterr().out)["targets"]
        assert first["verification"] == "off (kiln build --no-verify)" and verifier.runs == []
        assert main(_kiln(workspace, ledger_path, "build", "g", "--publish", "--json")) == 0
        [second] = json.loads(capsys.readouterr().out)["targets"]
    assert second["status"] == "reused" and second["verification"] == "passed (1 cases)"
    assert verifier.runs == ["g:bookworm:x86_64"] and backend.built == ["g:bookworm:x86_64"]
    assert glance_calls == [("g:bookworm:x86_64", "public")]
    assert (tmp_path / "ledger.sqlite").exists()


def test_kiln_publish_refuses_an_unverified_manifest_unless_allowed(
    workspace, write, tmp_path, glance_calls, capsys
):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    with swapped_kind(
        guest_dib.KIND, backend=FakeImageBackend(), verifier=lambda v: FakeVerifier(passes=False)
    ):
        main(_kiln(workspace, ledger_path, "build", "g", "--json"))
    capsys.readouterr()
    manifest = workspace.root / ".kiln/build/g_bookworm_x86_64/manifest.json"
    code = main(_kiln(workspace, ledger_path, "publish", str(manifest)))
    _, err = capsys.readouterr()
    assert code == 4 and glance_calls == []
    assert "g:bookworm:x86_64: verification failed (boot (fake): no boot marker within 30s)" in err
    assert "--allow-unverified" in err
    code = main(_kiln(workspace, ledger_path, "publish", str(manifest), "--allow-unverified", "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and glance_calls == [("g:bookworm:x86_64", "public")]
    assert doc["verification"] == {"g:bookworm:x86_64": "failed (boot (fake): no boot marker within 30s)"}


def _snapshot(root: Path) -> dict[str, bytes]:
    return (
        {
            str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))
        }
        if root.exists()
        else {}
    )


def test_a_dry_run_writes_records_and_probes_nothing_and_its_json_parses(
    workspace, write, tmp_path, fake_backend, monkeypatch, capsys
):
    write("recipes/g.yaml", GUEST)
    write(
        "recipes/top.yaml",
        "name: top\nkind: guest-image\narches: [x86_64]\nbuild: {builder: packer, "
        "distro: debian, release: bookworm, base: {recipe: g}, provisioners: [{shell: ['true']}]}\n",
    )
    ledger_path = tmp_path / "ledger.sqlite"
    assert main(_kiln(workspace, ledger_path, "build", "g", "--no-publish")) == 0  # a ledger and a build root
    capsys.readouterr()
    build_root = workspace.root / ".kiln"
    before = (_snapshot(build_root), hashlib.sha256(ledger_path.read_bytes()).hexdigest())

    def no_probe(*args, **kwargs):
        raise AssertionError("a dry run must not probe the host")

    monkeypatch.setattr("builder.verify.boot.probe_kvm", no_probe)
    monkeypatch.setattr("builder.host.compat.detect", no_probe)
    code = main(_kiln(workspace, ledger_path, "build", "top", "--dry-run", "--json"))
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)  # one JSON document, nothing else on stdout
    assert (_snapshot(build_root), hashlib.sha256(ledger_path.read_bytes()).hexdigest()) == before
    g, top = doc["targets"]  # the dependency first
    assert (g["target"], g["status"], top["target"]) == (
        "g:bookworm:x86_64",
        "dry-run",
        "top:bookworm:x86_64",
    )
    base_image = str(build_root / "build/g_bookworm_x86_64/out/image/g_bookworm_x86_64.qcow2")
    assert g["plan"]["outputs"][0] == base_image
    packer = top["plan"]["commands"][-1]["argv"]
    assert packer[:2] == ["packer", "build"] and f"base_image={base_image}" in packer  # named by path
    assert "accelerator=kvm-or-tcg" in packer


def test_a_dry_run_without_a_ledger_creates_none(workspace, write, tmp_path, capsys):
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "none" / "ledger.sqlite"
    assert main(_kiln(workspace, ledger_path, "build", "g", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "disk-image-create -a amd64" in out and "DIB_RELEASE=bookworm" in out
    assert not ledger_path.parent.exists() and not (workspace.root / ".kiln").exists()


def test_a_failed_build_is_recorded_and_exits_4(workspace, write, tmp_path, capsys):
    from builder.errors import CommandFailed

    backend = FakeImageBackend(fail_with=CommandFailed("disk-image-create: exited 1"))
    write("recipes/g.yaml", GUEST)
    ledger_path = tmp_path / "ledger.sqlite"
    with swapped_kind(guest_dib.KIND, backend=backend):
        code = main(_kiln(workspace, ledger_path, "build", "g", "--no-publish"))
    assert code == 4
    assert "disk-image-create: exited 1" in capsys.readouterr().out
    with Ledger(ledger_path) as ledger:
        [record] = ledger.builds("g:bookworm:x86_64")
        assert record.status == "failed" and "exited 1" in (record.error or "")


def test_kinds_without_a_backend_are_refused_clearly(workspace, write, tmp_path, capsys):
    from builder.kinds import container

    write("recipes/c.yaml", "name: c\nkind: container\narches: [x86_64]\nbuild: {release: bookworm}\n")
    with swapped_kind(container.KIND, backend=None):
        code = main(["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite"), "build", "c"])
    assert code == 4
    assert "kiln build does not build container yet" in capsys.readouterr().out


def test_dependencies_are_built_first_and_a_failed_one_stops_its_dependents(workspace, write, tmp_path):
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
    from builder.errors import CommandFailed

    failing = FakeImageBackend(fail_with=CommandFailed("disk-image-create: exited 1"))
    # A Target carries its Kind as resolved at expansion: swap the kind before loading.
    with swapped_kind(guest_dib.KIND, backend=failing), Ledger(tmp_path / "l.sqlite") as ledger:
        recipes = [workspace.recipes_dir / "top.yaml", workspace.recipes_dir / "base.yaml"]
        targets, problems = load_targets(recipes, workspace)
        assert problems == []
        assert [t.recipe for t in dependencies_first(targets)] == ["base", "top"]
        pipeline = Pipeline(workspace, SiteConfig(), ledger, build_root=tmp_path / "b")
        outcomes = pipeline.run(targets, BuildOptions())
    assert [(o.target, o.status) for o in outcomes] == [
        ("base:bookworm:x86_64", "failed"),
        ("top:bookworm:x86_64", "failed"),
    ]
    assert outcomes[1].error == "not built: base:bookworm:x86_64 failed"


def test_packer_machine_readable_lines_become_progress_and_argv_carries_run_vars(tmp_path):
    from builder.backends.packer import machine_readable_step, packer_command

    assert machine_readable_step("1700000000,,ui,say,==> qemu.image: Waiting for SSH...") == (
        "==> qemu.image: Waiting for SSH..."
    )
    assert machine_readable_step("1700000000,,ui,message,a%!(PACKER_COMMA) b") == "a, b"
    assert machine_readable_step("1700000000,qemu.image,artifact-count,1") is None
    command = packer_command(
        tmp_path / "render",
        tmp_path / "out",
        base_image=tmp_path / "b.qcow2",
        workspace_root=tmp_path,
        accelerator="tcg",
        ssh_private_key=tmp_path / "k",
        cache_dir=tmp_path,
    )
    assert command.argv[:4] == ("packer", "build", "-machine-readable", "-force")
    assert f"base_image={tmp_path / 'b.qcow2'}" in command.argv and "accelerator=tcg" in command.argv
    assert command.argv[-1] == "image.pkr.hcl" and command.env["CHECKPOINT_DISABLE"] == "1"


def test_dib_phase_lines_become_progress_steps():
    from builder.backends.dib import DibProgress

    steps: list[str] = []
    progress = DibProgress(steps.append)
    for line in (
        "2026-11-26 02:00:00.000 | dib-run-parts Running /tmp/dib_build.Ab/hooks/root.d/08-debootstrap",
        "2026-11-26 02:00:01.000 | + apt-get update",
        "2026-11-26 02:00:09.000 | dib-run-parts Running /tmp/dib_build.Ab/hooks/root.d/08-debootstrap",
        "dib-run-parts Running /tmp/in_target.d/install.d/01-package-installs",
        "2026-11-26 02:03:00.000 | Converting image using qemu-img convert",
    ):
        progress.line(line)
    assert steps == [
        "dib: root: 08-debootstrap",
        "dib: install: 01-package-installs",
        "dib: converting the image (qemu-img)",
    ]


def test_steps_rewrite_a_live_line_on_a_terminal_and_are_plain_lines_elsewhere():
    import io

    from builder.cli.common import StepPrinter

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, tty = io.StringIO(), Tty()
    for stream in (plain, tty):
        printer = StepPrinter("build", stream)
        printer("dib: root: 08-debootstrap")
        printer("dib: install: 01-package-installs")
        printer("g:bookworm:x86_64: built in 3.0s")
    assert plain.getvalue().splitlines() == [
        "build: dib: root: 08-debootstrap",
        "build: dib: install: 01-package-installs",
        "build: g:bookworm:x86_64: built in 3.0s",
    ]
    assert tty.getvalue().count("\n") == 1 and tty.getvalue().count("\r\x1b[K") == 3


def test_a_target_whose_build_host_is_elsewhere_is_refused_before_anything_runs(
    workspace, write, tmp_path, fake_backend
):
    write("recipes/g.yaml", GUEST.replace("arches: [x86_64]", "arches: [ppc64le]"))
    [target], _ = load_targets([workspace.recipes_dir], workspace)
    site = SiteConfig.model_validate({"build_hosts": {"ppc64le": {"mode": "native"}}})
    if Arch.host() is Arch.PPC64LE:
        pytest.skip("on a ppc64le host this target builds natively")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(workspace, site, ledger, build_root=tmp_path / "build")
        with pytest.raises(EnvironmentProblem, match=r"build_hosts\.ppc64le: mode native"):
            pipeline.build(target)
        assert fake_backend.built == [] and ledger.builds(target.id) == []
    assert not (tmp_path / "build").exists()
