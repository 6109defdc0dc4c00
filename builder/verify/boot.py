"""Boot a built image in QEMU and wait for proof that it came up.

The guest gets a cloud-init NoCloud seed whose user-data prints a marker on the serial console;
the check passes when the marker appears in the serial log. The marker is derived from a random
token by the guest (reversed), so the literal never appears in anything the host sends: seeing it
means user-data really ran. Optional checks run over SSH (a key made for this boot, a loopback
port forward).

Acceleration is a probed choice, never an assumption: ``probe_kvm`` boots a 512-byte boot sector
under KVM and looks for its output; on these machines /dev/kvm exists but guests hang, so the probe
fails and TCG is used. Foreign architectures always use TCG.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..arch import Arch
from ..errors import EnvironmentProblem
from ..host.net import free_port
from ..host.run import Runner
from ..recipe import BootVerify

# A boot sector: set DS=0, write "KVMOK" to COM1 (port 0x3f8), halt. 16-bit real mode, org 0x7c00.
_PROBE_SECTOR = bytes.fromhex("31c08ed8be147cac84c07406baf803eeebf5faf4") + b"KVMOK\x00"


@lru_cache(maxsize=1)
def probe_kvm(timeout_s: float = 15.0) -> bool:
    """True when a guest really runs under KVM here (not merely when /dev/kvm exists)."""
    binary = shutil.which("qemu-system-x86_64")
    if Arch.host() is not Arch.X86_64 or binary is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="kiln-kvm-probe-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(_PROBE_SECTOR.ljust(510, b"\0") + b"\x55\xaa")
        log = Path(tmp) / "serial.log"
        probe = Runner().start(
            [
                binary,
                "-accel",
                "kvm",
                "-m",
                "32",
                "-display",
                "none",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                f"file:{log}",
                "-drive",
                f"format=raw,file={disk},if=ide",
            ]
        )
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and probe.poll() is None:
                if log.exists() and b"KVMOK" in log.read_bytes():
                    return True
                time.sleep(0.2)
            return log.exists() and b"KVMOK" in log.read_bytes()
        finally:
            probe.stop(grace_s=10)


# A Linux guest under working KVM reaches cloud-init in well under this; TCG needs ~130 s.
KVM_GRACE_S = 120
_KVM_VERDICT = Path.home() / ".cache" / "kiln" / "kvm-linux-hangs"


def choose_accelerator(arch: Arch) -> str:
    """kvm when the probe passes and no earlier Linux boot hung under KVM on this host, else tcg."""
    if arch is Arch.host() and arch is Arch.X86_64 and probe_kvm() and not _kvm_known_to_hang():
        return "kvm"
    return "tcg"


def _kvm_known_to_hang() -> bool:
    # Keyed by kernel release: a host upgrade gets a fresh chance.
    return _KVM_VERDICT.exists() and _KVM_VERDICT.read_text().strip() == os.uname().release


def _remember_kvm_hangs() -> None:
    _KVM_VERDICT.parent.mkdir(parents=True, exist_ok=True)
    _KVM_VERDICT.write_text(os.uname().release + "\n")


remember_kvm_hangs = _remember_kvm_hangs  # for the other verifiers that fall back from KVM to TCG


def serial_device(arch: Arch) -> str:
    """The console device the guest writes to: pseries has hvc0, not a 16550 UART."""
    return "/dev/hvc0" if arch is Arch.PPC64LE else "/dev/ttyS0"


@dataclass
class BootResult:
    passed: bool
    seconds: float
    accelerator: str
    serial_log: Path
    reason: str = ""
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (command, passed, output)


def user_data(token: str, arch: Arch, ssh_public_key: str | None) -> str:
    device = serial_device(arch)
    lines = [
        "#cloud-config",
        "runcmd:",
        # The guest computes the marker (the token reversed): the host never sends its literal text.
        f"  - [sh, -c, 'echo KILN-BOOT-$(echo {token} | rev) > {device}']",
    ]
    if ssh_public_key:
        lines += ["ssh_authorized_keys:", f"  - {ssh_public_key}"]
    return "\n".join(lines) + "\n"


def qemu_machine_argv(arch: Arch, *, accel: str, memory_mb: int, serial_log: Path) -> list[str]:
    """The machine every Kiln boot uses (shared by the image and IPA verifiers): binary, accelerator,
    memory, 2 CPUs, no display, the serial console to ``serial_log``, the arch's machine type."""
    argv = [
        arch.qemu_system,
        "-accel",
        accel,
        "-m",
        str(memory_mb),
        "-smp",
        "2",
        "-display",
        "none",
        "-serial",
        f"file:{serial_log}",
        "-no-reboot",
    ]
    if arch is Arch.PPC64LE:
        argv += ["-M", "pseries", "-vga", "none"]
    elif arch is Arch.AARCH64:
        argv += ["-M", "virt", "-cpu", "max", "-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"]
    return argv


def qemu_argv(
    arch: Arch, *, accel: str, memory_mb: int, disk: Path, seed: Path, serial_log: Path, ssh_port: int | None
) -> list[str]:
    netdev = "user,id=n0" + (f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22" if ssh_port else "")
    argv = qemu_machine_argv(arch, accel=accel, memory_mb=memory_mb, serial_log=serial_log)
    argv += [
        "-drive",
        f"file={disk},if=virtio,format=qcow2",
        "-drive",
        f"file={seed},if=virtio,format=raw,readonly=on",
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    return argv


# Defaults are the recipe model's (stated once, in builder/recipe.py).
_BOOT_DEFAULTS = BootVerify()


def boot_check(
    image: Path,
    arch: Arch,
    workdir: Path,
    *,
    timeout_s: int = _BOOT_DEFAULTS.timeout_s,
    memory_mb: int = _BOOT_DEFAULTS.memory_mb,
    checks: list[str] | None = None,
    ssh_user: str = "debian",
    runner: Runner | None = None,
    accelerator: str | None = None,
) -> BootResult:
    """Boot ``image`` (qcow2; never modified: the guest writes to an overlay) and wait for the marker.

    Under KVM the boot gets ``KVM_GRACE_S``; if the marker does not come, KVM is remembered as
    hanging on this host and the boot is repeated under TCG with the full timeout.
    """
    accel = accelerator or choose_accelerator(arch)
    if accel == "kvm":
        result = _boot_once(
            image,
            arch,
            workdir,
            accel="kvm",
            timeout_s=min(timeout_s, KVM_GRACE_S),
            memory_mb=memory_mb,
            checks=checks,
            ssh_user=ssh_user,
            runner=runner,
        )
        if result.passed or accelerator == "kvm":
            return result
        _remember_kvm_hangs()
    return _boot_once(
        image,
        arch,
        workdir,
        accel="tcg",
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        checks=checks,
        ssh_user=ssh_user,
        runner=runner,
    )


def _boot_once(
    image: Path,
    arch: Arch,
    workdir: Path,
    *,
    accel: str,
    timeout_s: int,
    memory_mb: int,
    checks: list[str] | None,
    ssh_user: str,
    runner: Runner | None,
) -> BootResult:
    runner = runner or Runner()
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(12)
    marker = f"KILN-BOOT-{token[::-1]}".encode()
    overlay = workdir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    runner.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.resolve()), str(overlay)]
    )
    key = None
    if checks:
        key = workdir / "id_ed25519"
        for stale in (key, key.with_suffix(".pub")):
            stale.unlink(missing_ok=True)
        runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    (workdir / "user-data").write_text(
        user_data(token, arch, key.with_suffix(".pub").read_text().strip() if key else None)
    )
    (workdir / "meta-data").write_text(f"instance-id: kiln-{token[:8]}\nlocal-hostname: kiln-verify\n")
    seed = workdir / "seed.iso"
    runner.run(["cloud-localds", str(seed), str(workdir / "user-data"), str(workdir / "meta-data")])
    serial_log = workdir / "serial.log"
    serial_log.unlink(missing_ok=True)
    ssh_port = free_port() if checks else None
    argv = qemu_argv(
        arch,
        accel=accel,
        memory_mb=memory_mb,
        disk=overlay,
        seed=seed,
        serial_log=serial_log,
        ssh_port=ssh_port,
    )
    if shutil.which(argv[0]) is None:
        raise EnvironmentProblem(
            f"{argv[0]} is not installed (Debian: qemu-system-{'ppc' if arch is Arch.PPC64LE else 'x86'})"
        )
    qemu_log = workdir / "qemu.log"
    qemu_log.unlink(missing_ok=True)
    started = time.monotonic()
    proc = runner.start(argv, log_path=qemu_log)
    result = BootResult(False, 0.0, accel, serial_log)
    if proc.dry_run:
        overlay.unlink(missing_ok=True)
        result.reason = "dry run: not booted"
        return result
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if serial_log.exists() and marker in serial_log.read_bytes():
                result.passed = True
                break
            if proc.poll() is not None:
                result.reason = f"qemu exited with {proc.returncode} before the marker appeared"
                break
            time.sleep(1.0)
        else:
            result.reason = (
                f"no boot marker on the serial console within {timeout_s}s; {console_tail(serial_log)}"
            )
        result.seconds = time.monotonic() - started
        if result.passed and checks and key is not None and ssh_port is not None:
            for command in checks:
                ok, output = _ssh_check(runner, key, ssh_port, ssh_user, command, deadline)
                result.checks.append((command, ok, output))
                if not ok:
                    result.passed = False
                    result.reason = f"check failed: {command}"
    finally:
        proc.stop(grace_s=10)
        overlay.unlink(missing_ok=True)
    return result


_CONSOLE_TAIL_BYTES = 4096
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def console_tail(serial_log: Path, limit: int = 160) -> str:
    """Where the guest stopped, in one line: its last printable console line, or that it printed nothing.

    A boot that times out is otherwise a path to a log in a build root that CI throws away; the
    last line (firmware, bootloader, kernel, cloud-init) says which stage hung. The text is the
    guest's, so escapes and control characters are dropped and the line is cut to ``limit``.
    """
    try:
        with serial_log.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _CONSOLE_TAIL_BYTES))
            tail = log.read()
    except FileNotFoundError:
        return "the console log was never written"
    lines = [_CONTROL.sub("", line).strip() for line in tail.decode("utf-8", "replace").splitlines()]
    printable = [line for line in lines if line]
    if not printable:
        return "the console stayed silent"
    last = printable[-1]
    if len(last) > limit:
        last = last[: limit - 1] + "…"
    return f"the console's last line: {last!r}"


def _ssh_check(
    runner: Runner, key: Path, port: int, user: str, command: str, deadline: float
) -> tuple[bool, str]:
    """Run one check over SSH, retrying the connection until sshd answers or the deadline passes."""
    argv = [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "BatchMode=yes",
        f"{user}@127.0.0.1",
        command,
    ]
    output = ""
    while time.monotonic() < deadline:
        done = runner.capture(argv, timeout=120, query=False)
        output = done.output[-2000:]
        if done.returncode is None:  # timed out (or ssh is missing): the check did not pass
            return False, f"{done.error}: {output}"
        if done.returncode != 255:  # 255: ssh itself failed (not up yet); anything else is the command
            return done.returncode == 0, output
        time.sleep(5)
    return False, f"ssh never connected: {output}"
