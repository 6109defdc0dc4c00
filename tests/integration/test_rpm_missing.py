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


def _arch_rpm(workdir: Path, name: str, version: str, arch: str) -> Path:
    top = workdir / f"{name}-{version}-{arch}"
    spec = top / f"{name}.spec"
    spec.parent.mkdir(parents=True)
    spec.write_text(SPEC.format(name=name, version=version))
    subprocess.run(
        ["rpmbuild", "-bb", "--target", arch, "--define", f"_topdir {top}", str(spec)],
        check=True,
        capture_output=True,
    )
    return next((top / "RPMS" / arch).glob("*.rpm"))


@pytest.fixture(scope="module")
def repos(local_site, site_settings, tmp_path_factory):
    work = tmp_path_factory.mktemp("missing")
    publisher = SitePublishers(site_settings, local_site.state).repo()
    first = [
        _arch_rpm(work, n, v, "x86_64")
        for n, v in (("kiln-ma", "1.0"), ("kiln-mb", "1.0"), ("kiln-mc", "2.0"))
    ]
    second = [_arch_rpm(work, n, v, "ppc64le") for n, v in (("kiln-ma", "1.0"), ("kiln-mc", "1.0"))]
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
    found = {m["source"]: m for m in json.loads(result.stdout)["missing"]}
    assert set(found) == {"kiln-mb", "kiln-mc"}
    assert found["kiln-mb"]["have"] is None
    assert found["kiln-mc"]["version"] == "2.0-1" and found["kiln-mc"]["have"] == "1.0-1"


def test_the_recipes_missing_writes_validate(repos, tmp_path):
    source, target = repos
    root = tmp_path / "ws"
    shutil.copytree(PACKAGE_ROOT / "templates", root / "templates")
    (root / "recipes").mkdir()
    written = root / "recipes" / "rebuilds"
    result = _kiln(root, "rpm", "missing", "--from", source, "--to", target, "--write-recipes", str(written))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in written.glob("*.yaml")) == ["kiln-mb.yaml", "kiln-mc.yaml"]
    validated = _kiln(root, "validate", "--json", str(written))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    plan = _kiln(root, "plan", "--json", str(written))
    assert {t["id"] for t in json.loads(plan.stdout)["targets"]} == {"kiln-mb:9:ppc64le", "kiln-mc:9:ppc64le"}
