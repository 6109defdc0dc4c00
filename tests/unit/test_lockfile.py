"""requirements.lock pins every Python dependency pyproject.toml names, with hashes.

scripts/bootstrap.sh installs only from the lock (``pip install --require-hashes``), then Kiln with
``--no-deps``: a dependency added to pyproject.toml but not to the lock would be missing from a
fresh venv, or, were the install ever loosened, float to whatever PyPI has that day. `make lock`
regenerates the lock.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
LOCKED_EXTRAS = ("test",)  # what `make lock` passes as --extra
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)\s*(?:;(?P<marker>[^\\]*?))?\s*$")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def lock_entries(text: str) -> dict[str, tuple[str, str | None, int]]:
    """{canonical name: (version, marker or None, number of sha256 hashes)}; anything in the
    lock that is not such a pin (an unpinned or unhashed requirement, an option) is an error."""
    entries: dict[str, tuple[str, str | None, int]] = {}
    logical = re.sub(r"\\\n", " ", "\n".join(line.split(" #", 1)[0] for line in text.splitlines()))
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, _, options = line.partition(" --")
        match = PIN.match(requirement)
        assert match, f"requirements.lock: not pinned with ==: {line[:120]}"
        hashes = len(HASH.findall(line))
        assert hashes, f"requirements.lock: no --hash=sha256: for {requirement}"
        assert not re.sub(HASH, "", "--" + options if options else "").strip(), f"unexpected option: {line}"
        name = canonicalize_name(match["name"])
        assert name not in entries, f"requirements.lock pins {name} twice"
        marker = match["marker"].strip() if match["marker"] else None
        entries[name] = (match["version"], marker, hashes)
    return entries


def declared() -> list[tuple[str, Requirement]]:
    """(where, requirement) for everything the venv gets from pyproject.toml: the dependencies,
    the extras bootstrap installs, and the build backend (the editable install uses it as is)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out = [("dependencies", Requirement(r)) for r in project["project"]["dependencies"]]
    for extra in LOCKED_EXTRAS:
        out += [(f"[{extra}]", Requirement(r)) for r in project["project"]["optional-dependencies"][extra]]
    out += [("build-system.requires", Requirement(r)) for r in project["build-system"]["requires"]]
    return out


@pytest.fixture(scope="module")
def locked() -> dict[str, tuple[str, str | None, int]]:
    assert LOCK.is_file(), "requirements.lock is missing: run `make lock`"
    return lock_entries(LOCK.read_text())


@pytest.mark.parametrize(("where", "requirement"), declared(), ids=lambda v: str(v))
def test_every_declared_dependency_is_pinned_with_hashes(locked, where: str, requirement: Requirement):
    name = canonicalize_name(requirement.name)
    assert name in locked, (
        f"pyproject.toml {where} names {requirement} but requirements.lock does not pin it: run `make lock`"
    )
    version, marker, _ = locked[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"requirements.lock pins {name}=={version}, outside pyproject.toml's {requirement}: run `make lock`"
    )
    if requirement.marker is not None:
        assert marker is not None and str(Marker(marker)) == str(requirement.marker), (
            f"requirements.lock pins {name} with marker {marker!r}, pyproject.toml says {requirement.marker}"
        )


def test_lock_parser_refuses_unpinned_or_unhashed_lines():
    digest = "0" * 64
    assert lock_entries(f"PyYAML==6.0.3 \\\n    --hash=sha256:{digest}\n    # via kiln\n") == {
        "pyyaml": ("6.0.3", None, 1)
    }
    for bad in ("PyYAML>=6.0\n", "PyYAML==6.0.3\n", f"PyYAML \\\n    --hash=sha256:{digest}\n"):
        with pytest.raises(AssertionError):
            lock_entries(bad)
