"""The metadata fuzzer in the test suite: a few hundred seeded mutations of two repos served over
loopback, through ``repo_packages`` and ``find_missing``: no traceback, no hang, every refusal exit
4 naming its URL, memory bounded (`make fuzz` runs 10,000: docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import metadata_fuzz

pytest.importorskip("rpm", reason="rpm's Python bindings (python3-rpm + the rpm shim)")

CASES = 300
SEED = 22  # change it to explore: every case is a function of (seed, index)
# How far a worker's RSS may rise over its RSS when it was ready (it starts with its parent's pages:
# the interpreter, Kiln, the bombs made before forking, whatever pytest holds): a bomb read whole
# would take gigabytes; the biggest honest case (16 MiB decompressed before the ratio refuses it,
# 20,000 provides) takes tens of MiB.
RSS_GROWTH_CAP_MIB = 256


def test_cases_are_a_function_of_seed_and_index():
    def files(case: metadata_fuzz.Case) -> list[dict[str, bytes]]:
        return [
            {path: served.body for path, served in repo.files().items()} for repo in (case.first, case.second)
        ]

    first, again = metadata_fuzz.make_case(SEED, 17), metadata_fuzz.make_case(SEED, 17)
    other = metadata_fuzz.make_case(SEED + 1, 17)
    assert (files(first), first.mutations) == (files(again), again.mutations)
    assert files(first) != files(other)


def test_every_mutation_family_is_drawn():
    drawn = {
        m.split(": ")[1] for i in range(300) for m in metadata_fuzz.make_case(SEED, i).mutations if ": " in m
    }
    assert drawn == set(metadata_fuzz.FAMILIES)


def test_hundreds_of_mutated_repos_give_no_traceback_no_hang_and_bounded_memory(tmp_path: Path):
    totals = metadata_fuzz.run(CASES, seed=SEED, jobs=2, out=tmp_path / "failures")
    print(totals.line())  # shown with -s, and in the report of a failure
    failures = [f"#{r.index} {r.category}: {r.mutations}: {r.detail[-600:]}" for r in totals.failures[:5]]
    assert totals.cases == CASES
    assert totals.counts["traceback"] == 0, failures
    assert totals.counts["hang"] == 0, failures
    assert totals.counts["unlocated"] == 0, failures
    assert totals.counts["ok"] > CASES // 20  # valid repos (and valid odd versions) are read
    assert totals.counts["refusal"] > CASES // 2
    assert totals.growth_rss_kb < RSS_GROWTH_CAP_MIB << 10, totals.line()
