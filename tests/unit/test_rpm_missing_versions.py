"""rpm's own version order (builder/rpm/versions.py through ``rpm.labelCompare``): a table of pairs
that rpm itself orders, Kiln's answer the same; lengths capped before comparing; a missing binding
an environment problem naming the fix."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

from builder.errors import EnvironmentProblem, ExitCode, InvalidInput
from builder.rpm import versions
from builder.rpm.versions import evr_cmp, format_evr, newest, vercmp

rpm = pytest.importorskip("rpm", reason="rpm's Python bindings (python3-rpm + the rpm shim)")

# (a, b, how rpm orders a against b)
PAIRS = [
    (("0", "1.0", "1"), ("0", "1.0.1", "1"), -1),
    (("0", "1.0^git1", "1"), ("0", "1.0.1", "1"), -1),  # a snapshot after 1.0, before 1.0.1
    (("0", "1.0^git1", "1"), ("0", "1.0", "1"), 1),
    (("0", "1.0^git1", "1"), ("0", "1.0^git2", "1"), -1),
    (("0", "1.0^", "1"), ("0", "1.0", "1"), 1),
    (("0", "1.0~rc1", "1"), ("0", "1.0", "1"), -1),  # a pre-release before 1.0
    (("0", "1.0~rc1", "1"), ("0", "1.0~rc2", "1"), -1),
    (("0", "1.0~rc1^git1", "1"), ("0", "1.0~rc1", "1"), 1),
    (("0", "1.0~", "1"), ("0", "1.0", "1"), -1),
    (("0", "1.0~rc1", "1"), ("0", "1.0^git1", "1"), -1),
    (("0", "2", "1"), ("0", "10", "1"), -1),
    (("0", "1a", "1"), ("0", "1", "1"), 1),
    (("0", "a", "1"), ("0", "1", "1"), -1),  # digits are newer than letters
    (("0", "1.0", "1"), ("0", "1_0", "1"), 0),  # separators only separate
    (("0", "00010", "1"), ("0", "10", "1"), 0),  # leading zeros
    (("0", "1." + "9" * 100, "1"), ("0", "1.1" + "0" * 100, "1"), -1),  # long digit runs: by length
    (("0", "123456789012345678901234567890", "1"), ("0", "123456789012345678901234567891", "1"), -1),
    (("0", "1.0", "1.el9.kiln1"), ("0", "1.0", "1.el9"), 1),
    (("0", "1.0", "1.el9_1"), ("0", "1.0", "1.el9"), 1),
    (("1", "1.0", "1"), ("0", "9.9", "9"), 1),  # the epoch first
    (("10", "1", "1"), ("9", "1", "1"), 1),
    (("", "1.0", "1"), ("0", "1.0", "1"), 0),  # no epoch is 0
    (("4294967295", "0", "0"), ("0", "99999", "99999"), 1),
]


@pytest.mark.parametrize(
    ("a", "b", "order"), PAIRS, ids=lambda v: ":".join(v) if isinstance(v, tuple) else str(v)
)
def test_kiln_orders_versions_as_rpm_itself_does(a, b, order):
    as_rpm = rpm.labelCompare(tuple(x or "0" for x in a), tuple(x or "0" for x in b))
    assert as_rpm == order  # the table is rpm's order
    assert evr_cmp(a, b) == order and evr_cmp(b, a) == -order


def test_the_newest_package_is_picked_in_rpms_order():
    packages = [
        SimpleNamespace(evr=evr)
        for evr in (("0", "1.0.1", "1"), ("0", "1.0^git1", "1"), ("0", "1.0~rc1", "1"))
    ]
    assert newest(packages).evr == ("0", "1.0.1", "1")


def test_epoch_version_release_is_shown_with_the_epoch_unless_it_is_zero():
    assert format_evr(("2", "1.0", "3.el9")) == "2:1.0-3.el9"
    assert format_evr(("0", "1.0", "3.el9")) == "1.0-3.el9"
    assert format_evr(("", "1.0", "3.el9")) == "1.0-3.el9"


@pytest.mark.parametrize(
    "long", ["9" * 5000, ".".join(["1"] * 300_000)], ids=["5000-digits", "300000-segments"]
)
def test_a_version_over_the_length_cap_is_refused_before_any_comparison(long):
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="longer than 256 characters"):
        vercmp(long, "1.0")
    with pytest.raises(InvalidInput, match="epoch '99999999999': longer than 10"):
        evr_cmp(("99999999999", "1", "1"), ("0", "1", "1"))
    assert time.monotonic() - started < 0.5


def test_without_rpms_bindings_the_comparison_is_an_environment_problem_naming_the_fix(monkeypatch):
    versions._label_compare.cache_clear()
    monkeypatch.setitem(sys.modules, "rpm", None)  # `import rpm` raises ImportError
    try:
        with pytest.raises(EnvironmentProblem, match="install Debian's python3-rpm") as refused:
            vercmp("1", "2")
        assert refused.value.exit_code == ExitCode.ENVIRONMENT
    finally:
        versions._label_compare.cache_clear()
