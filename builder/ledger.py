"""The ledger: a sqlite record of targets, builds, artifacts and publications.

Embedded by default at ``.kiln/ledger.sqlite`` (``--ledger`` or ``$KILN_LEDGER`` to move it). Writes
are single transactions, so a crash never leaves a build half-recorded; WAL mode lets ``kiln plan``
read while a build writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

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
CREATE TABLE IF NOT EXISTS publications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    publisher TEXT NOT NULL,      -- glance, registry, repo
    location TEXT NOT NULL,       -- image id, pushed reference, repo URL
    published_at REAL NOT NULL
);
"""


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
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(found[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{path}: ledger schema {found[0]} is newer than this Kiln ({SCHEMA_VERSION})")

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

    def record_publication(self, artifact_id: int, publisher: str, location: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO publications (artifact_id, publisher, location, published_at) VALUES (?,?,?,?)",
                (artifact_id, publisher, location, time.time()),
            )

    def published(self, build_id: int) -> bool:
        """Whether every artifact of a build has at least one publication."""
        row = self._db.execute(
            "SELECT COUNT(*), SUM(EXISTS(SELECT 1 FROM publications p WHERE p.artifact_id = a.id)) "
            "FROM artifacts a WHERE a.build_id=?",
            (build_id,),
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

    def builds(self, target_id: str) -> list[BuildRecord]:
        rows = self._db.execute("SELECT * FROM builds WHERE target_id=? ORDER BY id", (target_id,)).fetchall()
        return [
            BuildRecord(
                id=r["id"],
                target_id=r["target_id"],
                digest=r["digest"],
                status=r["status"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                log_path=r["log_path"],
                tool_versions=json.loads(r["tool_versions"]),
                error=r["error"],
            )
            for r in rows
        ]

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


def state_from(succeeded: dict[str, set[str]], target_id: str, digest: str) -> TargetState:
    digests = succeeded.get(target_id)
    if not digests:
        return TargetState.NEVER_BUILT
    return TargetState.UP_TO_DATE if digest in digests else TargetState.STALE
