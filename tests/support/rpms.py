"""Small real RPMs for repo tests, built with rpmbuild (noarch: dnf installs them anywhere)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SPEC = """\
Name: {name}
Version: {version}
Release: 1
Summary: Kiln test package {name}
License: MIT
BuildArch: noarch
%description
A package Kiln's tests publish and install.
%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo {name}-{version} > %{{buildroot}}/usr/share/{name}/version
%files
/usr/share/{name}/version
"""


def build_noarch_rpm(workdir: Path, name: str, version: str = "1.0") -> Path:
    top = workdir / f"rpmbuild-{name}-{version}"
    spec = top / f"{name}.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(SPEC.format(name=name, version=version))
    subprocess.run(
        ["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", "_buildhost kiln-test", str(spec)],
        check=True,
        capture_output=True,
    )
    return next((top / "RPMS" / "noarch").glob(f"{name}-{version}-1.noarch.rpm"))


def build_many_noarch_rpms(workdir: Path, prefix: str, count: int, payload_kib: int = 0) -> list[Path]:
    """``count`` distinct packages from one rpmbuild run (subpackages), for large-repo benchmarks.

    With ``payload_kib``, each package carries that many KiB of random bytes, stored uncompressed,
    so each RPM is about that size (repos of realistically sized packages)."""
    top = workdir / (f"rpmbuild-{prefix}-{count}" + (f"-{payload_kib}k" if payload_kib else ""))
    spec = top / f"{prefix}.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Name: {prefix}",
        "Version: 1.0",
        "Release: 1",
        "Summary: bulk",
        "License: MIT",
        "BuildArch: noarch",
        "%description",
        "bulk",
        "%install",
        f"mkdir -p %{{buildroot}}/usr/share/{prefix}",
    ]
    if payload_kib:
        lines += [
            f"for i in $(seq 0 {count - 1}); do",
            f"  head -c {payload_kib << 10} /dev/urandom > %{{buildroot}}/usr/share/{prefix}/f$i",
            "done",
        ]
    else:
        lines += [f"touch %{{buildroot}}/usr/share/{prefix}/f{i}" for i in range(count)]
    for i in range(count):
        lines += [
            f"%package -n {prefix}-{i}",
            f"Summary: bulk {i}",
            f"%description -n {prefix}-{i}",
            "bulk",
            f"%files -n {prefix}-{i}",
            f"/usr/share/{prefix}/f{i}",
        ]
    spec.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--define",
            f"_topdir {top}",
            "--define",
            "_buildhost kiln-test",
            # random bytes do not compress: don't spend time trying
            *(["--define", "_binary_payload w0.ufdio"] if payload_kib else []),
            str(spec),
        ],
        check=True,
        capture_output=True,
    )
    return sorted((top / "RPMS" / "noarch").glob(f"{prefix}-*.rpm"))
