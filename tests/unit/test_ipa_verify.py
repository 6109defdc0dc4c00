"""The IPA ramdisk verifier (builder/verify/ipa_boot.py) against a fake QEMU whose 'guest' is a fake
agent API on the forwarded port (http.server in a thread): no ramdisk is booted here."""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest

from builder.arch import Arch
from builder.core.kind import CaseResult, VerifyJob
from builder.manifest import Artifact, BuildManifest
from builder.verify import ipa_agent, ipa_boot
from builder.verify.ipa_agent import DISKS, VirtualDisk, iso_agent_token, mdadm_verdict, missing_disks
from builder.verify.ipa_boot import IpaBootVerifier, Media, ipa_qemu_argv, ipa_verifier, kernel_command_line

MDADM_RAN = "DEBUG oslo_concurrency.processutils Running cmd (subprocess): mdadm --assemble --scan --verbose"
MDADM_MISSING = (
    "WARNING ironic_python_agent.hardware mdadm has not been found, RAID devices will not be supported"
)
ISO_TOKEN = "iso-token-0123456789abcdef0123456789abcdef"


@dataclass
class Guest:
    """What the booted 'ramdisk' does."""

    answers: bool = True
    serial: str = "Linux version 6.1.0-kiln\nStarted ironic-python-agent.service\n"
    exits_with: int | None = None
    drop_disk: int | None = None  # this virtual disk is missing from the inventory
    logs: str = MDADM_RAN
    token_required: bool = True  # IPA >= 10.2: no token, no commands
    busy: int = 0  # answer this many commands with 409 (AgentIsBusy) first
    failing: bool = False  # the inventory command fails inside the agent
    commands: list[str] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)


class FakeQemu:
    """What Runner.start returns: the 'guest' answers on the forwarded port until stopped."""

    def __init__(self, argv: list[str], guest: Guest, sizes: dict[str, int]):
        self.argv, self.guest, self.stopped = argv, guest, False
        self.dry_run = False
        serial = Path(re.search(r"file:(\S+)", argv[argv.index("-serial") + 1]).group(1))
        serial.write_text(guest.serial)
        self.port = int(re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:9999", " ".join(argv)).group(1))
        self.disks = self._disks(sizes)
        self.token = self._token()
        self.returncode = guest.exits_with
        self.server = None
        if guest.answers and guest.exits_with is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def _disks(self, sizes: dict[str, int]) -> list[dict]:
        files = re.findall(r"file=([^,]+),if=none,id=(d\d)", " ".join(self.argv))
        serials = dict(re.findall(r"virtio-blk-pci,drive=(d\d),serial=([\w-]+)", " ".join(self.argv)))
        return [
            {
                "name": f"/dev/vd{'abcdefgh'[i]}",
                "size": sizes[path],
                "serial": serials[drive],
                "rotational": True,
            }
            for i, (path, drive) in enumerate(files)
            if i != self.guest.drop_disk
        ]

    def _token(self) -> str | None:
        if "-append" in self.argv:
            found = re.search(r"ipa-agent-token=(\S+)", self.argv[self.argv.index("-append") + 1])
            return found.group(1) if found else None
        iso = Path(self.argv[self.argv.index("-cdrom") + 1]).read_bytes()
        found = re.search(rb"ipa-agent-token=(\S+)", iso)
        vmedia = re.search(r"file=([^,]+),if=none,id=vfd,media=cdrom", " ".join(self.argv))
        if not found and b"boot_method=vmedia" in iso and vmedia:  # IPA reads ir-vfd-dev's parameters.txt
            found = re.search(rb"ipa-agent-token=(\S+)", Path(vmedia.group(1)).read_bytes())
        return found.group(1).decode() if found else None

    def _handler(self):
        qemu = self

        class Agent(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/status":
                    self._send(200, {"started_at": 1764130000.0, "version": "10.3.0"})
                else:
                    self._send(404, {"faultstring": "not found"})

            def do_POST(self):
                url = urlparse(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                token = parse_qs(url.query).get("agent_token", [None])[0]
                qemu.guest.commands.append(body["name"])
                qemu.guest.tokens.append(token)
                if url.path != "/v1/commands/" or parse_qs(url.query).get("wait") != ["true"]:
                    return self._send(404, {"faultstring": "not found"})
                # IPA >= 10.2 refuses every command without a token; an older agent never given one
                # compares None with what it gets
                no_token = token is None and not qemu.guest.token_required
                known = token == qemu.token if qemu.token else no_token
                if not known:
                    return self._send(401, {"faultcode": "Client", "faultstring": "Token invalid."})
                if qemu.guest.busy:
                    qemu.guest.busy -= 1
                    return self._send(409, {"faultcode": "Client", "faultstring": "Agent is busy"})
                if body["name"] == "poll.get_hardware_info" and qemu.guest.failing:
                    error = {"type": "HardwareManagerError", "message": "lshw failed"}
                    return self._send(200, {"command_status": "FAILED", "command_error": error})
                if body["name"] == "poll.get_hardware_info":
                    result = {"disks": qemu.disks, "cpu": {"count": 2}, "memory": {"physical_mb": 3072}}
                elif body["name"] == "log.collect_system_logs":
                    result = {"system_logs": _bundle(qemu.guest.logs)}
                else:
                    return self._send(400, {"faultstring": f"Unknown command: {body['name']}"})
                self._send(
                    200, {"command_status": "SUCCEEDED", "command_result": result, "command_error": None}
                )

        return Agent

    def poll(self):
        return self.returncode

    def stop(self, grace_s: float = 10.0) -> bool:
        self.stopped = True
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        return True


class FakeRunner:
    dry_run = False

    def __init__(self, *guests: Guest):
        self.guests = list(guests)
        self.started: list[FakeQemu] = []
        self.sizes: dict[str, int] = {}
        self.secrets: list[str] = []

    def run(self, argv, **kwargs):
        argv = [str(a) for a in argv]
        if argv[0].endswith("genisoimage"):  # the 'ISO' holds the parameters file's text
            assert argv[argv.index("-V") + 1] == "ir-vfd-dev"
            Path(argv[argv.index("-o") + 1]).write_bytes((Path(argv[-1]) / "parameters.txt").read_bytes())
            return
        assert argv[:2] == ["qemu-img", "create"] and "qcow2" in argv
        Path(argv[-2]).write_bytes(b"QFI\xfb")
        self.sizes[argv[-2]] = int(argv[-1].rstrip("G")) << 30

    def start(self, argv, log_path=None, **kwargs):
        guest = self.guests.pop(0) if len(self.guests) > 1 else self.guests[0]
        qemu = FakeQemu([str(a) for a in argv], guest, self.sizes)
        self.started.append(qemu)
        return qemu

    def add_secret(self, secret: str) -> None:
        self.secrets.append(secret)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text


def _bundle(text: str) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("journal")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(ipa_boot, "POLL_S", 0.05)
    monkeypatch.setattr(ipa_agent, "RETRY_S", 0.05)
    monkeypatch.setattr(ipa_boot.shutil, "which", lambda name: f"/usr/bin/{name}")


def verify(
    tmp_path: Path,
    runner: FakeRunner,
    *,
    raid: bool = False,
    iso: bytes | None = None,
    timeout_s: int = 20,
    accelerator: str | None = "tcg",
    arch: Arch = Arch.X86_64,
) -> dict[str, CaseResult]:
    out = tmp_path / "out"
    (out / "ipa").mkdir(parents=True, exist_ok=True)
    (out / "ipa" / "ipa.kernel").write_bytes(b"kernel")
    (out / "ipa" / "ipa.initramfs").write_bytes(b"initramfs")
    artifacts = [
        Artifact("kernel", "kernel", "ipa/ipa.kernel", "0" * 64, 6),
        Artifact("initramfs", "ramdisk", "ipa/ipa.initramfs", "0" * 64, 9),
    ]
    if iso is not None:
        (out / "ipa" / "ipa.iso").write_bytes(iso)
        artifacts.append(Artifact("iso", "iso", "ipa/ipa.iso", "0" * 64, len(iso)))
    target_id = f"ipa:bookworm:{arch.value}"
    target = SimpleNamespace(
        id=target_id, arch=arch, build=SimpleNamespace(raid=raid, kernel_args=["nofb"], debug_login=False)
    )
    manifest = BuildManifest(
        target_id,
        "ipa",
        "ipa-ramdisk",
        arch.value,
        "bookworm",
        None,
        "d" * 64,
        tuple(artifacts),
        base_dir=out,
    )
    job = VerifyJob(target, manifest, tmp_path / "verify", runner, lambda step: None)  # type: ignore[arg-type]
    settings = SimpleNamespace(enabled=True, timeout_s=timeout_s, memory_mb=3072)
    cases = IpaBootVerifier(settings, accelerator=accelerator).verify(job)
    assert len({c.name for c in cases}) == len(cases), "case names are unique"
    assert all(q.stopped for q in runner.started), "QEMU is always stopped"
    assert not list((tmp_path / "verify").glob("*.qcow2")), "the virtual disks are removed"
    return {c.name: c for c in cases}


# -- a kernel + initramfs boot --------------------------------------------------------------------------


def test_an_agent_that_answers_and_lists_both_disks_passes_the_boot_and_the_inventory(tmp_path):
    guest = Guest()
    runner = FakeRunner(guest)
    cases = verify(tmp_path, runner)
    assert list(cases) == ["boot (tcg)", "hardware inventory: 2 disks"]
    assert all(c.passed for c in cases.values()), cases
    assert guest.commands == ["poll.get_hardware_info"]
    assert "kiln-disk-0" in cases["hardware inventory: 2 disks"].output
    work = tmp_path / "verify"
    inventory = json.loads((work / "ipa-inventory.json").read_text())
    assert len(inventory["command_result"]["disks"]) == 2
    assert json.loads((work / "ipa-status.json").read_text())["version"] == "10.3.0"
    assert str(work / "ipa-serial.log") in cases["boot (tcg)"].output


def test_the_guest_gets_the_kernel_the_initramfs_the_agents_arguments_3_gib_and_two_serial_numbered_disks(
    tmp_path,
):
    runner = FakeRunner(Guest())
    verify(tmp_path, runner)
    argv = runner.started[0].argv
    assert argv[0] == "qemu-system-x86_64" and argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "3072"
    assert argv[argv.index("-kernel") + 1].endswith("ipa.kernel")
    assert argv[argv.index("-initrd") + 1].endswith("ipa.initramfs")
    append = argv[argv.index("-append") + 1].split()
    assert {"ipa-standalone=1", "console=ttyS0", "ipa-debug=1", "nofb"} <= set(append)
    token = next(a.split("=", 1)[1] for a in append if a.startswith("ipa-agent-token="))
    assert runner.started[0].guest.tokens == [token], "the command API gets the boot's token"
    assert token in runner.secrets, "the token is masked in logs"
    assert "serial=kiln-disk-0" in " ".join(argv) and "serial=kiln-disk-1" in " ".join(argv)
    assert sorted(runner.sizes.values()) == [1 << 30, 2 << 30]
    summary = json.loads((tmp_path / "verify" / "ipa-boot.json").read_text())
    assert summary["answered"] is True and token not in json.dumps(summary)


def test_an_inventory_with_one_disk_fails_the_disks_case_naming_the_missing_one(tmp_path):
    cases = verify(tmp_path, FakeRunner(Guest(drop_disk=1)))
    assert cases["boot (tcg)"].passed
    disks = cases["hardware inventory: 2 disks"]
    assert not disks.passed
    assert "missing kiln-disk-1 (2 GiB)" in disks.message and "/dev/vda" in disks.message


def test_a_busy_agent_is_asked_again_until_it_takes_the_command(tmp_path):
    guest = Guest(busy=2)
    cases = verify(tmp_path, FakeRunner(guest))
    assert cases["hardware inventory: 2 disks"].passed
    assert guest.commands == ["poll.get_hardware_info"] * 3


def test_an_inventory_command_that_fails_in_the_agent_fails_the_disks_case_with_its_error(tmp_path):
    cases = verify(tmp_path, FakeRunner(Guest(failing=True)))
    disks = cases["hardware inventory: 2 disks"]
    assert not disks.passed and "did not succeed" in disks.message and "lshw failed" in disks.message


def test_an_agent_that_never_answers_fails_the_boot_after_the_timeout_with_the_serial_log_tail(tmp_path):
    guest = Guest(answers=False, serial="Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    cases = verify(tmp_path, FakeRunner(guest), timeout_s=1)
    boot = cases["boot (tcg)"]
    assert not boot.passed and "did not answer" in boot.message and "within 1s" in boot.message
    assert "ipa-serial.log" in boot.message and "Kernel panic" in boot.output
    assert not cases["hardware inventory: 2 disks"].passed
    assert cases["hardware inventory: 2 disks"].message.startswith("not checked")
    summary = json.loads((tmp_path / "verify" / "ipa-boot.json").read_text())
    assert summary["answered"] is False and summary["timeout_s"] == 1


def test_qemu_exiting_before_the_agent_answers_fails_the_boot_at_once_with_its_exit_status(tmp_path):
    cases = verify(tmp_path, FakeRunner(Guest(exits_with=1)), timeout_s=60)
    boot = cases["boot (tcg)"]
    assert not boot.passed and "qemu exited with 1" in boot.message
    assert boot.seconds < 10


def test_qemu_is_stopped_and_the_disks_removed_when_the_check_itself_breaks(tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(ipa_agent.AgentClient, "status", broken)
    runner = FakeRunner(Guest())
    with pytest.raises(RuntimeError):
        verify(tmp_path, runner)
    assert runner.started[0].stopped
    assert not list((tmp_path / "verify").glob("*.qcow2"))


def test_a_kvm_boot_that_prints_nothing_is_remembered_as_a_hang_and_repeated_under_tcg(tmp_path, monkeypatch):
    remembered = []
    monkeypatch.setattr("builder.verify.ipa_boot.remember_kvm_hangs", lambda: remembered.append(True))
    monkeypatch.setattr(
        "builder.verify.ipa_boot.choose_accelerator", lambda arch: "tcg" if remembered else "kvm"
    )
    runner = FakeRunner(Guest(answers=False, serial=""), Guest())
    cases = verify(tmp_path, runner, accelerator=None, timeout_s=1)
    assert [q.argv[q.argv.index("-accel") + 1] for q in runner.started] == ["kvm", "tcg"]
    assert remembered == [True]
    assert cases["boot (tcg)"].passed and "boot (kvm)" not in cases


def test_an_iso_repeated_under_tcg_after_a_kvm_hang_gets_a_fresh_virtual_media_cd(tmp_path, monkeypatch):
    monkeypatch.setattr("builder.verify.ipa_boot.remember_kvm_hangs", lambda: None)
    monkeypatch.setattr("builder.verify.ipa_boot.choose_accelerator", lambda arch: "kvm")
    runner = FakeRunner(Guest(), Guest(answers=False, serial=""), Guest())
    cases = verify(tmp_path, runner, iso=b"boot_method=vmedia", accelerator=None, timeout_s=1)
    assert list(cases) == [
        "boot (kvm)",
        "hardware inventory: 2 disks",
        "iso boot (tcg)",
        "iso: hardware inventory: 2 disks",
    ]
    assert cases["iso: hardware inventory: 2 disks"].passed, cases["iso: hardware inventory: 2 disks"]


# -- software RAID ----------------------------------------------------------------------------------------


def test_with_raid_mdadm_passes_when_the_agents_own_log_shows_it_ran_mdadm(tmp_path):
    guest = Guest(logs=f"agent starting\n{MDADM_RAN}\n")
    cases = verify(tmp_path, FakeRunner(guest), raid=True)
    assert cases["software RAID: mdadm"].passed, cases["software RAID: mdadm"]
    assert guest.commands == ["poll.get_hardware_info", "log.collect_system_logs"]
    assert (tmp_path / "verify" / "ipa-system-logs.tar.gz").exists()


def test_with_raid_mdadm_fails_when_the_agent_logged_that_mdadm_is_missing(tmp_path):
    cases = verify(tmp_path, FakeRunner(Guest(logs=MDADM_MISSING)), raid=True)
    raid = cases["software RAID: mdadm"]
    assert not raid.passed and "mdadm is not in the ramdisk" in raid.message


def test_without_raid_there_is_no_mdadm_case_and_no_log_request(tmp_path):
    guest = Guest()
    assert "software RAID: mdadm" not in verify(tmp_path, FakeRunner(guest))
    assert "log.collect_system_logs" not in guest.commands


# -- the ISO ------------------------------------------------------------------------------------------------


def test_the_iso_boots_from_the_cdrom_and_gets_the_same_checks_with_the_token_its_boot_menu_names(tmp_path):
    iso = b"\0" * 5000 + f"append initrd=initrd ipa-agent-token={ISO_TOKEN} console=ttyS0\n".encode()
    runner = FakeRunner(Guest(), Guest())
    cases = verify(tmp_path, runner, iso=iso)
    assert list(cases) == [
        "boot (tcg)",
        "hardware inventory: 2 disks",
        "iso boot (tcg)",
        "iso: hardware inventory: 2 disks",
    ]
    assert all(c.passed for c in cases.values()), cases
    argv = runner.started[1].argv
    assert "-kernel" not in argv and argv[argv.index("-cdrom") + 1].endswith("ipa.iso")
    assert runner.started[1].guest.tokens == [ISO_TOKEN]
    assert (tmp_path / "verify" / "iso-inventory.json").exists()
    assert (tmp_path / "verify" / "iso-serial.log").exists()


def test_an_iso_without_a_token_fails_its_inventory_saying_what_the_agent_needs(tmp_path):
    cases = verify(tmp_path, FakeRunner(Guest(), Guest()), iso=b"isolinux without a token")
    assert cases["iso boot (tcg)"].passed
    inventory = cases["iso: hardware inventory: 2 disks"]
    assert not inventory.passed
    assert "ipa-agent-token=" in inventory.message and "boot_method=vmedia" in inventory.message


def test_an_iso_booted_with_boot_method_vmedia_gets_a_token_on_a_virtual_media_cd_as_ironic_does(tmp_path):
    runner = FakeRunner(Guest(), Guest())
    cases = verify(tmp_path, runner, iso=b"append initrd=initrd boot_method=vmedia console=ttyS0\n")
    assert cases["iso: hardware inventory: 2 disks"].passed, cases["iso: hardware inventory: 2 disks"]
    argv = " ".join(runner.started[1].argv)
    assert "id=vfd,media=cdrom,readonly=on" in argv and "scsi-cd,drive=vfd" in argv
    (token,) = runner.started[1].guest.tokens
    assert token in runner.secrets
    assert not (tmp_path / "verify" / "iso-vmedia.iso").exists(), "the token's CD is removed after the boot"


def test_an_older_agent_that_takes_commands_without_a_token_passes_the_iso_inventory(tmp_path):
    cases = verify(tmp_path, FakeRunner(Guest(), Guest(token_required=False)), iso=b"no token here")
    assert cases["iso: hardware inventory: 2 disks"].passed


def test_an_iso_that_never_answers_fails_with_its_own_serial_log(tmp_path):
    runner = FakeRunner(Guest(), Guest(answers=False, serial="isolinux: boot failed\n"))
    cases = verify(tmp_path, runner, iso=b"iso", timeout_s=1)
    assert cases["boot (tcg)"].passed
    assert not cases["iso boot (tcg)"].passed
    assert "iso-serial.log" in cases["iso boot (tcg)"].message
    assert "boot failed" in cases["iso boot (tcg)"].output


# -- the pure parts -----------------------------------------------------------------------------------------


def test_ppc64le_boots_on_pseries_with_the_hvc0_console():
    append = kernel_command_line(Arch.PPC64LE, [], "t")
    assert "console=hvc0" in append.split() and "console=ttyS0" not in append
    media = Media("", kernel=Path("k"), initrd=Path("i"), append=append)
    argv = ipa_qemu_argv(
        Arch.PPC64LE, accel="tcg", memory_mb=3072, serial_log=Path("s"), port=1, disks=[], media=media
    )
    assert argv[0] == "qemu-system-ppc64" and argv[argv.index("-M") + 1] == "pseries"


def test_disks_are_matched_by_serial_or_else_by_exact_size():
    by_serial = {"disks": [{"serial": "kiln-disk-0", "size": 1}, {"serial": "kiln-disk-1", "size": 2}]}
    by_size = {"disks": [{"serial": None, "size": 1 << 30}, {"serial": "", "size": 2 << 30}]}
    assert missing_disks(by_serial) == [] and missing_disks(by_size) == []
    assert missing_disks({"disks": [{"serial": "other", "size": 5}]}) == list(DISKS)
    assert missing_disks({}) == list(DISKS)
    assert VirtualDisk("x", 2).size_bytes == 2 << 30


def test_mdadm_verdict_needs_evidence_that_the_agent_ran_it():
    assert mdadm_verdict(MDADM_RAN)[0]
    assert not mdadm_verdict(MDADM_MISSING)[0]
    ok, why = mdadm_verdict("nothing about raid")
    assert not ok and "ipa-debug=1" in why


def test_the_iso_token_is_found_across_a_read_boundary(tmp_path):
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"\0" * 1000 + f"ipa-agent-token={ISO_TOKEN} ".encode())
    assert iso_agent_token(iso, chunk=1010) == ISO_TOKEN
    iso.write_bytes(b"\0" * 2000)
    assert iso_agent_token(iso, chunk=512) is None


def test_there_is_no_verifier_when_boot_verification_is_off():
    assert ipa_verifier(SimpleNamespace(boot=SimpleNamespace(enabled=False))) is None
    assert isinstance(ipa_verifier(SimpleNamespace(boot=SimpleNamespace(enabled=True))), IpaBootVerifier)
