"""The sqlite ledger: builds, artifacts, publications, and the plan states derived from them."""

from __future__ import annotations

import sqlite3

import pytest

from builder.arch import Arch
from builder.ledger import Ledger, TargetState
from builder.pipeline.plan import make_plan, plan_table


class FakeTarget:
    """Just the attributes the ledger reads; real Targets come from recipes in other tests."""

    def __init__(self, digest: str, id_: str = "debian-12:bookworm:x86_64"):
        self.id = id_
        self.recipe = "debian-12"
        self.kind = "guest-image"
        self.arch = Arch.X86_64
        self.digest = digest


def test_states_follow_successful_builds_of_the_digest(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.state("debian-12:bookworm:x86_64", "aaa") is TargetState.NEVER_BUILT
        failed = ledger.start_build(FakeTarget("aaa"))
        ledger.finish_build(failed, "failed", error="disk full")
        assert ledger.state("debian-12:bookworm:x86_64", "aaa") is TargetState.NEVER_BUILT
        ok = ledger.start_build(FakeTarget("aaa"))
        ledger.finish_build(ok, "succeeded", tool_versions={"diskimage-builder": "3.31.0"})
        assert ledger.state("debian-12:bookworm:x86_64", "aaa") is TargetState.UP_TO_DATE
        assert ledger.state("debian-12:bookworm:x86_64", "bbb") is TargetState.STALE
        assert ledger.states() == {"debian-12:bookworm:x86_64": {"aaa"}}


def test_build_artifacts_and_publications_are_recorded(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        build = ledger.start_build(FakeTarget("aaa"), log_path="logs/1.log")
        [artifact] = ledger.finish_build(
            build,
            "succeeded",
            artifacts=[("image", "out/debian-12.qcow2", "ab" * 32, 339 * 2**20)],
            tool_versions={"diskimage-builder": "3.31.0"},
        )
        ledger.record_publication(artifact, "glance", "8f1e-image-id")
    with Ledger(path) as reopened:  # persisted, not just in memory
        [record] = reopened.builds("debian-12:bookworm:x86_64")
        assert record.status == "succeeded" and record.log_path == "logs/1.log"
        assert record.tool_versions == {"diskimage-builder": "3.31.0"}
        assert record.finished_at is not None and record.finished_at >= record.started_at
        [stored] = reopened.artifacts(record.id)
        assert (stored.name, stored.sha256, stored.size) == ("image", "ab" * 32, 339 * 2**20)
        assert [p["location"] for p in reopened.publications(stored.id)] == ["8f1e-image-id"]


def test_status_outside_the_known_set_is_refused_and_nothing_is_half_written(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        build = ledger.start_build(FakeTarget("aaa"))
        with pytest.raises(sqlite3.IntegrityError):
            ledger.finish_build(build, "maybe", artifacts=[("image", "x", "00", 1)])
        assert ledger.artifacts(build) == []  # the artifact insert was rolled back with the update
        assert ledger.builds("debian-12:bookworm:x86_64")[0].status == "running"


def test_a_newer_ledger_schema_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(RuntimeError, match="newer than this Kiln"):
        Ledger(path)


def test_plan_marks_what_needs_building(tmp_path):
    class T(FakeTarget):
        kind = "guest-image"
        depends_on = ()

        def summary(self):
            return {"id": self.id, "digest": self.digest}

    targets = [T("new", "a:1:x86_64"), T("same", "b:1:x86_64"), T("changed", "c:1:x86_64")]
    entries = make_plan(targets, {"b:1:x86_64": {"same"}, "c:1:x86_64": {"old"}})  # type: ignore[arg-type]
    assert [e.state for e in entries] == [TargetState.NEVER_BUILT, TargetState.UP_TO_DATE, TargetState.STALE]
    assert [e.needs_build for e in entries] == [True, False, True]
    assert entries[2].as_json()["state"] == "stale"
    assert plan_table(entries).splitlines()[-1] == "3 targets: 1 up to date, 1 stale, 1 never built"
