"""The container verifier's cases against a fake docker engine (every command goes through a fake
Runner): architecture, CUDA runtime and env, nvcc, labels, recipe commands, the GPU vector add
(skipped with its reason when it cannot run), and loading the image from its OCI layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree as ET

import pytest

from builder.arch import Arch
from builder.core.kind import CaseResult, VerifyJob
from builder.host.run import Captured
from builder.manifest import Artifact, BuildManifest
from builder.verify import container_run
from builder.verify.container_run import ContainerVerifier, local_tag
from builder.verify.junit import write_junit

DIGEST = "0123456789abcdef" * 4
LIBS = "/usr/lib/x86_64-linux-gnu"
GOOD_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "NVIDIA_VISIBLE_DEVICES=all",
    "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    "NVIDIA_REQUIRE_CUDA=cuda>=11.8",
    f"LD_LIBRARY_PATH={LIBS}:/usr/local/nvidia/lib64",
]
GOOD_LABELS = {
    "org.opencontainers.image.title": "cuda-runtime",
    "org.opencontainers.image.revision": "unknown",
    "io.kiln.digest": DIGEST,
    "io.kiln.cuda": "11.8",
}


def inspect_of(arch: Arch, env=GOOD_ENV, labels=GOOD_LABELS) -> dict:
    return {"Os": "linux", "Architecture": arch.oci, "Config": {"Env": list(env), "Labels": dict(labels)}}


class FakeEngine:
    """A docker engine and skopeo behind Runner.capture: images by tag, programs by command line."""

    def __init__(self, arch: Arch = Arch.X86_64, programs: dict[str, tuple[int, str, str]] | None = None):
        self.images: dict[str, dict] = {}
        self.loadable: dict | None = None  # what `skopeo copy` puts into the engine, None: it fails
        self.runtimes = '{"runc":{"path":"runc"}}'
        self.programs = {
            "uname -m": (0, f"{arch.spellings.uname[0]}\n", ""),
            "ldconfig -p": (0, f"\tlibcudart.so.11.0 (libc6,x86-64) => {LIBS}/libcudart.so.11.0\n", ""),
            "find": (0, f"{LIBS}\n/usr/local/nvidia/lib64\n", ""),
            "nvcc --version": (0, "Cuda compilation tools, release 11.8, V11.8.89\n", ""),
            "sh": (0, "vector add: 1048576 elements correct\n", ""),
            "true": (0, "", ""),
            **(programs or {}),
        }
        self.calls: list[tuple[list[str], float]] = []

    def capture(self, argv, *, timeout=30.0, **_):
        argv = [str(a) for a in argv]
        self.calls.append((argv, timeout))
        if argv[:3] == ["docker", "image", "inspect"]:
            found = self.images.get(argv[3])
            if found is None:
                return Captured(tuple(argv), 1, "[]\n", f"Error: No such image: {argv[3]}\n")
            return Captured(tuple(argv), 0, json.dumps([found]), "")
        if argv[:2] == ["skopeo", "copy"]:
            if self.loadable is None:
                return Captured(tuple(argv), 1, "", "FATA[0000] open index.json: no such file or directory\n")
            self.images[argv[3].removeprefix("docker-daemon:")] = self.loadable
            return Captured(tuple(argv), 0, "Writing manifest to image destination\n", "")
        if argv[:2] == ["docker", "info"]:
            return Captured(tuple(argv), 0, self.runtimes + "\n", "")
        if argv[:2] == ["docker", "run"]:
            command = self.command_of(argv)
            said = self.programs.get(" ".join(command)) or self.programs.get(command[0])
            if said is None:
                return Captured(tuple(argv), 127, "", f"exec: {command[0]}: executable file not found\n")
            return Captured(tuple(argv), said[0], said[1], said[2])
        raise AssertionError(f"unexpected command: {argv}")

    @staticmethod
    def command_of(argv: list[str]) -> list[str]:
        tag = next(a for a in argv if a.startswith("kiln-build/"))
        rest = argv[argv.index(tag) + 1 :]
        if "--entrypoint" in argv:
            return [argv[argv.index("--entrypoint") + 1], *rest]
        return rest

    def runs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls if argv[:2] == ["docker", "run"]]


def verify(
    tmp_path: Path,
    engine: FakeEngine,
    *,
    arch: Arch = Arch.X86_64,
    cuda: str | None = "11.8",
    commands=(),
    nvcc: bool = False,
    gpu: bool = False,
    layout: bool = True,
) -> dict[str, CaseResult]:
    target = SimpleNamespace(
        recipe="cuda-runtime",
        arch=arch,
        digest=DIGEST,
        id=f"cuda-runtime:bookworm:{arch.value}",
        build=SimpleNamespace(cuda=cuda),
    )
    artifacts = ()
    if layout:
        (tmp_path / "out" / "image").mkdir(parents=True, exist_ok=True)
        artifacts = (Artifact("image", "oci-layout", "image", "0" * 64, 0),)
    manifest = BuildManifest(
        target.id, target.recipe, "container", arch.value, "bookworm", None, DIGEST, artifacts,
        base_dir=tmp_path / "out",
    )  # fmt: skip
    steps: list[str] = []
    job = VerifyJob(target, manifest, tmp_path / "verify", engine, steps.append, gpu=gpu)  # type: ignore[arg-type]
    settings = SimpleNamespace(commands=[list(c) for c in commands], nvcc=nvcc)
    cases = ContainerVerifier(settings).verify(job)
    assert len({c.name for c in cases}) == len(cases), "case names are unique"
    return {c.name: c for c in cases}


@pytest.fixture(autouse=True)
def x86_64_host(monkeypatch):
    monkeypatch.setattr(Arch, "host", classmethod(lambda cls: Arch.X86_64))


def nvidia_smi_at(monkeypatch, path: str | None) -> None:
    real_which = shutil.which

    def which(name, *args, **kwargs):
        return path if name == "nvidia-smi" else real_which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)


@pytest.fixture
def gpu_host(monkeypatch):
    """nvidia-smi on PATH (the engine's runtimes are the test's to set)."""
    nvidia_smi_at(monkeypatch, "/usr/bin/nvidia-smi")


@pytest.fixture
def no_gpu_host(monkeypatch):
    nvidia_smi_at(monkeypatch, None)


def engine_with_image(
    arch: Arch = Arch.X86_64, inspect: dict | None = None, programs: dict | None = None
) -> FakeEngine:
    engine = FakeEngine(arch, programs)
    engine.images[local_tag("cuda-runtime", arch, DIGEST)] = inspect or inspect_of(arch)
    return engine


# -- the tag ------------------------------------------------------------------------------------------


def test_the_local_tag_names_recipe_arch_and_the_first_16_digest_characters():
    assert (
        local_tag("cuda-runtime", Arch.PPC64LE, DIGEST) == "kiln-build/cuda-runtime:ppc64le-0123456789abcdef"
    )


# -- a good image -------------------------------------------------------------------------------------


def test_a_good_cuda_runtime_image_passes_every_case_and_skips_the_gpu_case_when_not_asked(tmp_path):
    cases = verify(tmp_path, engine_with_image(), commands=[["true"]])
    assert list(cases) == [
        "architecture", "cuda runtime library", "cuda environment", "labels", "true", "gpu vector add",
    ]  # fmt: skip
    assert all(c.passed for c in cases.values()), [c.message for c in cases.values() if not c.passed]
    gpu = cases["gpu vector add"]
    assert gpu.skipped and gpu.passed and "--gpu" in gpu.message
    assert not any(c.skipped for name, c in cases.items() if name != "gpu vector add")


def test_an_image_without_cuda_gets_no_cuda_or_gpu_cases(tmp_path):
    labels = {k: v for k, v in GOOD_LABELS.items() if k != "io.kiln.cuda"}
    engine = engine_with_image(inspect=inspect_of(Arch.X86_64, env=["PATH=/bin"], labels=labels))
    cases = verify(tmp_path, engine, cuda=None)
    assert list(cases) == ["architecture", "labels"]
    assert all(c.passed for c in cases.values())


def test_every_command_runs_in_the_image_without_a_shell_and_without_a_network(tmp_path):
    engine = engine_with_image()
    verify(tmp_path, engine, commands=[["true"]])
    tag = local_tag("cuda-runtime", Arch.X86_64, DIGEST)
    for argv in engine.runs():
        assert argv[:7] == ["docker", "run", "--rm", "--network", "none", "--platform", "linux/amd64"]
        assert tag in argv and "sh" not in argv
    assert [FakeEngine.command_of(a) for a in engine.runs()][-1] == ["true"]


# -- architecture -------------------------------------------------------------------------------------


def test_architecture_fails_when_the_image_records_another_platform(tmp_path):
    engine = engine_with_image(Arch.PPC64LE, inspect=inspect_of(Arch.X86_64))
    case = verify(tmp_path, engine, arch=Arch.PPC64LE)["architecture"]
    assert not case.passed
    assert "linux/amd64" in case.message and "linux/ppc64le" in case.message


def test_architecture_fails_when_uname_in_the_image_prints_another_machine(tmp_path):
    engine = engine_with_image(Arch.PPC64LE, programs={"uname -m": (0, "x86_64\n", "")})
    case = verify(tmp_path, engine, arch=Arch.PPC64LE)["architecture"]
    assert not case.passed and "x86_64" in case.message and "ppc64le" in case.message


def test_architecture_fails_with_the_exit_status_and_last_error_line_when_the_image_cannot_run(tmp_path):
    engine = engine_with_image(programs={"uname -m": (125, "", "docker: exec format error.\n")})
    case = verify(tmp_path, engine)["architecture"]
    assert not case.passed
    assert case.message == "exit 125: docker: exec format error."
    assert "exec format error" in case.output


def test_a_foreign_arch_runs_emulated_for_its_platform_with_longer_time_outs(tmp_path):
    engine = engine_with_image(Arch.PPC64LE)
    cases = verify(tmp_path, engine, arch=Arch.PPC64LE)
    assert cases["architecture"].passed
    native = engine_with_image()
    verify(tmp_path / "native", native)
    run_timeouts = [t for argv, t in engine.calls if argv[:2] == ["docker", "run"]]
    native_timeouts = [t for argv, t in native.calls if argv[:2] == ["docker", "run"]]
    assert all("linux/ppc64le" in argv for argv in engine.runs())
    assert min(run_timeouts) >= 5 * max(native_timeouts)
    assert all(t is not None and t > 0 for _, t in engine.calls), "every call has a time-out"


def test_a_time_out_is_a_failure_that_says_so(tmp_path):
    engine = engine_with_image()
    real = engine.capture

    def slow_uname(argv, **kw):
        if "uname" in argv:
            return Captured(tuple(argv), None, "", "", timed_out=True)
        return real(argv, **kw)

    engine.capture = slow_uname  # type: ignore[method-assign]
    case = verify(tmp_path, engine)["architecture"]
    assert not case.passed and case.message.startswith("timed out after")


# -- CUDA ---------------------------------------------------------------------------------------------


def test_the_cuda_runtime_library_case_fails_when_ldconfig_lists_no_libcudart(tmp_path):
    engine = engine_with_image(
        programs={"ldconfig -p": (0, "\tlibc.so.6 (libc6,x86-64) => /lib/libc.so.6\n", "")}
    )
    case = verify(tmp_path, engine)["cuda runtime library"]
    assert not case.passed and "libcudart" in case.message


def test_the_cuda_environment_case_names_each_missing_variable(tmp_path):
    env = [e for e in GOOD_ENV if not e.startswith(("NVIDIA_REQUIRE_CUDA", "NVIDIA_VISIBLE_DEVICES"))]
    engine = engine_with_image(inspect=inspect_of(Arch.X86_64, env=env))
    case = verify(tmp_path, engine)["cuda environment"]
    assert not case.passed
    assert "NVIDIA_REQUIRE_CUDA" in case.message and "NVIDIA_VISIBLE_DEVICES" in case.message
    assert "NVIDIA_DRIVER_CAPABILITIES" not in case.message


def test_the_cuda_environment_case_fails_when_ld_library_path_names_a_missing_directory(tmp_path):
    engine = engine_with_image(
        programs={"find": (1, f"{LIBS}\n", "find: '/usr/local/nvidia/lib64': No such file\n")}
    )
    case = verify(tmp_path, engine)["cuda environment"]
    assert not case.passed
    assert "/usr/local/nvidia/lib64" in case.message and LIBS not in case.message


def test_nvcc_is_checked_only_when_the_recipe_asks(tmp_path):
    assert "nvcc" not in verify(tmp_path, engine_with_image())
    assert verify(tmp_path, engine_with_image(), nvcc=True)["nvcc"].passed
    missing = engine_with_image(programs={"nvcc --version": (127, "", "exec: nvcc: not found\n")})
    case = verify(tmp_path, missing, nvcc=True)["nvcc"]
    assert not case.passed and case.message.startswith("exit 127")


# -- labels -------------------------------------------------------------------------------------------


def test_labels_fail_when_the_digest_label_is_another_builds(tmp_path):
    labels = {**GOOD_LABELS, "io.kiln.digest": "f" * 64}
    case = verify(tmp_path, engine_with_image(inspect=inspect_of(Arch.X86_64, labels=labels)))["labels"]
    assert not case.passed and "io.kiln.digest" in case.message and DIGEST in case.message


def test_labels_fail_when_title_revision_or_the_cuda_label_is_missing(tmp_path):
    labels = {"io.kiln.digest": DIGEST}
    case = verify(tmp_path, engine_with_image(inspect=inspect_of(Arch.X86_64, labels=labels)))["labels"]
    assert not case.passed
    for name in ("org.opencontainers.image.title", "org.opencontainers.image.revision", "io.kiln.cuda"):
        assert name in case.message


# -- the recipe's commands ----------------------------------------------------------------------------


def test_each_recipe_command_is_one_case_and_a_non_zero_exit_fails_it(tmp_path):
    engine = engine_with_image(
        programs={
            "python3 -c import sys": (0, "", ""),
            "ls /opt/missing": (2, "", "ls: cannot access '/opt/missing'\n"),
        }
    )
    cases = verify(tmp_path, engine, commands=[["python3", "-c", "import sys"], ["ls", "/opt/missing"]])
    assert cases["python3 -c 'import sys'"].passed
    failed = cases["ls /opt/missing"]
    assert not failed.passed and failed.message == "exit 2: ls: cannot access '/opt/missing'"


# -- the GPU vector add -------------------------------------------------------------------------------


def test_the_gpu_case_is_skipped_without_a_gpu_on_the_host(tmp_path, no_gpu_host):
    case = verify(tmp_path, engine_with_image(), gpu=True, nvcc=True)["gpu vector add"]
    assert case.skipped and case.passed and "nvidia-smi" in case.message


def test_the_gpu_case_is_skipped_without_the_nvidia_container_runtime(tmp_path, gpu_host):
    case = verify(tmp_path, engine_with_image(), gpu=True, nvcc=True)["gpu vector add"]
    assert case.skipped and "nvidia runtime" in case.message


def test_the_gpu_case_is_skipped_for_an_image_without_nvcc(tmp_path, gpu_host):
    engine = engine_with_image(programs={"nvcc --version": (127, "", "exec: nvcc: not found\n")})
    engine.runtimes = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'
    case = verify(tmp_path, engine, gpu=True)["gpu vector add"]
    assert case.skipped and "nvcc" in case.message


def test_the_gpu_case_is_skipped_for_an_emulated_image(tmp_path, gpu_host):
    engine = engine_with_image(Arch.PPC64LE)
    engine.runtimes = '{"nvidia":{"path":"nvidia-container-runtime"}}'
    case = verify(tmp_path, engine, arch=Arch.PPC64LE, gpu=True, nvcc=True)["gpu vector add"]
    assert case.skipped and "emulated" in case.message


def test_the_gpu_case_compiles_and_runs_the_vector_add_with_all_gpus(tmp_path, gpu_host):
    engine = engine_with_image()
    engine.runtimes = '{"nvidia":{"path":"nvidia-container-runtime"}}'
    case = verify(tmp_path, engine, gpu=True, nvcc=True)["gpu vector add"]
    assert case.passed and not case.skipped and "elements correct" in case.output
    argv = next(a for a in engine.runs() if "--gpus" in a)
    assert argv[argv.index("--gpus") + 1] == "all"
    mount = argv[argv.index("-v") + 1].split(":")[0]
    assert (Path(mount) / "vector_add.cu").read_text() == container_run.VECTOR_ADD.read_text()


def test_the_gpu_case_fails_when_the_vector_add_reports_a_mismatch(tmp_path, gpu_host):
    engine = engine_with_image(programs={"sh": (1, "", "vector add: 12 of 1048576 elements wrong\n")})
    engine.runtimes = '{"nvidia":{"path":"nvidia-container-runtime"}}'
    case = verify(tmp_path, engine, gpu=True, nvcc=True)["gpu vector add"]
    assert not case.passed and not case.skipped
    assert case.message == "exit 1: vector add: 12 of 1048576 elements wrong"


def test_the_shipped_vector_add_checks_its_result_and_exits_non_zero_on_a_mismatch():
    source = container_run.VECTOR_ADD.read_text()
    assert "__global__ void vector_add" in source and "<<<" in source
    assert "cudaMemcpyDeviceToHost" in source and "return 1;" in source


# -- the image itself ---------------------------------------------------------------------------------


def test_a_tag_missing_from_the_engine_is_loaded_from_the_oci_layout(tmp_path):
    engine = FakeEngine()
    engine.loadable = inspect_of(Arch.X86_64)
    cases = verify(tmp_path, engine)
    tag = local_tag("cuda-runtime", Arch.X86_64, DIGEST)
    copy = next(argv for argv, _ in engine.calls if argv[0] == "skopeo")
    assert copy == ["skopeo", "copy", f"oci:{tmp_path / 'out' / 'image'}", f"docker-daemon:{tag}"]
    assert cases["architecture"].passed and cases["labels"].passed


def test_a_tag_missing_everywhere_is_one_failed_image_case_that_says_why(tmp_path):
    cases = verify(tmp_path, FakeEngine(), layout=False)
    assert list(cases) == ["image"]
    assert not cases["image"].passed and "no OCI layout" in cases["image"].message


def test_a_layout_that_skopeo_cannot_load_fails_the_image_case_with_skopeos_words(tmp_path):
    cases = verify(tmp_path, FakeEngine())
    assert list(cases) == ["image"]
    case = cases["image"]
    assert not case.passed and "skopeo copy" in case.message and "index.json" in case.output


# -- JUnit and the gate -------------------------------------------------------------------------------


def test_a_skipped_case_is_written_as_skipped_in_junit_and_is_no_failure(tmp_path):
    cases = list(verify(tmp_path, engine_with_image()).values())
    xml = ET.parse(write_junit(tmp_path / "verify.xml", cases)).getroot()
    suite = xml.find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("skipped") == "1"
    gpu = suite.find("testcase[@name='gpu vector add']")
    assert gpu is not None and gpu.find("failure") is None
    skipped = gpu.find("skipped")
    assert skipped is not None and "--gpu" in (skipped.get("message") or "")
    assert not [c for c in cases if not c.passed], "the gate counts no failure"
