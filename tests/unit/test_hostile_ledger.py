"""A damaged or foreign ledger: a clear error naming the file and what to do, never a traceback, never
a silent fresh start over a file that held something; two processes writing at once stay correct."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from builder.arch import Arch
from builder.errors import KilnError, LedgerError
from builder.ledger import Ledger
from builder.workspace import PACKAGE_ROOT


class FakeTarget:
    def __init__(self, digest: str = "d" * 64, id_: str = "g:bookworm:x86_64"):
        self.id = id_
        self.recipe = "g"
        self.kind = "guest-image"
        self.arch = Arch.X86_64
        self.digest = digest


def a_ledger(path: Path, builds: int = 3) -> Path:
    with Ledger(path) as ledger:
        for i in range(builds):
            build = ledger.start_build(FakeTarget(id_=f"g{i}:bookworm:x86_64"))
            ledger.finish_build(build, "succeeded", artifacts=[("disk", f"/x/{i}", "e" * 64, 10)])
    return path


def refused(path: Path) -> LedgerError:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(LedgerError) as info:
        Ledger(path)
    error = info.value
    assert isinstance(error, KilnError)
    assert str(path) in str(error)
    if before is not None:
        assert path.read_bytes() == before, "a refused ledger must be left as it was"
    return error


def test_random_bytes_are_not_a_ledger(tmp_path: Path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(os.urandom(8192))
    assert "not an SQLite database" in str(refused(path))


def test_a_text_file_is_not_a_ledger(tmp_path: Path):
    path = tmp_path / "ledger.sqlite"
    path.write_text("name: debian-12\nkind: guest-image\n")
    error = refused(path)
    assert "not an SQLite database" in str(error) and "move it away" in str(error)


def test_a_directory_is_refused(tmp_path: Path):
    path = tmp_path / "ledger.sqlite"
    path.mkdir()
    assert "is a directory" in str(refused(path))


def test_a_fifo_is_refused_at_once(tmp_path: Path):
    path = tmp_path / "ledger.sqlite"
    os.mkfifo(path)
    started = time.monotonic()
    assert "not a regular file" in str(refused(path))
    assert time.monotonic() - started < 5


def test_a_truncated_ledger_is_refused(tmp_path: Path):
    path = a_ledger(tmp_path / "ledger.sqlite", builds=400)
    size = path.stat().st_size
    assert size > 3 * 4096
    with path.open("r+b") as stream:
        stream.truncate(size // 2 + 100)  # mid-page
    assert "truncated" in str(refused(path))


def test_a_garbled_page_is_an_error_naming_the_file(tmp_path: Path):
    path = a_ledger(tmp_path / "ledger.sqlite", builds=400)
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as stream:  # every page but the first (the schema) overwritten
        stream.seek(page)
        stream.write(b"\xa5" * (path.stat().st_size - page))
    with pytest.raises(LedgerError, match=f"ledger {path}: damaged or unreadable"), Ledger(path) as ledger:
        ledger.states()


@pytest.mark.parametrize(("value", "message"), [("99", "newer than this Kiln"), ("one", "is not a number")])
def test_a_newer_or_non_integer_schema_version_is_refused(tmp_path: Path, value: str, message: str):
    path = a_ledger(tmp_path / "ledger.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (value,))
    assert message in str(refused(path))


def test_a_missing_table_is_refused_not_recreated(tmp_path: Path):
    path = a_ledger(tmp_path / "ledger.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DROP TABLE publications")
    assert "table publications missing" in str(refused(path))
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "publications" not in tables


def test_another_programs_database_is_not_taken_over(tmp_path: Path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    assert "not a Kiln ledger (tables: notes)" in str(refused(path))
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}


def test_a_zero_byte_file_becomes_a_new_ledger(tmp_path: Path):
    # Decision: 0 bytes hold nothing to lose (sqlite creates the file before its first write, so a
    # process stopped in between leaves exactly this), so it is initialised like a missing file.
    path = tmp_path / "ledger.sqlite"
    path.touch()
    with Ledger(path) as ledger:
        assert ledger.states() == {}
    assert path.stat().st_size > 0


def test_plan_json_reports_a_damaged_ledger_as_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from builder.cli import main

    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes(b"garbage" * 100)
    code = main(["--root", str(PACKAGE_ROOT), "--ledger", str(ledger), "plan", "--json"])
    out = capsys.readouterr()
    assert code == 1
    problems = json.loads(out.out)["problems"]
    assert [p["message"] for p in problems] == [
        f"ledger {ledger}: not an SQLite database (it starts with b'garbagegarbagega'), so not a Kiln "
        "ledger; move it away (Kiln then starts a new, empty ledger) or point --ledger / $KILN_LEDGER "
        "elsewhere"
    ]
    assert "Traceback" not in out.err


WRITER = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from builder.arch import Arch
    from builder.ledger import Ledger

    here = Path(sys.argv[1]).parent.parent
    (here / f"ready-{sys.argv[2]}").touch()
    while not (here / "go").exists():  # both start writing at the same moment
        time.sleep(0.005)

    class T:
        recipe, kind, arch = "g", "guest-image", Arch.X86_64
        def __init__(self, i):
            self.id, self.digest = f"g:{sys.argv[2]}{i % 7}:x86_64", f"{i:064d}"

    with Ledger(Path(sys.argv[1])) as ledger:
        for i in range(int(sys.argv[3])):
            build = ledger.start_build(T(i))
            ledger.finish_build(build, "succeeded", artifacts=[("disk", f"/{sys.argv[2]}/{i}", "e" * 64, i)])
    """
)


def test_two_processes_writing_builds_at_once_stay_correct(tmp_path: Path):
    path = tmp_path / "new" / "ledger.sqlite"  # both processes also create it
    n = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, str(n)],
            cwd=PACKAGE_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{name}").exists() for name in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    db = sqlite3.connect(path)
    counted = "SELECT COUNT(*), COUNT(DISTINCT id) FROM builds WHERE status='succeeded'"
    assert db.execute(counted).fetchone() == (2 * n, 2 * n)
    assert db.execute("SELECT COUNT(*) FROM artifacts").fetchone() == (2 * n,)
    assert db.execute("SELECT COUNT(*) FROM targets").fetchone() == (14,)
    assert db.execute("SELECT value FROM meta").fetchall() == [("1",)]
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    writers = [row[0][3] for row in db.execute("SELECT target_id FROM builds ORDER BY id")]
    switches = sum(1 for x, y in itertools.pairwise(writers) if x != y)
    assert switches > 1, "the two writers did not overlap"
