"""The ledger: a sqlite record of targets, builds, artifacts and publications.

Embedded by default at ``.kiln/ledger.sqlite`` (``--ledger`` or ``$KILN_LEDGER`` to move it). Writes
are single transactions, so a crash never leaves a build half-recorded; WAL mode lets ``kiln plan``
read while a build writes.

What the file holds is checked as it is read: a row whose text is not UTF-8, or whose values are of
the wrong type or out of range (a byte flipped on disk), is a LedgerError saying the ledger is damaged,
as is an error sqlite reports for a damaged page; a file Kiln may not write or open is a LedgerError
saying that instead. Each names the file and is exit 1, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import LedgerError

SCHEMA_VERSION = 1
# Tables every ledger of SCHEMA_VERSION has; later additions to _SCHEMA are created when missing.
_CORE_TABLES = ("meta", "targets", "builds", "artifacts", "publications")
_SQLITE_HEADER = b"SQLite format 3\x00"
_MOVE_AWAY = "move it away (Kiln then starts a new, empty ledger) or point --ledger / $KILN_LEDGER elsewhere"
_RESTORE = "restore it from a backup, or " + _MOVE_AWAY + " (its build history is then lost)"
_WRITABLE = (
    "Kiln opens its ledger for writing, also to read it: make the file and its directory writable by "
    "this user, or point --ledger / $KILN_LEDGER at a writable copy"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (
    id TEXT PRIMARY KEY,            -- recipe:release[+variant]:arch
    recipe TEXT NOT NULL,
    kind TEXT NOT NULL,
    arch TEXT NOT NULL,
    last_digest TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id TEXT NOT NULL REFERENCES targets(id),
    digest TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    started_at REAL NOT NULL,
    finished_at REAL,
    log_path TEXT,
    tool_versions TEXT NOT NULL DEFAULT '{}',   -- JSON object
    error TEXT
);
CREATE INDEX IF NOT EXISTS builds_by_target ON builds(target_id, digest, status);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id INTEGER NOT NULL REFERENCES builds(id),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id INTEGER NOT NULL REFERENCES builds(id),
    status TEXT NOT NULL CHECK (status IN ('passed', 'failed', 'off')),
    detail TEXT NOT NULL DEFAULT '',  -- what decided: the failing case, or who switched it off
    verified_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attestations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id INTEGER NOT NULL REFERENCES builds(id),
    artifact TEXT NOT NULL DEFAULT '',  -- the artifact's name; '' for the whole build (the SBOM)
    type TEXT NOT NULL,                 -- provenance, signature, sbom
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL DEFAULT '',
    recorded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS build_facts (
    build_id INTEGER PRIMARY KEY REFERENCES builds(id),
    base_digest TEXT,                 -- the base tree it started from (DIB), NULL: none
    base_state TEXT,                  -- reused, recorded, off
    facts TEXT NOT NULL DEFAULT '{}'  -- JSON: the backend's build facts (base, phase times)
);
CREATE TABLE IF NOT EXISTS publications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    publisher TEXT NOT NULL,      -- glance, registry, repo
    location TEXT NOT NULL,       -- image id, pushed reference, repo URL
    published_at REAL NOT NULL
);
"""


# A candidate's publication (kiln build --candidate) is recorded as "<publisher>:candidate:<id>"; it
# never makes a target count as published to production.
CANDIDATE_MARK = ":candidate:"


def candidate_publisher(publisher: str, candidate: str) -> str:
    return f"{publisher}{CANDIDATE_MARK}{candidate}"


class TargetState(StrEnum):
    UP_TO_DATE = "up to date"  # a successful build of this exact digest exists
    STALE = "stale"  # built before, but its inputs changed since
    NEVER_BUILT = "never built"


@dataclass(frozen=True)
class BuildRecord:
    id: int
    target_id: str
    digest: str
    status: str
    started_at: float
    finished_at: float | None
    log_path: str | None
    tool_versions: dict[str, str]
    error: str | None


@dataclass(frozen=True)
class ArtifactRecord:
    id: int
    build_id: int
    name: str
    path: str
    sha256: str
    size: int


class Ledger:
    def __init__(self, path: Path):
        """Open the ledger at ``path``, creating it when absent (or empty: 0 bytes, as left by a
        process stopped before its first write, or by ``touch``; there is nothing in it to lose).
        Anything else that is not a Kiln ledger of this schema or older is refused (LedgerError)
        and left as it is: Kiln never starts over on a file that holds something."""
        self.path = path
        _check_file(path)
        try:
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, factory=_Connection)
            self._db.ledger_path = path
        except sqlite3.Error as exc:
            raise LedgerError(path, f"cannot open ({exc})", "check the path and its permissions") from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA foreign_keys=ON")
            self._open_schema()  # before WAL is switched on: that would write to a foreign database
            if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            self._db.close()
            raise ledger_error(path, exc) from None
        except BaseException:
            self._db.close()
            raise

    def _open_schema(self) -> None:
        """Create the schema in a new ledger, or check an existing one, in one write transaction so
        that two Kiln processes opening a new ledger at once create it once."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables:
                self._check_existing(tables)
            for statement in _statements(_SCHEMA):
                db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _check_existing(self, tables: set[str]) -> None:
        path, db = self.path, self._db
        if "meta" not in tables:
            listed = ", ".join(sorted(tables)[:8])
            raise LedgerError(
                path, f"an SQLite database, but not a Kiln ledger (tables: {listed})", _MOVE_AWAY
            )
        found = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if found is None:
            raise LedgerError(
                path, "no schema version in its meta table: damaged, or not a Kiln ledger", _RESTORE
            )
        try:
            version = int(str(found[0]).strip())
        except ValueError:
            raise LedgerError(
                path, f"schema version {str(found[0])[:40]!r} is not a number: damaged", _RESTORE
            ) from None
        if version > SCHEMA_VERSION:
            raise LedgerError(
                path,
                f"ledger schema {version} is newer than this Kiln ({SCHEMA_VERSION})",
                "use the Kiln that wrote it (or a newer one), or another ledger",
            )
        missing = [t for t in _CORE_TABLES if t not in tables]
        if missing:
            raise LedgerError(path, f"table {', '.join(missing)} missing: damaged", _RESTORE)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- builds ---------------------------------------------------------------------------------------

    def start_build(self, target: Any, log_path: str | None = None) -> int:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO targets (id, recipe, kind, arch, last_digest, updated_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET "
                "last_digest=excluded.last_digest, updated_at=excluded.updated_at",
                (target.id, target.recipe, target.kind, target.arch.value, target.digest, now),
            )
            cursor = db.execute(
                "INSERT INTO builds (target_id, digest, status, started_at, log_path) VALUES (?,?,?,?,?)",
                (target.id, target.digest, "running", now, log_path),
            )
            return int(cursor.lastrowid or 0)

    def finish_build(
        self,
        build_id: int,
        status: str,
        *,
        artifacts: Iterable[tuple[str, str, str, int]] = (),
        tool_versions: dict[str, str] | None = None,
        error: str | None = None,
    ) -> list[int]:
        """Close a build and record its artifacts (name, path, sha256, size) in one transaction."""
        with self._tx() as db:
            db.execute(
                "UPDATE builds SET status=?, finished_at=?, tool_versions=?, error=? WHERE id=?",
                (status, time.time(), json.dumps(tool_versions or {}, sort_keys=True), error, build_id),
            )
            ids = []
            for name, path, sha256, size in artifacts:
                cursor = db.execute(
                    "INSERT INTO artifacts (build_id, name, path, sha256, size) VALUES (?,?,?,?,?)",
                    (build_id, name, path, sha256, size),
                )
                ids.append(int(cursor.lastrowid or 0))
            return ids

    def record_build_facts(self, build_id: int, facts: dict[str, Any]) -> None:
        """What the backend told about how it built (builder/backends/base.py FACTS): the base tree
        (digest and whether it was reused), phase times."""
        base = facts.get("base") if isinstance(facts.get("base"), dict) else {}
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO build_facts (build_id, base_digest, base_state, facts) "
                "VALUES (?,?,?,?)",
                (build_id, base.get("digest"), base.get("state"), json.dumps(facts, sort_keys=True)),
            )

    def build_facts(self, build_id: int) -> dict[str, Any]:
        row = self._db.execute("SELECT facts FROM build_facts WHERE build_id=?", (build_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def record_publication(self, artifact_id: int, publisher: str, location: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO publications (artifact_id, publisher, location, published_at) VALUES (?,?,?,?)",
                (artifact_id, publisher, location, time.time()),
            )

    def record_verification(self, build_id: int, status: str, detail: str = "") -> None:
        """The gate's verdict for a build (the latest one counts): passed, failed or off."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO verifications (build_id, status, detail, verified_at) VALUES (?,?,?,?)",
                (build_id, status, detail, time.time()),
            )

    def verification(self, build_id: int) -> tuple[str, str] | None:
        """(status, detail) of a build's latest verification, or None when it was never verified."""
        row = self._db.execute(
            "SELECT status, detail FROM verifications WHERE build_id=? ORDER BY id DESC LIMIT 1", (build_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def published(self, build_id: int, candidate: str | None = None) -> bool:
        """Whether every artifact of a build has at least one publication: a production one, or with
        ``candidate``, one under that candidate's names (a candidate's never counts for production)."""
        which = "instr(p.publisher, ?) = 0" if candidate is None else "p.publisher LIKE '%' || ?"
        row = self._db.execute(
            "SELECT COUNT(*) AS artifacts, SUM(EXISTS(SELECT 1 FROM publications p "
            f"WHERE p.artifact_id = a.id AND {which})) AS published_artifacts FROM artifacts a "
            "WHERE a.build_id=?",
            (CANDIDATE_MARK if candidate is None else CANDIDATE_MARK + candidate, build_id),
        ).fetchone()
        return bool(row[0]) and row[0] == row[1]

    def artifact_ids_for(self, manifest: Any) -> dict[str, int]:
        """Artifact name -> ledger id for a build manifest; a build made elsewhere (no build_id, or
        one this ledger does not know) is imported as a succeeded build first."""
        if manifest.build_id is not None:
            rows = self._db.execute(
                "SELECT a.name, a.id FROM artifacts a JOIN builds b ON a.build_id = b.id "
                "WHERE b.id=? AND b.target_id=?",
                (manifest.build_id, manifest.target),
            ).fetchall()
            if rows:
                return {r[0]: int(r[1]) for r in rows}
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO targets (id, recipe, kind, arch, last_digest, updated_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO NOTHING",
                (manifest.target, manifest.recipe, manifest.kind, manifest.arch, manifest.digest, now),
            )
            cursor = db.execute(
                "INSERT INTO builds (target_id, digest, status, started_at, finished_at, error) "
                "VALUES (?,?,'succeeded',?,?,?)",
                (manifest.target, manifest.digest, now, now, "imported from a manifest"),
            )
            build_id = int(cursor.lastrowid or 0)
            ids = {}
            for a in manifest.artifacts:
                row = db.execute(
                    "INSERT INTO artifacts (build_id, name, path, sha256, size) VALUES (?,?,?,?,?)",
                    (build_id, a.name, str(manifest.path_of(a)), a.sha256, a.size),
                )
                ids[a.name] = int(row.lastrowid or 0)
            return ids

    # -- queries --------------------------------------------------------------------------------------

    def state(self, target_id: str, digest: str) -> TargetState:
        row = self._db.execute(
            "SELECT EXISTS(SELECT 1 FROM builds WHERE target_id=? AND digest=? AND status='succeeded'),"
            " EXISTS(SELECT 1 FROM builds WHERE target_id=? AND status='succeeded')",
            (target_id, digest, target_id),
        ).fetchone()
        if row[0]:
            return TargetState.UP_TO_DATE
        return TargetState.STALE if row[1] else TargetState.NEVER_BUILT

    def states(self) -> dict[str, set[str]]:
        """Every target id -> the digests it has a successful build of (one query, for plans)."""
        out: dict[str, set[str]] = {}
        for row in self._db.execute("SELECT DISTINCT target_id, digest FROM builds WHERE status='succeeded'"):
            out.setdefault(row[0], set()).add(row[1])
        return out

    def published_digests(self) -> dict[str, dict[str, float]]:
        """Every target id -> digest -> when a succeeded build of it last had every artifact published
        (one query, for ``kiln pipeline``)."""
        out: dict[str, dict[str, float]] = {}
        rows = self._db.execute(
            "SELECT b.target_id, b.digest, MAX(p.published_at) AS published_at FROM builds b "
            "JOIN artifacts a ON a.build_id = b.id JOIN publications p ON p.artifact_id = a.id "
            "AND instr(p.publisher, :mark) = 0 "
            "WHERE b.status='succeeded' AND NOT EXISTS (SELECT 1 FROM artifacts x WHERE x.build_id = b.id "
            "AND NOT EXISTS (SELECT 1 FROM publications y WHERE y.artifact_id = x.id "
            "AND instr(y.publisher, :mark) = 0)) "
            "GROUP BY b.target_id, b.digest",
            {"mark": CANDIDATE_MARK},
        )
        for target_id, digest, at in rows:
            out.setdefault(target_id, {})[digest] = float(at)
        return out

    def builds(self, target_id: str) -> list[BuildRecord]:
        rows = self._db.execute("SELECT * FROM builds WHERE target_id=? ORDER BY id", (target_id,)).fetchall()
        return [_build_record(r) for r in rows]

    def artifacts(self, build_id: int) -> list[ArtifactRecord]:
        rows = self._db.execute(
            "SELECT * FROM artifacts WHERE build_id=? ORDER BY id", (build_id,)
        ).fetchall()
        return [ArtifactRecord(**dict(r)) for r in rows]

    def publications(self, artifact_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT publisher, location, published_at FROM publications WHERE artifact_id=? ORDER BY id",
            (artifact_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    # -- history (kiln history, kiln show, kiln report) ---------------------------------------------------

    def build(self, build_id: int) -> BuildRecord | None:
        row = self._db.execute("SELECT * FROM builds WHERE id=?", (build_id,)).fetchone()
        return _build_record(row) if row else None

    def history(
        self, recipe: str | None = None, arch: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Builds, newest first, with their target's recipe/kind/arch, total artifact size, the
        latest verification verdict and where they were published (one query per table)."""
        where, params = [], []
        if recipe is not None:
            where.append("t.recipe=?")
            params.append(recipe)
        if arch is not None:
            where.append("t.arch=?")
            params.append(arch)
        sql = (
            "SELECT b.*, t.recipe, t.kind, t.arch FROM builds b JOIN targets t ON t.id = b.target_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY b.id DESC"
            + (" LIMIT ?" if limit is not None else "")
        )
        rows = self._db.execute(sql, [*params, *([int(limit)] if limit is not None else [])]).fetchall()
        ids = [r["id"] for r in rows]
        sizes: dict[int, int] = {}
        published: dict[int, list[dict[str, Any]]] = {}
        verdicts: dict[int, tuple[str, str]] = {}
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(
                f"SELECT build_id, SUM(size) AS size FROM artifacts WHERE build_id IN ({marks}) "
                "GROUP BY build_id",
                chunk,
            ):
                sizes[r[0]] = int(r[1] or 0)
            for r in self._db.execute(
                "SELECT a.build_id, a.name, p.publisher, p.location, p.published_at FROM publications p "
                f"JOIN artifacts a ON a.id = p.artifact_id WHERE a.build_id IN ({marks}) ORDER BY p.id",
                chunk,
            ):
                published.setdefault(r[0], []).append(
                    {"artifact": r[1], "publisher": r[2], "location": r[3], "published_at": r[4]}
                )
            for r in self._db.execute(
                f"SELECT build_id, status, detail FROM verifications WHERE build_id IN ({marks}) ORDER BY id",
                chunk,
            ):
                verdicts[r[0]] = (r[1], r[2])  # the latest wins
        out = []
        for r in rows:
            record = _build_record(r)
            finished = record.finished_at
            verdict = verdicts.get(record.id)
            out.append(
                {
                    **record.__dict__,
                    "recipe": r["recipe"],
                    "kind": r["kind"],
                    "arch": r["arch"],
                    "duration_s": round(finished - record.started_at, 1) if finished else None,
                    "size": sizes.get(record.id, 0),
                    "verification": {"status": verdict[0], "detail": verdict[1]} if verdict else None,
                    "publications": published.get(record.id, []),
                }
            )
        return out

    def record_attestations(self, build_id: int, entries: Iterable[tuple[str, str, str, str]]) -> None:
        """A build's provenance statements, signatures and SBOM: (artifact, type, path, sha256).
        Written again after each verification (the verdict is in the statement): the latest count."""
        now = time.time()
        with self._tx() as db:
            for artifact, type_, path, sha256 in entries:
                db.execute(
                    "INSERT INTO attestations (build_id, artifact, type, path, sha256, recorded_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (build_id, artifact, type_, path, sha256, now),
                )

    def attestations(self, build_id: int) -> list[dict[str, Any]]:
        """The latest attestation of each (artifact, type) of a build."""
        rows = self._db.execute(
            "SELECT artifact, type, path, sha256, recorded_at FROM attestations WHERE id IN "
            "(SELECT MAX(id) FROM attestations WHERE build_id=? GROUP BY artifact, type) "
            "ORDER BY artifact, type",
            (build_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    def targets(self) -> list[dict[str, Any]]:
        """Every target the ledger knows: id, recipe, kind, arch, last digest."""
        rows = self._db.execute("SELECT * FROM targets ORDER BY recipe, id").fetchall()
        return [dict(r) for r in rows]


def _build_record(r: sqlite3.Row) -> BuildRecord:
    return BuildRecord(
        id=r["id"],
        target_id=r["target_id"],
        digest=r["digest"],
        status=r["status"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        log_path=r["log_path"],
        tool_versions=json.loads(r["tool_versions"] or "{}"),
        error=r["error"],
    )


def _check_file(path: Path) -> None:
    """Refuse, before sqlite opens it, what cannot be a ledger: a directory, a device or FIFO (sqlite
    would block on it), a non-empty file that is not an SQLite database. Creates missing parents."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        info = os.stat(path)
    except FileNotFoundError:
        return  # a new ledger
    except OSError as exc:
        raise LedgerError(
            path, f"cannot be used ({exc.strerror or exc})", "check the path and its permissions"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise LedgerError(
            path, "is a directory, not a ledger file", "give --ledger / $KILN_LEDGER a file path"
        )
    if not stat.S_ISREG(info.st_mode):
        raise LedgerError(path, "not a regular file (a device, FIFO or socket)", "give a file path")
    if info.st_size == 0:
        return
    # A checkpoint by another Kiln writes page 1 (with the new page count) before the pages that
    # extend the file: for a moment a healthy ledger looks truncated. Only what stays so is.
    for attempt in range(TRUNCATION_CHECKS):
        truncated = _truncation(path)
        if truncated is None:
            return
        if attempt + 1 < TRUNCATION_CHECKS:
            time.sleep(0.2)
    raise LedgerError(path, truncated, _RESTORE)


TRUNCATION_CHECKS = 5  # about a second: far longer than a checkpoint of a ledger-sized file takes


def _truncation(path: Path) -> str | None:
    """Why the file is not a whole SQLite database (not one; shorter than its header says), or None."""
    try:
        with open(path, "rb") as stream:
            header = stream.read(100)
            size = os.fstat(stream.fileno()).st_size  # after the header: the size that goes with it
    except OSError as exc:
        raise LedgerError(path, f"cannot be read ({exc.strerror or exc})", "check its permissions") from None
    if header[:16] != _SQLITE_HEADER:
        raise LedgerError(
            path, f"not an SQLite database (it starts with {header[:16]!r}), so not a Kiln ledger", _MOVE_AWAY
        )
    # The header's page count is valid when its "version-valid-for" matches the change counter; a
    # healthy database file is never shorter than that (WAL mode appends to the -wal file instead).
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if len(header) < 100 or (header[24:28] == header[92:96] and pages * page_size > size):
        return f"truncated ({size} bytes; its header says {pages} pages of {page_size})"
    return None


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def ledger_error(path: Path, exc: BaseException) -> LedgerError:
    """What an error met while reading or writing the ledger means for its user: not writable, not
    readable, busy, a disk problem, or a damaged file (anything else sqlite or the decoder says)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    # sqlite quotes a damaged schema's text: one line, no control characters, bounded
    said = _CONTROL.sub("?", (str(exc).splitlines() or [""])[0])[:200]
    if primary == sqlite3.SQLITE_READONLY:
        return LedgerError(path, f"not writable (sqlite: {said})", _WRITABLE)
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return LedgerError(
            path, f"cannot be opened: not readable, or its directory not writable (sqlite: {said})", _WRITABLE
        )
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return LedgerError(path, f"busy ({said})", "another process holds it: retry when it is done")
    if primary == sqlite3.SQLITE_FULL:
        return LedgerError(path, f"cannot be written: the disk is full (sqlite: {said})", "free some space")
    if primary == sqlite3.SQLITE_IOERR:
        return LedgerError(path, f"cannot be read or written (sqlite: {said})", "check its disk and mount")
    if isinstance(exc, UnicodeDecodeError):
        return LedgerError(path, "damaged (text in it is not UTF-8)", _RESTORE)
    return LedgerError(path, f"damaged or unreadable (sqlite: {said})", _RESTORE)


class _Connection(sqlite3.Connection):
    """A connection whose errors from sqlite itself (a damaged page met by a query, a lock held past
    the timeout, a read-only file) become LedgerErrors naming the file, also while rows are fetched;
    errors in Kiln's own SQL stay as they are. Every row read is checked (:class:`_Cursor`)."""

    ledger_path: Path = Path()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        cursor = self.cursor(_Cursor)
        cursor.execute(sql, parameters)
        return cursor


def _is_file_error(exc: BaseException) -> bool:
    """An error the file's state causes (not Kiln's SQL): sqlite's own, or undecodable text."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    return type(exc) in (sqlite3.DatabaseError, sqlite3.OperationalError)


class _Cursor(sqlite3.Cursor):
    """Turns file errors into LedgerErrors (:func:`ledger_error`) and checks each row's values by
    column name (:data:`_COLUMNS`), so that a damaged row is never handed to the rest of Kiln."""

    connection: _Connection

    def _path(self) -> Path:
        return self.connection.ledger_path

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        try:
            super().execute(sql, parameters)
        except Exception as exc:
            if _is_file_error(exc):
                raise ledger_error(self._path(), exc) from None
            raise
        return self

    def _checked(self, fetch: Callable[[], Any]) -> Any:
        try:
            return fetch()
        except Exception as exc:
            if _is_file_error(exc):
                raise ledger_error(self._path(), exc) from None
            raise

    def fetchone(self) -> Any:
        row = self._checked(super().fetchone)
        if row is not None:
            self._check_row(row)
        return row

    def fetchall(self) -> list[Any]:
        rows = self._checked(super().fetchall)
        for row in rows:
            self._check_row(row)
        return rows

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = self._checked(lambda: super(_Cursor, self).fetchmany(size or self.arraysize))
        for row in rows:
            self._check_row(row)
        return rows

    def __iter__(self) -> _Cursor:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def _check_row(self, row: Any) -> None:
        names = [d[0] for d in self.description or ()]
        for name, value in zip(names, row, strict=False):
            problem = _value_problem(name, value)
            if problem is not None:
                raise LedgerError(self._path(), f"damaged (a row's {name} {problem})", _RESTORE)


# --- what each column may hold -------------------------------------------------------------------------
# By column name (aliases too), as Kiln writes them: a value outside this is a damaged file.

_STATUSES = frozenset({"running", "succeeded", "failed", "cancelled", "passed", "off"})
_LATEST_TIME = 1e11  # seconds since 1970: past the year 5000; a flipped exponent goes beyond
_NULLABLE = frozenset({"finished_at", "log_path", "error", "base_digest", "base_state", "size"})


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value < _LATEST_TIME


def _is_json_object(value: Any) -> bool:
    try:
        return isinstance(json.loads(value), dict)
    except (TypeError, ValueError):
        return False


_COLUMNS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(("id", "build_id", "artifact_id", "size", "artifacts", "published_artifacts"),
                    (_is_count, "is not a count")),
    **dict.fromkeys(("started_at", "finished_at", "published_at", "verified_at", "recorded_at", "updated_at"),
                    (_is_time, "is not a time")),
    **dict.fromkeys(("tool_versions", "facts"), (_is_json_object, "is not a JSON object")),
    "status": (lambda v: v in _STATUSES, "is not a status"),
    **dict.fromkeys(
        ("target_id", "digest", "log_path", "error", "name", "path", "sha256", "publisher", "location",
         "artifact", "type", "detail", "recipe", "kind", "arch", "last_digest", "base_digest", "base_state",
         "key", "value"),
        (lambda v: isinstance(v, str), "is not text"),
    ),
}  # fmt: skip


def _value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be column ``name`` of a healthy ledger, or None. Pure."""
    if value is None:
        return None if name in _NULLABLE or name not in _COLUMNS else "is missing"
    if isinstance(value, bytes):  # Kiln stores no BLOB: text whose type byte was flipped
        return "is binary where text or a number belongs"
    check = _COLUMNS.get(name)
    if check is None or check[0](value):
        return None
    return f"{check[1]}: {str(value)[:40]!r}"


def _statements(script: str) -> list[str]:
    """The statements of an SQL script (``executescript`` would commit the open transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def state_from(succeeded: dict[str, set[str]], target_id: str, digest: str) -> TargetState:
    digests = succeeded.get(target_id)
    if not digests:
        return TargetState.NEVER_BUILT
    return TargetState.UP_TO_DATE if digest in digests else TargetState.STALE
