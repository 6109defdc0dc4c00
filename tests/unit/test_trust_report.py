"""A path from a ledger row is data: `kiln report` copies logs and statements only from below Kiln's
build root (symlinks resolved), through the writer that never follows a symlink; `kiln show` reads a
log tail the same way. Anything else is "log not available"."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.cli import main
from builder.ledger import Ledger
from builder.outdir import read_below
from builder.workspace import Workspace

SECRET = "root:$6$not-for-the-page$:19000:0:99999:7:::"


def _target(target_id: str) -> SimpleNamespace:
    recipe, _, arch = target_id.split(":")
    return SimpleNamespace(
        id=target_id, recipe=recipe, kind="guest-image", arch=SimpleNamespace(value=arch), digest="d"
    )


@pytest.fixture
def tree(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A build root (KILN_BUILD_ROOT), a secret outside it, and a ledger whose rows name logs and
    statements inside it, outside it, and through a symlink under it that points outside. (After the
    workspace fixture, which clears the session's KILN_* variables.)"""
    build_root = tmp_path / "build"
    logs = build_root / "t_bookworm_x86_64" / "logs"
    logs.mkdir(parents=True)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    good_log = logs / "build-1.log"
    good_log.write_text("a good log\n")
    (logs / "escape.log").symlink_to(secret)
    statement = build_root / "t_bookworm_x86_64" / "out" / "image.qcow2.intoto.json"
    statement.parent.mkdir()
    statement.write_text('{"good": "statement"}')
    (statement.parent / (statement.name + ".asc")).write_text("signature")
    (build_root / "t_bookworm_x86_64" / "out" / "evil.intoto.json").symlink_to(secret)
    shadow = "/etc/shadow" if os.path.exists("/etc/shadow") else str(secret)
    ledger = tmp_path / "ledger.sqlite"
    rows = [
        ("good:bookworm:x86_64", str(good_log), str(statement)),
        ("shadow:bookworm:x86_64", shadow, shadow),
        ("outside:bookworm:x86_64", str(secret), str(secret)),
        ("link:bookworm:x86_64", str(logs / "escape.log"), str(statement.parent / "evil.intoto.json")),
        ("dotdot:bookworm:x86_64", str(logs / ".." / ".." / ".." / "shadow"), str(build_root)),
    ]
    with Ledger(ledger) as records:
        for target_id, log, provenance in rows:
            build = records.start_build(_target(target_id), log_path=log)
            records.finish_build(build, "succeeded", artifacts=[("image", "/b/x", "ab" * 32, 1)])
            records.record_attestations(build, [("image", "provenance", provenance, "c" * 64)])
    monkeypatch.setenv("KILN_BUILD_ROOT", str(build_root))
    return SimpleNamespace(build_root=build_root, ledger=ledger, secret=secret, shadow=shadow)


def _everything_below(directory: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())


def test_the_report_copies_only_logs_and_statements_below_the_build_root(tree, workspace, tmp_path, capsys):
    out = tmp_path / "public"
    assert (
        main(["--root", str(workspace.root), "--ledger", str(tree.ledger), "report", "--html", str(out)]) == 0
    )
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert copied == [
        "index.html",
        "logs/build-1.log",
        "matrix.json",
        "provenance/build-1-image.qcow2.intoto.json",
        "provenance/build-1-image.qcow2.intoto.json.asc",
    ]
    assert (out / "logs" / "build-1.log").read_text() == "a good log\n"
    page = (out / "index.html").read_text()
    assert page.count("log not available") == 4  # /etc/shadow, outside, a symlink out, ../ out
    assert SECRET not in _everything_below(out)
    if tree.shadow == "/etc/shadow":
        assert Path("/etc/shadow").read_text()[:20] not in (out / "index.html").read_text()


def test_the_report_never_writes_through_a_symlink_planted_in_its_directory(
    tree, workspace, tmp_path, capsys
):
    out = tmp_path / "public"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "logs").symlink_to(elsewhere)
    code = main(["--root", str(workspace.root), "--ledger", str(tree.ledger), "report", "--html", str(out)])
    assert code == 1 and "a symlink inside the output directory" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_show_prints_no_log_from_outside_the_build_root(tree, workspace, capsys):
    argv = ["--root", str(workspace.root), "--ledger", str(tree.ledger), "show"]
    for build in ("2", "3", "4"):
        assert main([*argv, build]) == 0
        out = capsys.readouterr().out
        assert SECRET not in out and "not available: not a file below Kiln's build root" in out
    assert main([*argv, "1"]) == 0
    assert "a good log" in capsys.readouterr().out


def test_read_below_refuses_what_is_not_a_regular_file_below_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"0123456789")
    os.mkfifo(root / "fifo")
    assert read_below(root, str(root / "d" / "f")) == b"0123456789"
    assert read_below(root, str(root / "d" / "f"), tail=3) == b"789"
    assert read_below(root, str(root / "d" / "f"), limit=5) is None
    assert read_below(root, str(root / "fifo")) is None  # and it does not block
    assert read_below(root, str(root / "d")) is None
    assert read_below(root, str(root)) is None
    assert read_below(root, str(root / "missing")) is None
    assert read_below(root, "") is None  # the working directory, not below the root
    assert read_below(root, "x\x00y") is None
