"""A damaged ledger (bytes flipped on disk) and one Kiln may not write are errors that say which, name
the file and exit 1: never a traceback (exit 70), never a silent new ledger."""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.cli import main
from builder.errors import LedgerError
from builder.ledger import Ledger, _value_problem
from tests.support.recipes import MINIMAL_GUEST

RUNS = 120  # as in the issue: 9 of 120 ended as exit 70


def _target(i: int) -> SimpleNamespace:
    arch = ("x86_64", "ppc64le")[i % 2]
    return SimpleNamespace(
        id=f"r{i % 5}:bookworm:{arch}",
        recipe=f"r{i % 5}",
        kind="guest-image",
        arch=SimpleNamespace(value=arch),
        digest=f"{i:064d}",
    )


def a_real_ledger(path: Path) -> Path:
    """A ledger with every table in use: builds (succeeded and failed), artifacts, verifications,
    publications, attestations, build facts."""
    with Ledger(path) as ledger:
        for i in range(30):
            build = ledger.start_build(_target(i), log_path=f"/tmp/kiln-build/{i}.log")
            [artifact] = ledger.finish_build(
                build,
                "succeeded" if i % 3 else "failed",
                artifacts=[("image", f"/b/{i}.qcow2", "ab" * 32, 1000 + i)],
                tool_versions={"dib": "3.43.0", "qemu-img": "7.2"},
                error=None if i % 3 else "disk-image-create exited 1 (é)",
            )
            ledger.record_verification(build, "passed", "12 cases")
            ledger.record_publication(artifact, "glance", f"image-{i}")
            ledger.record_attestations(build, [("image", "provenance", f"/b/{i}.intoto.json", "c" * 64)])
            ledger.record_build_facts(build, {"base": {"digest": "e" * 64, "state": "reused"}})
    return path


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture
def small_workspace(workspace, write):
    write("recipes/r0.yaml", MINIMAL_GUEST.replace("name: g", "name: r0"))
    return workspace


def test_byte_damaged_ledgers_are_exit_0_or_1_never_70(small_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_BUILD_ROOT", str(tmp_path / "build"))
    good = a_real_ledger(tmp_path / "good.sqlite").read_bytes()
    codes: dict[int, int] = {}
    for run in range(RUNS):
        rng = random.Random(run)
        damaged = bytearray(good)
        for _ in range(rng.randrange(1, 20)):
            damaged[rng.randrange(100, len(damaged))] = rng.randrange(256)  # past the file header
        path = tmp_path / f"damaged-{run}.sqlite"
        path.write_bytes(bytes(damaged))
        command = ("plan", "history", "report")[run % 3]
        extra = ["--html", str(tmp_path / f"html-{run}")] if command == "report" else []
        code, err = _run(["--root", str(small_workspace.root), "--ledger", str(path), command, *extra])
        assert code in (0, 1), f"seed {run}, kiln {command}: exit {code}: {err}"
        if code == 1:
            assert f"ledger {path}: " in err and ("damaged" in err or "truncated" in err), (
                f"seed {run}: {err}"
            )
            assert "not writable" not in err
            assert "Traceback" not in err and "\n" not in err.rstrip("\n")
        assert path.stat().st_size >= len(good) // 2, "never a silent new ledger"
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(1, 0) >= RUNS // 10  # the damage was met, not skipped


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """``path`` made unwritable for real: as root (these tests run as root) chmod does not stop a
    write, so the file is made immutable (chattr +i, which root obeys); otherwise chmod 0444."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield "chmod 0444"
        finally:
            path.chmod(0o644)
        return
    chattr = shutil.which("chattr")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True) if chattr else None
    if done is None or done.returncode != 0:
        pytest.skip("chattr +i is not available on this file system (needed to refuse root a write)")
    try:
        yield "chattr +i"
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.mark.parametrize("command", ["plan", "history", "report"])
def test_a_read_only_ledger_is_called_not_writable_not_damaged(
    small_workspace, tmp_path, monkeypatch, command
):
    monkeypatch.setenv("KILN_BUILD_ROOT", str(tmp_path / "build"))
    path = a_real_ledger(tmp_path / "ledger.sqlite")
    before = path.read_bytes()
    extra = ["--html", str(tmp_path / "html")] if command == "report" else []
    with read_only(path):
        code, err = _run(["--root", str(small_workspace.root), "--ledger", str(path), command, *extra])
    assert code == 1, err
    assert f"ledger {path}: not writable" in err and "damaged" not in err and "backup" not in err
    assert path.read_bytes() == before


def test_a_read_only_ledger_raises_ledger_error_from_the_api(tmp_path):
    path = a_real_ledger(tmp_path / "ledger.sqlite")
    with read_only(path), pytest.raises(LedgerError, match="not writable"):
        Ledger(path)


def test_undecodable_text_in_a_row_is_damage_naming_the_file(tmp_path):
    import sqlite3

    path = a_real_ledger(tmp_path / "ledger.sqlite")
    db = sqlite3.connect(path)
    db.execute("UPDATE builds SET log_path = CAST(x'2f746d70ff' AS TEXT) WHERE id = 2")
    db.commit()
    db.close()
    with Ledger(path) as ledger, pytest.raises(LedgerError, match=f"ledger {path}: damaged"):
        ledger.history()


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("started_at", math.nan, "is not a time"),
        ("finished_at", 1e300, "is not a time"),
        ("started_at", "yesterday", "is not a time"),
        ("status", "succ\x00eded", "is not a status"),
        ("size", -1, "is not a count"),
        ("id", 1.5, "is not a count"),
        ("tool_versions", "{broken", "is not a JSON object"),
        ("target_id", b"\xff", "is binary"),
        ("digest", 7, "is not text"),
        ("target_id", None, "is missing"),
    ],
)
def test_a_value_a_healthy_ledger_cannot_hold_is_damage(column, value, problem):
    assert problem in (_value_problem(column, value) or "")


def test_what_a_healthy_ledger_holds_passes():
    for column, value in [("started_at", 1.7e9), ("finished_at", None), ("size", 0), ("status", "off"),
                          ("tool_versions", "{}"), ("log_path", None), ("COUNT(*)", 3)]:  # fmt: skip
        assert _value_problem(column, value) is None
