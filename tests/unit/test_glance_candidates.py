"""Which leftover Glance candidates a publish deletes: those no publish will finish (issue 25)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from builder.limits import STALE_CANDIDATE_S
from builder.publishers.glance import _stale


def _candidate(status: str, age_s: float) -> SimpleNamespace:
    return SimpleNamespace(
        status=status, created_at=(datetime.now(UTC) - timedelta(seconds=age_s)).isoformat()
    )


def test_a_young_upload_may_be_another_jobs_in_flight_and_is_left_alone():
    assert not _stale(_candidate("saving", 60)) and not _stale(_candidate("queued", 5))


def test_an_old_upload_or_one_glance_gave_up_on_is_a_leftover():
    assert _stale(_candidate("saving", STALE_CANDIDATE_S + 60))
    assert _stale(_candidate("killed", 5))
    assert _stale(SimpleNamespace(status="queued", created_at=None))  # unknown age: a leftover
