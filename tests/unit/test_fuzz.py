"""The fuzzer in the test suite: a few thousand seeded mutations of the example recipes through
`kiln validate/plan/render`, asserting no traceback, no hang, no write outside the output and no
refusal without file:line (`make fuzz N=100000` runs as many as asked)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support import fuzz

CASES = 3000
SEED = 20260  # change it to explore: every case is a function of (seed, index)


def test_cases_are_a_function_of_seed_and_index():
    first, again, other = fuzz.make_case(SEED, 17), fuzz.make_case(SEED, 17), fuzz.make_case(SEED + 1, 17)
    assert (first.files, first.plants, first.mutations) == (again.files, again.plants, again.mutations)
    assert (first.files, first.mutations) != (other.files, other.mutations)


def test_every_mutation_family_is_drawn():
    families = {m.split(": ")[1] for i in range(120) for m in fuzz.make_case(SEED, i).mutations}
    assert families == set(fuzz.FAMILIES)


@pytest.mark.parametrize(
    ("code", "stdout", "category"),
    [
        (0, '{"ok": true}', "ok"),
        (0, "not json", "traceback"),
        (1, json.dumps({"problems": [{"file": "r.yaml", "line": 3, "message": "x"}]}), "refusal"),
        (1, json.dumps({"problems": [{"file": None, "line": None, "message": "x"}]}), "unlocated"),
        (1, "", "unlocated"),
        (1, json.dumps({"problems": [{"file": "r.yaml", "line": 1, "internal": True}]}), "traceback"),
        (3, "", "unlocated"),
        (70, '{"internal_error": "TypeError: x"}', "traceback"),
        (None, "", "traceback"),
    ],
)
def test_classify(code: int | None, stdout: str, category: str):
    assert fuzz.classify(code, stdout, "")[0] == category


def test_a_command_over_the_limit_is_a_hang(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import builder.cli.recipes

    monkeypatch.setattr(builder.cli.recipes, "cmd_validate", lambda args: time.sleep(30))
    started = time.monotonic()
    result = fuzz.run_command(["--root", str(tmp_path), "validate", "--json"], limit=0.3)
    assert result.category == "hang"
    assert time.monotonic() - started < 5


def test_an_exception_escaping_main_is_a_traceback_with_its_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    import builder.cli.recipes

    def boom(args: object) -> int:
        raise KeyError("x")

    monkeypatch.setattr(builder.cli.recipes, "cmd_validate", boom)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = fuzz.run_command(["--root", str(tmp_path), "validate", "--json"], limit=10)
    assert result.category == "traceback"
    assert result.signature is not None and result.signature[0] == "KeyError"


def test_thousands_of_mutated_recipes_give_no_traceback_and_no_hang(tmp_path: Path):
    # 20 s per command: a hang is a loop that never ends; the slowest honest case takes ~3 s on a busy
    # 2-core machine.
    totals = fuzz.run(CASES, seed=SEED, jobs=2, limit=20.0, out=tmp_path / "failures")
    print(totals.line())  # shown with -s, and in the report of a failure
    failures = [
        f"#{r.index} {r.category}: {r.mutations} "
        + "; ".join(f"{c.command}: {c.detail[-400:]}" for c in r.commands if c.category != "ok")
        for r in totals.failures[:5]
    ]
    assert totals.cases == CASES
    assert totals.counts["traceback"] == 0, failures
    assert totals.counts["hang"] == 0, failures
    assert totals.counts["escape"] == 0, failures
    assert totals.counts["unlocated"] == 0, failures
    assert totals.counts["ok"] > CASES // 20  # the mutations leave enough valid input to reach render
