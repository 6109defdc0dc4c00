"""What a build host lacks for diskimage-builder, detected rather than assumed, and the bridges for it.

DIB expects device-mapper (``kpartx``, ``dmsetup``) and calls those tools through ``sudo``. Hosts
such as containers and minimal VMs have no device-mapper; there, shims on ``PATH`` expose loop
partitions with ``partx`` instead, and a root ``sudo`` pass-through keeps those shims visible
(``secure_path`` would hide them). On a real build host :func:`detect` finds nothing and no shim
is written. The site's mirrors, CA certificates and caches become DIB variables in
:func:`dib_environment`; :func:`cleanup_after_interrupt` removes what a killed build leaves behind.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arch import Arch
from .run import Runner, stop_processes

NO_DEVICE_MAPPER = "no-device-mapper"
CONTAINER = "container"
SUDO_HIDES_SHIMS = "sudo-hides-shims"
NO_SUDO = "no-sudo"
SUDO_UNUSABLE = "sudo-unusable"
BINFMT_EMULATION = "binfmt-emulation"
NO_BINFMT = "no-binfmt"
# Not bridged here: the caller must refuse the build with the reason.
BLOCKING = frozenset({NO_BINFMT, SUDO_UNUSABLE})

# Debian's sudoers secure_path: used only when sudo itself is absent (root pass-through).
DEFAULT_SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What sudo's env_reset keeps (env_keep defaults plus the env_check names, kept when they are safe).
SUDO_KEEP = ("TERM", "COLORTERM", "TZ", "LANG", "LANGUAGE", "LINGUAS", "DISPLAY", "HOSTNAME", "COLORS",
             "LS_COLORS", "XAUTHORITY", "KRB5CCNAME")  # fmt: skip


@dataclass(frozen=True)
class Adaptation:
    name: str  # e.g. "no-device-mapper"
    reason: str  # what was detected, one line (logged once by the caller)


def detect(target_arches: Iterable[str] = ()) -> list[Adaptation]:
    """Probe this host for what DIB needs; ``target_arches`` adds binfmt checks for foreign ones."""
    found: list[Adaptation] = []
    dm_reason = _device_mapper_problem()
    if dm_reason:
        found.append(Adaptation(NO_DEVICE_MAPPER, dm_reason))
    if Path("/.dockerenv").exists():
        # DIB checks exactly this file: it then skips udev (kpartx -av + dmsetup mknodes).
        found.append(Adaptation(CONTAINER, "/.dockerenv exists: DIB takes its inside-Docker path"))
    if dm_reason:  # sudo only matters when shims must stay visible through it
        sudo_env = _sudo_env()
        if sudo_env is None and shutil.which("sudo") is None and os.geteuid() == 0:
            found.append(Adaptation(NO_SUDO, "sudo is not installed; a root pass-through stands in"))
        elif sudo_env is None:
            found.append(Adaptation(SUDO_UNUSABLE, "sudo -n env failed: DIB needs passwordless sudo"))
        elif sudo_env.get("PATH") != os.environ.get("PATH"):
            found.append(Adaptation(SUDO_HIDES_SHIMS, f"sudo runs commands with PATH={sudo_env.get('PATH')}"))
    host = Arch.host()
    for spelling in target_arches:
        arch = Arch.parse(spelling)
        if arch != host:
            found.append(binfmt_adaptation(arch))
    return found


def _device_mapper_problem() -> str | None:
    # Not /dev/mapper/control: dmsetup creates that node itself even where the kernel has no driver.
    misc = Path("/proc/misc")
    if not misc.exists() or not re.search(r"\sdevice-mapper$", misc.read_text(), re.MULTILINE):
        return "no device-mapper driver in this kernel (/proc/misc): kpartx/dmsetup would fail"
    dmsetup = shutil.which("dmsetup")
    if dmsetup is None:
        return "dmsetup is not installed"
    proc = Runner().capture([dmsetup, "version"])
    if proc.returncode != 0:
        return "dmsetup version failed: " + ((proc.stderr or proc.error).strip().splitlines() or ["?"])[0]
    return None


@functools.cache
def _sudo_env() -> dict[str, str] | None:
    """The environment sudo gives a command here (``None`` when it cannot run without a password)."""
    sudo = shutil.which("sudo")
    if sudo is None:
        return None
    proc = Runner().capture([sudo, "-n", "env"])
    if proc.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def binfmt_adaptation(arch: Arch) -> Adaptation:
    entry = Path("/proc/sys/fs/binfmt_misc") / arch.qemu_user.removesuffix("-static")
    try:
        text = entry.read_text()
    except OSError:
        return Adaptation(NO_BINFMT, f"{arch} needs {entry} (qemu-user-static, binfmt_misc mounted)")
    flags = re.search(r"^flags:\s*(\S*)", text, re.MULTILINE)
    if not text.startswith("enabled") or flags is None or "F" not in flags.group(1):
        # Without F the interpreter is looked up inside the chroot, where it does not exist.
        return Adaptation(NO_BINFMT, f"{entry} is disabled or lacks the F (fix-binary) flag")
    return Adaptation(BINFMT_EMULATION, f"{arch} runs under {arch.qemu_user} via binfmt (slow: ~3-5x)")


_KPARTX = r"""#!/bin/bash
# Kiln kpartx shim: no device-mapper here. Expose a loop device's partitions with partx (BLKPG) as
# /dev/loopNpM and make /dev/mapper/loopNpM a symlink to them, where DIB looks. A symlink, not a
# second node: grub-install must resolve it to the real partition (ppc64el PReP lookup).
set -eu
mode= dev= verbose=
for arg in "$@"; do
    case $arg in
        -*d*) mode=delete ;;
        -*[au]*) mode=add; [[ $arg == *v* ]] && verbose=1 ;;
        -*) ;;
        *) dev=$arg ;;
    esac
done
[ -n "$mode" ] && [ -n "$dev" ] || { echo "kpartx shim: unsupported: $*" >&2; exit 1; }
if [ ! -b "$dev" ]; then  # an image file, as real kpartx accepts: use or attach its loop device
    file=$dev
    dev=$(losetup -n -O NAME -j "$file" | head -n1)
    if [ -z "$dev" ]; then
        [ $mode = add ] || exit 0
        dev=$(losetup -f --show "$file")
    fi
fi
name=$(basename "$(readlink -f "$dev")")
rm -f /dev/mapper/"$name"p*
# Stale partitions survive losetup -d without partscan: drop them before adding (partx -a fails on them).
partx -d "$dev" 2>/dev/null || true
if [ $mode = delete ]; then
    for node in /dev/"$name"p*; do [ -e "/sys/class/block/${node#/dev/}" ] || rm -f "$node"; done
    [ -z "${file:-}" ] || losetup -d "$dev"
    exit 0
fi
partx -a "$dev"
mkdir -p /dev/mapper
for part in /sys/block/"$name"/"$name"p*; do
    [ -e "$part/dev" ] || continue
    p=${part##*/}
    IFS=: read -r major minor < "$part/dev"
    # devtmpfs creates the node itself; a tmpfs /dev (containers) does not.
    [ -b /dev/"$p" ] || mknod -m 600 /dev/"$p" b "$major" "$minor" || [ -b /dev/"$p" ]
    ln -sfn /dev/"$p" /dev/mapper/"$p"
    [ -z "$verbose" ] || echo "add map $p ($major:$minor): 0 $(cat "$part/size") linear $dev"
done
"""

_DMSETUP = r"""#!/bin/bash
# Kiln dmsetup shim: the kpartx shim made symlinks, not device-mapper maps.
args=()
for a in "$@"; do case $a in --noudevsync|--noudevrules|-v|--verbose) ;; *) args+=("$a") ;; esac; done
case ${args[0]:-} in
    mknodes) exit 0 ;;
    remove)
        for n in "${args[@]:1}"; do case $n in -*) ;; *) rm -f "/dev/mapper/${n#/dev/mapper/}" ;; esac; done
        exit 0 ;;
esac
real=@REAL@
[ -n "$real" ] || { echo "dmsetup shim: no device-mapper here for: $*" >&2; exit 1; }
exec "$real" "$@"
"""

_SUDO = r"""#!/bin/bash
# Kiln sudo shim: sudo's secure_path would hide the shims. As root, run the command directly with
# the environment env_reset would give it (TMPDIR must not leak into chroots: ca-certificates'
# postinst fails there); -E keeps the environment. Not root: real sudo, PATH re-set inside it.
path=@SHIMS@:@SECURE@
real=@REAL@
opts=() preserve= user=root
while [ $# -gt 0 ]; do
    case $1 in
        -E|--preserve-env) preserve=1 ;;
        -H|-n|-S|-k|--set-home|--non-interactive) ;;
        -u|--user) user=$2; opts+=("$1"); shift ;;
        --) shift; break ;;
        -*) echo "sudo shim: unsupported option $1" >&2; exit 1 ;;
        *) break ;;
    esac
    opts+=("$1"); shift
done
if [[ $(id -u) != 0 || ($user != root && $user != '#0') ]]; then
    [ -n "$real" ] || { echo "sudo shim: sudo is not installed" >&2; exit 1; }
    exec "$real" "${opts[@]}" -- env PATH="$path" "$@"
fi
[ $# -gt 0 ] || exit 0
if [ -n "$preserve" ]; then
    exec env PATH="$path" SUDO_USER=root SUDO_UID=0 SUDO_GID=0 SUDO_COMMAND="$*" "$@"
fi
keep=()
for v in @KEEP@ $(compgen -e LC_); do  # env_check: values with / or % are dropped
    [[ -n ${!v+x} && ${!v} != */* && ${!v} != *%* ]] && keep+=("$v=${!v}")
done
exec env -i "${keep[@]}" PATH="$path" HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    MAIL=/var/mail/root SUDO_USER=root SUDO_UID=0 SUDO_GID=0 SUDO_COMMAND="$*" "$@"
"""


def _real_tool(name: str, shim_dir: Path) -> str:
    """The tool that the shim stands in front of, found on PATH without the shim directory."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != shim_dir)
    return shutil.which(name, path=path + os.pathsep + DEFAULT_SECURE_PATH) or ""


def shim_scripts(shim_dir: Path, adaptations: Sequence[Adaptation]) -> dict[str, str]:
    """The shim files these adaptations need: name -> script text (pure apart from PATH lookups)."""
    names = {a.name for a in adaptations}
    if NO_DEVICE_MAPPER not in names:
        return {}
    scripts = {"kpartx": _KPARTX, "dmsetup": _DMSETUP.replace("@REAL@", _q(_real_tool("dmsetup", shim_dir)))}
    if names & {SUDO_HIDES_SHIMS, NO_SUDO}:
        sudo_env = _sudo_env() or {}
        secure = sudo_env.get("PATH", DEFAULT_SECURE_PATH)
        scripts["sudo"] = (
            _SUDO.replace("@SHIMS@", _q(str(shim_dir)))
            .replace("@SECURE@", _q(secure))
            .replace("@REAL@", _q(_real_tool("sudo", shim_dir)))
            .replace("@KEEP@", " ".join(SUDO_KEEP))
        )
    return scripts


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def prepare_shims(shim_dir: Path, adaptations: list[Adaptation]) -> dict[str, str]:
    """Write the shims for these adaptations into ``shim_dir``; return DIB's environment changes."""
    scripts = shim_scripts(shim_dir, adaptations)
    if not scripts:
        return {}
    shim_dir.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        path = shim_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return {"PATH": f"{shim_dir}{os.pathsep}{os.environ.get('PATH', DEFAULT_SECURE_PATH)}"}


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_apt_sources(text: str, *, deb822: bool) -> list[AptSource]:
    """The enabled binary (``deb``) entries of a sources.list or deb822 ``.sources`` text."""
    found: list[AptSource] = []
    if not deb822:
        for raw in text.splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()  # drop [options]
            if len(line) >= 3 and line[0] == "deb":
                found.append(AptSource(line[1].rstrip("/"), (line[2],), tuple(line[3:])))
        return found
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # a continuation line
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            suites, comps = fields.get("suites", "").split(), fields.get("components", "").split()
            found.append(AptSource(uri.rstrip("/"), tuple(suites), tuple(comps)))
    return found


def host_apt_sources(root: Path = Path("/")) -> list[AptSource]:
    etc = root / "etc/apt"
    found: list[AptSource] = []
    # apt reads only *.list and *.sources there; other names (*.disabled) are switched off.
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in [*files, *sorted((etc / "sources.list.d").glob("*.sources"))]:
        try:
            found += parse_apt_sources(path.read_text(), deb822=path.suffix == ".sources")
        except OSError:
            continue
    return found


# Debian's own archives (and snapshots of them), reachable from inside a chroot: not file:, cdrom:.
_DEBIAN_URI = re.compile(r"^(https?|ftp)://\S+/debian(-security)?(/\d{8}T\d{6}Z)?$")


def _host_debian_uri(root: Path, security: bool) -> str | None:
    for source in host_apt_sources(root):
        if _DEBIAN_URI.match(source.uri) and security == any(s.endswith("-security") for s in source.suites):
            return source.uri
    return None


def host_apt_mirror(root: Path = Path("/")) -> str | None:
    """The Debian archive this host's apt uses (not its security archive), or ``None``."""
    return _host_debian_uri(root, security=False)


def host_apt_security_mirror(root: Path = Path("/")) -> str | None:
    return _host_debian_uri(root, security=True)


def dib_environment(
    *,
    mirror: str | None,
    security_mirror: str | None,
    include_security: bool,
    extra_ca_dir: Path | None,
    image_cache: Path,
    tmpdir: Path,
    release: str | None = None,
    components: Sequence[str] = ("main",),
    debootstrap_cache: bool = False,
    root: Path = Path("/"),
) -> dict[str, str]:
    """DIB_* variables for the site (ELEMENTS_PATH is the caller's). ``release`` is needed only
    when the security suite is left out: DIB_APT_SOURCES_CONF is used verbatim, not expanded."""
    env = {"DIB_IMAGE_CACHE": str(image_cache), "TMPDIR": str(tmpdir)}
    mirror = (mirror or host_apt_mirror(root) or "").rstrip("/") or None
    if mirror:
        env["DIB_DISTRIBUTION_MIRROR"] = mirror
    # DIB's default security host may be unreachable where the archive is not: prefer what apt
    # uses here, else the same archive's /debian-security.
    security = security_mirror or host_apt_security_mirror(root)
    if security is None and mirror and mirror.endswith("/debian"):
        security = mirror + "-security"
    if security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = security.rstrip("/")
    if not include_security:
        if not release:
            raise ValueError("leaving the security suite out needs the release (DIB_RELEASE)")
        base = mirror or "http://deb.debian.org/debian"
        comps = " ".join(components)
        env["DIB_APT_SOURCES_CONF"] = (
            f"default:deb {base} {release} {comps}\nupdates:deb {base} {release}-updates {comps}"
        )
    if extra_ca_dir is not None:
        env["KILN_EXTRA_CA_DIR"] = str(extra_ca_dir)
    if debootstrap_cache:
        # Keep and reuse debootstrap's result in the image cache; apt dist-upgrades it in each build.
        env["DIB_DEBOOTSTRAP_CACHE"] = env["DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE"] = "1"
    return env


def _mounts_under(top: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if Path(point).is_relative_to(top):
            found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)  # deepest first


def cleanup_after_interrupt(tmpdir: Path) -> list[str]:
    """Undo what a killed DIB build left under ``tmpdir``: processes chrooted there, mounts
    (deepest first, lazily if busy) and loop devices backed by files there. Returns what it did."""
    top = tmpdir.resolve()
    done: list[str] = []
    # Daemons started in the chroot (gpg-agent, dirmngr) escape the process group and keep mounts busy.
    chrooted = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "root")).is_relative_to(top):
                chrooted.append(int(proc.name))
        except OSError:
            continue
    done += stop_processes(chrooted, grace_s=2)
    busy = [p for p in _mounts_under(top) if not _run(["umount", p], done)]
    # Loop devices after their filesystems are unmounted, before the tmpfs their files live on.
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        target = backing.read_text().strip().removesuffix(" (deleted)")
        if target and Path(target).is_relative_to(top):
            dev = "/dev/" + backing.parts[3]
            for link in Path("/dev/mapper").glob(backing.parts[3] + "p*"):
                link.unlink(missing_ok=True)
                done.append(f"rm {link}")
            _run(["partx", "-d", dev], done)  # BLKPG partitions outlive losetup -d here
            _run(["losetup", "-d", dev], done)
    for point in sorted(busy, key=lambda p: p.count("/"), reverse=True):
        if Path(point) in {Path(p) for p in _mounts_under(top)} and not _run(["umount", point], done):
            _run(["umount", "-l", point], done)
    return done


def _run(argv: list[str], done: list[str]) -> bool:
    proc = Runner().capture(argv, timeout=120, query=False)
    if proc.returncode == 0:
        done.append(" ".join(argv))
    return proc.returncode == 0
