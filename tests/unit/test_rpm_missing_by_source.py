"""``kiln rpm missing`` decides by source package (builder/rpm/missing.py ``find_missing``): present
for the arch only with its arch-specific binaries (noarch alone proves nothing: EL repos carry noarch
in every arch), noarch-only sources apart, epoch:version-release on both sides."""

from __future__ import annotations

import pytest

from builder.arch import Arch
from builder.rpm.missing import Missing, find_missing
from builder.rpm.source import RepoPackage

pytest.importorskip("rpm", reason="rpm's Python bindings (python3-rpm + the rpm shim)")


def _pkg(
    name: str, arch: str, version: str = "1.0", *, source: str | None = None, epoch: str = "0"
) -> RepoPackage:
    srpm = f"{source or name}-{version}-1.el9.src.rpm"
    return RepoPackage(
        name, arch, epoch, version, "1.el9", f"Packages/{name}.rpm", ("sha256", "0" * 64), srpm, (), ()
    )


def _found(first: list[RepoPackage], second: list[RepoPackage]) -> dict[str, Missing]:
    report = find_missing(first, second, Arch.PPC64LE)
    return {m.source: m for m in [*report, *report.noarch_only]}


def test_a_source_whose_noarch_subpackage_alone_is_there_is_reported_missing():
    first = [_pkg("foo", "x86_64"), _pkg("foo-doc", "noarch", source="foo")]
    second = [_pkg("foo-doc", "noarch", source="foo")]  # EL repos carry noarch in every arch
    report = find_missing(first, second, Arch.PPC64LE)
    assert [(m.source, m.status, m.have, m.binaries) for m in report] == [
        ("foo", "missing", None, ("foo", "foo-doc"))
    ]


def test_a_source_present_with_its_arch_binaries_is_not_reported():
    first = [_pkg("foo", "x86_64"), _pkg("foo-doc", "noarch", source="foo")]
    second = [_pkg("foo", "ppc64le"), _pkg("foo-doc", "noarch", source="foo")]
    assert _found(first, second) == {}
    assert _found(first, [_pkg("foo", "aarch64")])["foo"].status == "missing"  # another arch's binaries


def test_a_source_whose_binaries_are_all_noarch_is_reported_as_noarch_only_not_as_missing():
    first = [_pkg("data", "noarch"), _pkg("data-extra", "noarch", source="data")]
    report = find_missing(first, [], Arch.PPC64LE)
    assert list(report) == []  # nothing to rebuild
    (only,) = report.noarch_only
    assert (only.source, only.status, only.have) == ("data", "noarch-only", None)
    assert only.as_json()["status"] == "noarch-only"
    assert _found(first, [_pkg("data", "noarch")]) == {}  # the target has it: nothing to say


def test_epochs_are_shown_on_both_sides_and_win_over_versions():
    first = [_pkg("bar", "x86_64", "1.0", epoch="2"), _pkg("baz", "x86_64", "1.0", epoch="1")]
    second = [_pkg("bar", "ppc64le", "9.0", epoch="1"), _pkg("baz", "ppc64le", "0.1", epoch="3")]
    found = _found(first, second)
    assert set(found) == {"bar"}  # baz's epoch 3 there is newer than 1:1.0
    assert found["bar"].as_json() == {
        "source": "bar",
        "version": "2:1.0-1.el9",
        "have": "1:9.0-1.el9",
        "binaries": ["bar"],
        "status": "older",
    }


def test_an_older_build_there_is_compared_in_rpms_order():
    first = [_pkg("qux", "x86_64", "1.0.1")]
    assert _found(first, [_pkg("qux", "ppc64le", "1.0^git1")])["qux"].have == "1.0^git1-1.el9"
    assert _found(first, [_pkg("qux", "ppc64le", "1.0.1")]) == {}
    assert _found([_pkg("pre", "x86_64", "1.0~rc1")], [_pkg("pre", "ppc64le", "1.0")]) == {}
