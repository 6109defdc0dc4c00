"""JUnit XML for verification results, so GitLab shows each target's checks in the MR widget."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from ..core.kind import CaseResult


def write_junit(path: Path, cases: list[CaseResult]) -> Path:
    suites: dict[str, list[CaseResult]] = {}
    for case in cases:
        suites.setdefault(case.suite, []).append(case)
    root = ET.Element("testsuites", name="kiln verify")
    for suite_name, members in suites.items():
        failures = sum(1 for c in members if not c.passed)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(members)),
            failures=str(failures),
            skipped=str(sum(1 for c in members if c.skipped)),
            time=f"{sum(c.seconds for c in members):.1f}",
        )
        for case in members:
            element = ET.SubElement(
                suite, "testcase", classname=suite_name, name=case.name, time=f"{case.seconds:.1f}"
            )
            if case.skipped:
                ET.SubElement(element, "skipped", message=case.message or "skipped")
            elif not case.passed:
                failure = ET.SubElement(element, "failure", message=case.message or "failed")
                failure.text = case.output
            elif case.output:
                ET.SubElement(element, "system-out").text = case.output
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
