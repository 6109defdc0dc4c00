"""``kiln rpm missing`` against two repos the test publishes to the local site (read over HTTP)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.publishers.from_site import SitePublishers
from builder.workspace import PACKAGE_ROOT

pytestmark = pytest.mark.site

SPEC = """\
Name: {name}
Version: {version}
Release: 1
Summary: {name}
License: MIT
%description
{name}
%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo {version} > %{{buildroot}}/usr/share/{name}/version
%files
/usr/share/{name}/version
"""


# A source with an Epoch, an arch subpackage and a noarch one (EL repos carry noarch in every arch).
SPEC_WITH_DOC = """\
Name: {name}
Epoch: 2
Version: {version}
Release: 1
Summary: {name}
License: MIT
%description
{name}
%package doc
Summary: {name} docs
BuildArch: noarch
%description doc
{name} docs
%install
mkdir -p %{{buildroot}}/usr/share/{name} %{{buildroot}}/usr/share/doc/{name}
echo {version} > %{{buildroot}}/usr/share/{name}/version
echo docs > %{{buildroot}}/usr/share/doc/{name}/README
%files
/usr/share/{name}/version
%files doc
/usr/share/doc/{name}/README
"""
# A source that builds only noarch packages.
SPEC_NOARCH = SPEC.replace("%description", "BuildArch: noarch\n%description", 1)


def _rpms(workdir: Path, name: str, version: str, arch: str, spec_text: str) -> list[Path]:
    """The binary RPMs of ``spec_text`` built for ``arch`` (noarch subpackages among them)."""
    top = workdir / f"{name}-{version}-{arch}"
    spec = top / f"{name}.spec"
    spec.parent.mkdir(parents=True)
    spec.write_text(spec_text.format(name=name, version=version))
    subprocess.run(
        ["rpmbuild", "-bb", "--target", arch, "--define", f"_topdir {top}", str(spec)],
        check=True,
        capture_output=True,
    )
    return sorted((top / "RPMS").glob("*/*.rpm"))


def _arch_rpm(workdir: Path, name: str, version: str, arch: str) -> Path:
    (rpm,) = _rpms(workdir, name, version, arch, SPEC)
    return rpm


@pytest.fixture(scope="module")
def repos(local_site, site_settings, tmp_path_factory):
    work = tmp_path_factory.mktemp("missing")
    publisher = SitePublishers(site_settings, local_site.state).repo()
    first = [
        _arch_rpm(work, n, v, "x86_64")
        for n, v in (("kiln-ma", "1.0"), ("kiln-mb", "1.0"), ("kiln-mc", "2.0"))
    ]
    second = [_arch_rpm(work, n, v, "ppc64le") for n, v in (("kiln-ma", "1.0"), ("kiln-mc", "1.0"))]
    first += _rpms(work, "kiln-md", "1.0", "x86_64", SPEC_WITH_DOC)  # kiln-md + kiln-md-doc (noarch)
    second += [p for p in _rpms(work, "kiln-md", "1.0", "ppc64le", SPEC_WITH_DOC) if ".noarch." in p.name]
    first += _rpms(work, "kiln-mn", "1.0", "x86_64", SPEC_NOARCH)  # noarch only, not in the second
    publisher.publish(first, repo="missing", distro="el", release="9", arch="x86_64")
    publisher.publish(second, repo="missing", distro="el", release="9", arch="ppc64le")
    base = f"{local_site.urls.repo}/missing/el/9"
    return f"{base}/x86_64/", f"{base}/ppc64le/"


def _kiln(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_lists_the_source_packages_absent_or_older_in_the_second_repo(repos, tmp_path):
    source, target = repos
    result = _kiln(
        PACKAGE_ROOT, "rpm", "missing", "--from", source, "--to", target, "--arch", "ppc64le", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    found = {m["source"]: m for m in report["missing"]}
    assert set(found) == {"kiln-mb", "kiln-mc", "kiln-md"}
    assert found["kiln-mb"]["have"] is None
    assert found["kiln-mc"]["version"] == "2.0-1" and found["kiln-mc"]["have"] == "1.0-1"
    assert found["kiln-mc"]["status"] == "older"


def test_a_source_with_only_its_noarch_subpackage_there_is_missing_with_its_epoch_shown(repos):
    source, target = repos
    result = _kiln(
        PACKAGE_ROOT, "rpm", "missing", "--from", source, "--to", target, "--arch", "ppc64le", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    md = next(m for m in report["missing"] if m["source"] == "kiln-md")
    assert (md["status"], md["version"], md["have"]) == ("missing", "2:1.0-1", None)
    assert md["binaries"] == ["kiln-md", "kiln-md-doc"]
    assert [(m["source"], m["status"]) for m in report["noarch_only"]] == [("kiln-mn", "noarch-only")]


def test_the_recipes_missing_writes_validate(repos, tmp_path):
    source, target = repos
    root = tmp_path / "ws"
    shutil.copytree(PACKAGE_ROOT / "templates", root / "templates")
    (root / "recipes").mkdir()
    written = root / "recipes" / "rebuilds"
    result = _kiln(root, "rpm", "missing", "--from", source, "--to", target, "--write-recipes", str(written))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in written.glob("*.yaml")) == ["kiln-mb.yaml", "kiln-mc.yaml", "kiln-md.yaml"]
    validated = _kiln(root, "validate", "--json", str(written))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    plan = _kiln(root, "plan", "--json", str(written))
    assert {t["id"] for t in json.loads(plan.stdout)["targets"]} == {
        "kiln-mb:9:ppc64le",
        "kiln-mc:9:ppc64le",
        "kiln-md:9:ppc64le",
    }
