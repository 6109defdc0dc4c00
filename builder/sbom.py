"""SBOMs: the package list of a build, as SPDX 2.3 JSON, and the difference between two of them.

Where the list comes from, per build (taken during the build, never by opening the image):
- diskimage-builder (guest images, IPA ramdisks): DIB's ``dpkg`` element (every Debian/Ubuntu
  build has it, through ``debootstrap``) runs ``dpkg-query`` in its finalise phase and DIB copies
  the result out as ``<image>.d/dib-manifests/dib-manifest-dpkg-<image>`` (JSON).
- RPM rebuilds: the packages themselves (``packages_of_rpms``: their headers and file names).
- any other builder: a ``packages.dpkg`` (``dpkg-query -W`` output: ``name[:arch]<TAB>version``) or
  ``packages.rpm`` (``rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n'``) file in its
  output directory (containers: ``dpkg-query`` in the built image; Packer guests: in the guest, by the
  template's last provisioners, downloaded with a ``file`` provisioner).

Everything here but ``find_package_list`` and ``read_sbom`` is pure.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rpm.header import name_and_arch

SPDX_VERSION = "SPDX-2.3"
DIB_DPKG_GLOB = "dib-manifest-dpkg-*"
DPKG_LIST = "packages.dpkg"  # what a builder other than DIB leaves: ``dpkg-query -W`` output
RPM_LIST = "packages.rpm"  # or ``rpm -qa`` output


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str
    arch: str = ""
    manager: str = "deb"  # deb or rpm: the purl type

    @property
    def purl(self) -> str:
        return f"pkg:{self.manager}/{self.name}@{self.version}" + (f"?arch={self.arch}" if self.arch else "")


# --- reading package lists ------------------------------------------------------------------------------


def parse_dib_dpkg(text: str) -> list[Package]:
    """DIB's dpkg manifest: ``{"packages": [{"package", "arch", "version", "status"}]}``; only
    installed packages (status ``ii``) count."""
    data = json.loads(text)
    return sorted(
        Package(str(p["package"]).split(":")[0], str(p["version"]), str(p.get("arch", "")))
        for p in data.get("packages", [])
        if str(p.get("status", "ii")).strip() == "ii"
    )


def parse_dpkg_query(text: str) -> list[Package]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, version = line.partition("\t")
        name, _, arch = name.partition(":")
        if version.strip():
            out.append(Package(name.strip(), version.strip(), arch))
    return sorted(out)


def parse_rpm_qa(text: str) -> list[Package]:
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip():
            out.append(
                Package(parts[0].strip(), parts[1].strip(), parts[2].strip() if len(parts) > 2 else "", "rpm")
            )
    return sorted(out)


def find_package_list(out_dir: Path) -> list[Package] | None:
    """The package list a build left in its output directory, or None when it left none."""
    if not out_dir.is_dir():
        return None
    for path in sorted(out_dir.rglob(DIB_DPKG_GLOB)):
        if path.is_file():
            return parse_dib_dpkg(path.read_text())
    for name, parse in ((DPKG_LIST, parse_dpkg_query), (RPM_LIST, parse_rpm_qa)):
        for path in sorted(out_dir.rglob(name)):
            if path.is_file():
                return parse(path.read_text())
    return None


def packages_of_rpms(paths: list[Path]) -> list[Package]:
    """The packages an RPM rebuild produced (name and arch from each header, version-release from
    the file name rpmbuild gave it: ``NAME-VERSION-RELEASE.ARCH.rpm``)."""

    out = []
    for path in paths:
        name, arch = name_and_arch(path)
        suffix = f".{'src' if path.name.endswith('.src.rpm') else arch}.rpm"
        middle = path.name[len(name) + 1 : -len(suffix)] if path.name.endswith(suffix) else ""
        out.append(Package(name, middle or "NOASSERTION", "src" if suffix == ".src.rpm" else arch, "rpm"))
    return sorted(out)


# --- SPDX -------------------------------------------------------------------------------------------------


def spdx_id(package: Package) -> str:
    return "SPDXRef-Package-" + re.sub(
        r"[^A-Za-z0-9.-]", "-", f"{package.name}-{package.arch}-{package.version}"
    )


def spdx_document(
    name: str,
    packages: list[Package],
    *,
    created: str,
    subject_sha256: str | None = None,
    build_id: Any = None,
) -> dict[str, Any]:
    """An SPDX 2.3 document: the build (its main artifact) CONTAINS every package."""
    root = "SPDXRef-Artifact"
    seed = f"{name}:{build_id}:{subject_sha256}:{len(packages)}"
    return {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://kiln.invalid/spdx/{uuid.uuid5(uuid.NAMESPACE_URL, seed)}",
        "creationInfo": {"created": created, "creators": ["Tool: kiln"]},
        "documentDescribes": [root],
        "packages": [
            {
                "SPDXID": root,
                "name": name,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                **(
                    {"checksums": [{"algorithm": "SHA256", "checksumValue": subject_sha256}]}
                    if subject_sha256
                    else {}
                ),
            },
            *(
                {
                    "SPDXID": spdx_id(p),
                    "name": p.name,
                    "versionInfo": p.version,
                    "downloadLocation": "NOASSERTION",
                    "filesAnalyzed": False,
                    "externalRefs": [
                        {
                            "referenceCategory": "PACKAGE-MANAGER",
                            "referenceType": "purl",
                            "referenceLocator": p.purl,
                        }
                    ],
                }
                for p in packages
            ),
        ],
        "relationships": [
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": root,
            },
            *(
                {"spdxElementId": root, "relationshipType": "CONTAINS", "relatedSpdxElement": spdx_id(p)}
                for p in packages
            ),
        ],
    }


def packages_of(document: dict[str, Any]) -> dict[str, str]:
    """``name`` (``name:arch`` where one name has several arches) -> version, from an SPDX document."""
    if document.get("spdxVersion", "").split(".")[0] != "SPDX-2":
        raise ValueError("not an SPDX 2 JSON document")
    described = set(document.get("documentDescribes") or [])
    found: dict[str, list[tuple[str, str]]] = {}
    for package in document.get("packages") or []:
        if package.get("SPDXID") in described or "versionInfo" not in package:
            continue
        arch = ""
        for ref in package.get("externalRefs") or []:
            if ref.get("referenceType") == "purl" and "?arch=" in ref.get("referenceLocator", ""):
                arch = ref["referenceLocator"].split("?arch=", 1)[1]
        found.setdefault(package["name"], []).append((arch, str(package["versionInfo"])))
    out = {}
    for name, entries in found.items():
        for arch, version in entries:
            out[f"{name}:{arch}" if len(entries) > 1 and arch else name] = version
    return out


def read_sbom(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


# --- diff -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SbomDiff:
    added: list[tuple[str, str]]  # (name, version)
    removed: list[tuple[str, str]]
    upgraded: list[tuple[str, str, str]]  # (name, old, new)
    downgraded: list[tuple[str, str, str]]
    unchanged: int

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.upgraded or self.downgraded)

    def as_json(self) -> dict[str, Any]:
        return {
            "added": [{"name": n, "version": v} for n, v in self.added],
            "removed": [{"name": n, "version": v} for n, v in self.removed],
            "upgraded": [{"name": n, "from": a, "to": b} for n, a, b in self.upgraded],
            "downgraded": [{"name": n, "from": a, "to": b} for n, a, b in self.downgraded],
            "unchanged": self.unchanged,
        }

    def lines(self) -> list[str]:
        return [
            *(f"+ {n} {v}" for n, v in self.added),
            *(f"- {n} {v}" for n, v in self.removed),
            *(f"^ {n} {a} -> {b}" for n, a, b in self.upgraded),
            *(f"v {n} {a} -> {b}" for n, a, b in self.downgraded),
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.upgraded)} upgraded, "
            f"{len(self.downgraded)} downgraded, {self.unchanged} unchanged",
        ]


def diff(old: dict[str, str], new: dict[str, str]) -> SbomDiff:
    upgraded, downgraded, unchanged = [], [], 0
    for name in sorted(old.keys() & new.keys()):
        order = compare_versions(old[name], new[name])
        if order < 0:
            upgraded.append((name, old[name], new[name]))
        elif order > 0:
            downgraded.append((name, old[name], new[name]))
        else:
            unchanged += 1
    return SbomDiff(
        added=[(n, new[n]) for n in sorted(new.keys() - old.keys())],
        removed=[(n, old[n]) for n in sorted(old.keys() - new.keys())],
        upgraded=upgraded,
        downgraded=downgraded,
        unchanged=unchanged,
    )


def compare_versions(a: str, b: str) -> int:
    """dpkg's ordering (epoch, upstream, revision; ``~`` sorts before everything), which also orders
    RPM's ``version-release`` sensibly; -1, 0 or 1."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch) if epoch.isdigit() else 0, upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"\D*", a).group()  # type: ignore[union-attr]
        nb = re.match(r"\D*", b).group()  # type: ignore[union-attr]
        for i in range(max(len(na), len(nb))):
            ca = _order(na[i]) if i < len(na) else 0
            cb = _order(nb[i]) if i < len(nb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        a, b = a[len(na) :], b[len(nb) :]
        da = re.match(r"\d*", a).group()  # type: ignore[union-attr]
        db = re.match(r"\d*", b).group()  # type: ignore[union-attr]
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
        a, b = a[len(da) :], b[len(db) :]
    return 0
