"""Small real source RPMs for the rpm-rebuild tests: a C program with a Makefile and a %check,
packaged (and signed with a throw-away GPG key) by the test itself."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

GREET_C = """\
#include <stdio.h>
#ifdef KILN_HAVE_LIB
#include <{lib}.h>
#endif
int main(void) {{
    printf("hello from {name}\\n");
#ifdef KILN_HAVE_LIB
    printf("%s\\n", {libsym});
#endif
    return 0;
}}
"""

MAKEFILE = """\
CFLAGS ?= -O2
greet: greet.c
\t$(CC) $(CFLAGS) -o greet greet.c
"""

SPEC = """\
Name: {name}
Version: {version}
Release: 1%{{?dist}}
Summary: {summary}
{preamble}
License: MIT
Source0: %{{name}}-%{{version}}.tar.gz
{build_requires}
{arch_tags}
%description
A small C program Kiln's tests rebuild.
{devel}
%prep
%setup -q

%build
make CFLAGS="-O2 {cflags}"

%install
mkdir -p %{{buildroot}}/usr/bin
install -m 0755 greet %{{buildroot}}/usr/bin/{name}
{devel_install}
%check
{check}

%files
/usr/bin/{name}
{devel_files}
%changelog
* Mon Jan 01 2024 Upstream <upstream@example.com> - {version}-1
- Initial package
"""

DEVEL = """
%package devel
Summary: Header of {name}
%description devel
The header other packages build against.
"""


@dataclass(frozen=True)
class GpgKey:
    gnupghome: Path
    fingerprint: str
    public: Path  # ASCII-armored


def make_key(workdir: Path, name: str = "Kiln Test Upstream") -> GpgKey:
    home = workdir / f"gnupg-{name.replace(' ', '-').lower()}"
    home.mkdir(parents=True, mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home)]
    subprocess.run(
        [
            *gpg,
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name} <test@kiln.invalid>",
            "rsa2048",
            "sign",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run(
        [*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True
    )
    fingerprint = next(line.split(":")[9] for line in listed.stdout.splitlines() if line.startswith("fpr:"))
    public = workdir / f"{home.name}.asc"
    exported = subprocess.run([*gpg, "--armor", "--export", fingerprint], check=True, capture_output=True)
    public.write_bytes(exported.stdout)
    return GpgKey(home, fingerprint, public)


def stop_agent(key: GpgKey) -> None:
    subprocess.run(["gpgconf", "--homedir", str(key.gnupghome), "--kill", "all"], capture_output=True)


def sign(rpm: Path, key: GpgKey) -> None:
    macros = key.gnupghome.parent / f"{key.gnupghome.name}.macros"
    macros.write_text(f"%_gpg_name {key.fingerprint}\n%_gpg_path {key.gnupghome}\n%__gpg /usr/bin/gpg\n")
    subprocess.run(["rpmsign", "--load", str(macros), "--addsign", str(rpm)], check=True, capture_output=True)


def make_srpm(
    workdir: Path,
    name: str = "kiln-greet",
    version: str = "1.0",
    *,
    check: str = "./greet | grep -q from",
    build_requires: tuple[str, ...] = ("gcc", "make"),
    exclusive_arch: tuple[str, ...] = (),
    with_devel: bool = False,
    uses_lib: str | None = None,  # a -devel package's name whose header greet.c includes
    key: GpgKey | None = None,
    summary: str = "",
    preamble: str = "",  # spec lines after Summary: (macros a hostile upstream could write)
) -> Path:
    """A small source RPM. While the test makes it, ``KILN_TEST_MAKING_SRPM=1`` is in rpmbuild's
    environment, so a hostile ``preamble`` can tell the test's own ``rpmbuild -bs`` from Kiln's."""
    top = workdir / f"srpm-{name}-{version}-{len(list(workdir.glob('srpm-*')))}"
    (top / "SOURCES").mkdir(parents=True)
    lib = uses_lib.removesuffix("-devel") if uses_lib else ""
    files = {
        "greet.c": GREET_C.format(name=name, lib=lib, libsym=lib.replace("-", "_") + "_greeting"),
        "Makefile": MAKEFILE,
    }
    if with_devel:
        files[f"{name}.h"] = f'#define {name.replace("-", "_")}_greeting "greeting from {name}"\n'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for file, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{file}")
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    (top / "SOURCES" / f"{name}-{version}.tar.gz").write_bytes(buffer.getvalue())
    spec = top / f"{name}.spec"
    spec.write_text(
        SPEC.format(
            name=name,
            version=version,
            summary=summary or f"Kiln test package {name}",
            preamble=preamble,
            build_requires="\n".join(f"BuildRequires: {r}" for r in build_requires),
            arch_tags=f"ExclusiveArch: {' '.join(exclusive_arch)}" if exclusive_arch else "",
            devel=DEVEL.format(name=name) if with_devel else "",
            devel_install=(
                f"mkdir -p %{{buildroot}}/usr/include\ninstall -m 0644 {name}.h %{{buildroot}}/usr/include/"
                if with_devel
                else ""
            ),
            devel_files=f"%files devel\n/usr/include/{name}.h\n" if with_devel else "",
            cflags="-DKILN_HAVE_LIB" if uses_lib else "",
            check=check,
        )
    )
    subprocess.run(
        ["rpmbuild", "-bs", "--define", f"_topdir {top}", "--define", "dist %{nil}", str(spec)],
        check=True,
        capture_output=True,
        env={**os.environ, "KILN_TEST_MAKING_SRPM": "1"},
    )
    [srpm] = (top / "SRPMS").glob("*.src.rpm")
    if key is not None:
        sign(srpm, key)
    return srpm


def greet_patch(name: str = "kiln-greet", new: str = "hello POWER from") -> str:
    """A patch to greet.c that changes its output (as a recipe's build.patches entry)."""
    return textwrap.dedent(
        f"""\
        --- a/greet.c
        +++ b/greet.c
        @@ -5,3 +5,3 @@
         int main(void) {{
        -    printf("hello from {name}\\n");
        +    printf("{new} {name}\\n");
         #ifdef KILN_HAVE_LIB
        """
    )
