"""The verifier for Ironic Python Agent ramdisks: boot kernel + initramfs (and the ISO) in QEMU and ask
the agent itself, through its REST API on a forwarded port, whether it is alive and what it sees.

What IPA does with the kernel command line (read in ironic-python-agent's ``agent.py``/``config.py``):
- ``ipa-standalone=1`` is ignored since IPA 7.0.0 (2021). It is not needed: without ``ipa-api-url``
  the agent logs that it has no Ironic to talk to and serves its API on port 9999 anyway (plain
  HTTP: automatic TLS needs an Ironic). Kiln still passes it, for older agents.
- ``POST /v1/commands/`` needs the agent's token since IPA 10.2.0 (older agents accepted none).
  Kiln makes one per boot, passes it as ``ipa-agent-token=`` and sends it as ``?agent_token=``.
  An ISO carries its own command line: Kiln uses the ``ipa-agent-token=`` its boot menu names (found
  in the ISO's bytes: isolinux/grub configurations are plain text in ISO 9660). Otherwise it does what
  Ironic does for virtual media: a second CD labelled ``ir-vfd-dev`` with ``parameters.txt`` naming a
  fresh token, which the agent reads when its command line says ``boot_method=vmedia``.

The checks: ``GET /v1/status`` answers (the boot case); ``poll.get_hardware_info`` lists both virtual
disks (matched by the serial numbers Kiln gives them, or by size); with ``build.raid``, mdadm is in the
ramdisk. IPA's inventory does not list tools, so the evidence is the agent's own log, fetched with
``log.collect_system_logs``: at start the agent runs ``mdadm --assemble --scan`` (logged with
``ipa-debug=1``) or logs "mdadm has not been found". Every answer, the serial log and a summary of
each boot (time-outs included) are kept in the job's work directory and named in the cases.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..core.kind import CaseResult, VerifyJob
from ..errors import EnvironmentProblem
from ..host.net import free_port
from ..host.run import Runner
from .boot import choose_accelerator, qemu_machine_argv, remember_kvm_hangs
from .ipa_agent import (
    DISKS,
    HARDWARE_INFO,
    SYSTEM_LOGS,
    TOKEN_PARAM,
    VMEDIA_LABEL,
    AgentClient,
    VirtualDisk,
    describe_disks,
    iso_agent_token,
    logs_text,
    mdadm_verdict,
    missing_disks,
    run_command,
)

AGENT_PORT = 9999
KVM_GRACE_S = 300  # IPA under working KVM answers in about a minute; TCG needs ~3 min
POLL_S = 2.0
BASE_KERNEL_ARGS = ("ipa-standalone=1", "ipa-debug=1", "ipa-inspection-collectors=default")


@dataclass(frozen=True)
class Media:
    """What QEMU boots: a kernel + initramfs with a command line, or an ISO with its own."""

    label: str  # prefixes case names and artifact files: "" or "iso"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    cdrom: Path | None = None
    vmedia_token: str | None = None  # put on a parameters CD (VMEDIA_LABEL) beside the ISO
    vmedia: Path | None = None  # that CD, made for each boot

    def name(self, case: str) -> str:
        """A case's name for this medium: "iso boot (tcg)", "iso: hardware inventory: 2 disks"."""
        if not self.label:
            return case
        return f"{self.label} {case}" if case.startswith("boot") else f"{self.label}: {case}"

    def file(self, name: str) -> str:
        return f"{self.label or 'ipa'}-{name}"


# --- pure: command lines and verdicts --------------------------------------------------------------


def kernel_command_line(arch: Arch, extra: list[str] | tuple[str, ...], token: str | None) -> str:
    console = "console=hvc0" if arch is Arch.PPC64LE else "console=ttyS0"
    args = [*BASE_KERNEL_ARGS, console, *extra]
    if token:
        args.append(f"{TOKEN_PARAM}={token}")
    return " ".join(args)


def ipa_qemu_argv(
    arch: Arch,
    *,
    accel: str,
    memory_mb: int,
    serial_log: Path,
    port: int,
    disks: list[tuple[Path, VirtualDisk]],
    media: Media,
) -> list[str]:

    argv = qemu_machine_argv(arch, accel=accel, memory_mb=memory_mb, serial_log=serial_log)
    if media.cdrom is not None:
        if arch is Arch.AARCH64:  # the virt machine has no IDE: a SCSI CD-ROM
            argv += ["-device", "virtio-scsi-pci,id=scsi0", "-drive"]
            argv += [f"file={media.cdrom},if=none,id=cd0,media=cdrom,readonly=on", "-device"]
            argv += ["scsi-cd,drive=cd0,bus=scsi0.0"]
        else:
            argv += ["-cdrom", str(media.cdrom)]
        argv += ["-boot", "d"]
        if media.vmedia is not None:  # a read-only SCSI CD: what IPA takes for virtual media
            argv += ["-device", "virtio-scsi-pci,id=vm0", "-drive"]
            argv += [f"file={media.vmedia},if=none,id=vfd,media=cdrom,readonly=on", "-device"]
            argv += ["scsi-cd,drive=vfd,bus=vm0.0"]
    else:
        assert media.kernel is not None and media.initrd is not None
        argv += ["-kernel", str(media.kernel), "-initrd", str(media.initrd), "-append", media.append]
    for index, (path, disk) in enumerate(disks):
        argv += ["-drive", f"file={path},if=none,id=d{index},format=qcow2"]
        argv += ["-device", f"virtio-blk-pci,drive=d{index},serial={disk.serial}"]
    argv += [
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT}",
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    return argv


# --- one boot --------------------------------------------------------------------------------------


@dataclass
class Boot:
    suite: str  # the target id
    media: Media
    accel: str
    timeout_s: int
    serial_log: Path
    answered: bool = False
    seconds: float = 0.0
    reason: str = ""
    files: list[Path] = field(default_factory=list)  # the answers kept
    cases: list[CaseResult] = field(default_factory=list)


class IpaBootVerifier:
    def __init__(self, settings: Any, accelerator: str | None = None):
        self.settings = settings  # the recipe's verify.boot (recipe.BootVerify)
        self.accelerator = accelerator  # forced (tests); None: choose_accelerator

    def verify(self, job: VerifyJob) -> list[CaseResult]:

        target, manifest = job.target, job.manifest
        paths = {a.type: manifest.path_of(a) for a in manifest.artifacts}
        build = target.build
        raid = bool(getattr(build, "raid", False))
        token = secrets.token_urlsafe(32)
        job.runner.add_secret(token)
        kernel = Media(
            "",
            kernel=paths["kernel"],
            initrd=paths["ramdisk"],
            append=kernel_command_line(target.arch, list(getattr(build, "kernel_args", []) or []), token),
        )
        medias = [(kernel, token)]
        if "iso" in paths:
            iso = Media("iso", cdrom=paths["iso"])
            iso_token = iso_agent_token(paths["iso"])
            if iso_token is None:
                iso_token = secrets.token_urlsafe(32)
                job.runner.add_secret(iso_token)
                iso = Media("iso", cdrom=paths["iso"], vmedia_token=iso_token)
            medias.append((iso, iso_token))
        cases: list[CaseResult] = []
        for media, media_token in medias:
            accel = self.accelerator or choose_accelerator(target.arch)
            boot = self._boot(job, media, media_token, accel, raid and not media.label)
            if not boot.answered and accel == "kvm" and self.accelerator is None:
                if not _read(boot.serial_log).strip():  # the PVM symptom: a guest that prints nothing
                    remember_kvm_hangs()
                boot = self._boot(job, media, media_token, "tcg", raid and not media.label)
            cases += boot.cases
        return cases

    def _boot(self, job: VerifyJob, media: Media, token: str | None, accel: str, raid: bool) -> Boot:
        arch, work = job.target.arch, job.work_dir
        timeout_s = int(self.settings.timeout_s)
        if accel == "kvm":
            timeout_s = min(timeout_s, KVM_GRACE_S)
        work.mkdir(parents=True, exist_ok=True)
        boot = Boot(job.target.id, media, accel, timeout_s, work / media.file("serial.log"))
        for stale in (boot.serial_log, work / media.file("qemu.log")):
            stale.unlink(missing_ok=True)
        port = free_port()
        disks: list[tuple[Path, VirtualDisk]] = []
        argv: list[str] = []
        proc = None
        try:
            if media.vmedia_token:
                params = {TOKEN_PARAM: media.vmedia_token}
                media = replace(media, vmedia=_vmedia_params(job.runner, work, params))
            disks = _make_disks(job.runner, work, media)
            argv = ipa_qemu_argv(
                arch,
                accel=accel,
                memory_mb=int(self.settings.memory_mb),
                serial_log=boot.serial_log,
                port=port,
                disks=disks,
                media=media,
            )
            if not job.runner.dry_run and shutil.which(argv[0]) is None:
                raise EnvironmentProblem(
                    f"{argv[0]} is not installed (Debian: qemu-system-x86 / qemu-system-ppc)"
                )
            what = media.label or "kernel + initramfs"
            job.on_step(f"verify: booting {job.target.id} {what} ({accel}, timeout {timeout_s}s)")
            started = time.monotonic()
            proc = job.runner.start(argv, log_path=work / media.file("qemu.log"))
            if proc.dry_run:
                boot.reason = "dry run: not booted"
            else:
                self._ask(boot, proc, AgentClient(f"http://127.0.0.1:{port}", token), started, raid, work)
        finally:
            if proc is not None:
                proc.stop(grace_s=10)
            for path, _ in disks:
                path.unlink(missing_ok=True)
            if media.vmedia is not None:
                media.vmedia.unlink(missing_ok=True)
        _write_json(
            work / media.file("boot.json"),
            {
                "accelerator": accel,
                "port": port,
                "timeout_s": timeout_s,
                "answered": boot.answered,
                "seconds": round(boot.seconds, 1),
                "reason": boot.reason,
                "serial_log": str(boot.serial_log),
                "answers": [str(p) for p in boot.files],
                "argv": [job.runner.mask(a) for a in argv],
            },
        )
        return boot

    def _ask(self, boot: Boot, proc: Any, agent: AgentClient, started: float, raid: bool, work: Path) -> None:
        media, suite = boot.media, boot.suite
        deadline = started + boot.timeout_s
        status = None
        while time.monotonic() < deadline:
            status = agent.status()
            if status is not None:
                break
            if proc.poll() is not None:
                boot.reason = f"qemu exited with {proc.returncode} before the agent answered"
                break
            time.sleep(POLL_S)
        boot.seconds = time.monotonic() - started
        boot_case = media.name(f"boot ({boot.accel})")
        checks = [media.name(f"hardware inventory: {len(DISKS)} disks")]
        if raid:
            checks.append(media.name("software RAID: mdadm"))
        if status is None:
            boot.reason = boot.reason or (
                f"the agent's API did not answer on {agent.base_url} within {boot.timeout_s}s"
            )
            message = f"{boot.reason} (serial log: {boot.serial_log})"
            boot.cases.append(
                CaseResult(suite, boot_case, boot.seconds, False, message, _tail(boot.serial_log))
            )
            boot.cases += [CaseResult(suite, c, 0.0, False, f"not checked: {boot.reason}") for c in checks]
            return
        boot.answered = True
        boot.files.append(_write_json(work / media.file("status.json"), status))
        boot.cases.append(
            CaseResult(
                suite,
                boot_case,
                boot.seconds,
                True,
                output=f"GET /v1/status after {boot.seconds:.0f}s: {json.dumps(status)}\n"
                f"serial log: {boot.serial_log}\nanswer: {boot.files[-1]}",
            )
        )
        boot.cases.append(self._inventory_case(boot, agent, deadline, checks[0], work))
        if raid:
            boot.cases.append(self._raid_case(boot, agent, deadline, checks[1], work))

    def _inventory_case(
        self, boot: Boot, agent: AgentClient, deadline: float, name: str, work: Path
    ) -> CaseResult:
        began = time.monotonic()
        answer, error = run_command(agent, HARDWARE_INFO, deadline)
        seconds = time.monotonic() - began
        if answer is None:
            return CaseResult(boot.suite, name, seconds, False, error, _tail(boot.serial_log))
        saved = _write_json(work / boot.media.file("inventory.json"), answer)
        boot.files.append(saved)
        inventory = answer.get("command_result")
        if answer.get("command_status") != "SUCCEEDED" or not isinstance(inventory, dict):
            message = f"{HARDWARE_INFO} did not succeed: {answer.get('command_error')!r} (answer: {saved})"
            return CaseResult(boot.suite, name, seconds, False, message)
        missing = missing_disks(inventory)
        listed = f"the agent lists {describe_disks(inventory)} (answer: {saved})"
        if missing:
            wanted = ", ".join(f"{d.serial} ({d.size_gib} GiB)" for d in missing)
            return CaseResult(boot.suite, name, seconds, False, f"missing {wanted}: {listed}", listed)
        return CaseResult(boot.suite, name, seconds, True, output=listed)

    def _raid_case(
        self, boot: Boot, agent: AgentClient, deadline: float, name: str, work: Path
    ) -> CaseResult:
        began = time.monotonic()
        answer, error = run_command(agent, SYSTEM_LOGS, deadline)
        seconds = time.monotonic() - began
        if answer is None:
            return CaseResult(boot.suite, name, seconds, False, error)
        result = answer.get("command_result")
        bundle = result.get("system_logs") if isinstance(result, dict) else None
        if not isinstance(bundle, str):
            message = f"{SYSTEM_LOGS} returned no logs: {answer.get('command_error')!r}"
            return CaseResult(boot.suite, name, seconds, False, message)
        saved = work / boot.media.file("system-logs.tar.gz")
        try:
            saved.write_bytes(base64.b64decode(bundle))
            text = logs_text(bundle)
        except (ValueError, tarfile.TarError, OSError) as exc:
            return CaseResult(
                boot.suite, name, seconds, False, f"the agent's log bundle is unreadable: {exc}"
            )
        boot.files.append(saved)
        ok, why = mdadm_verdict(text)
        said = f"{why} (logs: {saved})"
        return CaseResult(boot.suite, name, seconds, ok, "" if ok else said, said)


def _make_disks(runner: Runner, work: Path, media: Media) -> list[tuple[Path, VirtualDisk]]:
    disks = []
    for index, disk in enumerate(DISKS):
        path = work / media.file(f"disk-{index}.qcow2")
        path.unlink(missing_ok=True)
        runner.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{disk.size_gib}G"])
        disks.append((path, disk))
    return disks


def _vmedia_params(runner: Runner, work: Path, params: dict[str, str]) -> Path | None:
    """A small ISO labelled VMEDIA_LABEL holding parameters.txt (None without genisoimage)."""
    tool = shutil.which("genisoimage")
    if tool is None:
        return None
    source = work / "vmedia"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    (source / "parameters.txt").write_text(" ".join(f"{k}={v}" for k, v in params.items()) + "\n")
    image = work / "iso-vmedia.iso"
    image.unlink(missing_ok=True)
    runner.run([tool, "-quiet", "-V", VMEDIA_LABEL, "-r", "-J", "-o", str(image), str(source)])
    shutil.rmtree(source, ignore_errors=True)
    return image


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(_read(path).splitlines()[-lines:])


def ipa_verifier(verify: Any) -> IpaBootVerifier | None:
    """The Kind's ``verifier=``: the recipe's verify settings (kinds/ipa.py IpaVerify) → a verifier."""
    boot = verify.boot
    return IpaBootVerifier(boot) if boot.enabled else None
