"""The verifier for container images: run the built image for its arch (emulated where the host is
another) and report JUnit cases: architecture, CUDA runtime and environment, nvcc, labels, the
recipe's commands, and a vector add on a GPU when asked and the host has one.

The image is the local engine's ``kiln-build/<recipe>:<arch>-<digest[:16]>``; when the engine lacks
it (another machine, pruned) it is loaded from the build's OCI layout with skopeo. Every docker and
skopeo call goes through the Runner with a time-out (longer under emulation)."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..backends.container import local_tag
from ..core.kind import CaseResult, VerifyJob

INSPECT_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 120.0  # one `docker run` natively; multiplied under emulation
EMULATION_SLOWDOWN = 6  # measured: emulated ppc64le runs ~6x slower than native
GPU_TIMEOUT_S = 600.0  # nvcc compiles, then the program runs
OUTPUT_TAIL_LINES = 40
CUDA_ENV = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_REQUIRE_CUDA")
VECTOR_ADD = Path(__file__).parent / "cuda" / "vector_add.cu"


@dataclass(frozen=True)
class Said:
    """What one command in the image printed: for a case's output and one-line message."""

    ok: bool
    stdout: str
    output: str
    why: str  # one line: how it failed, "" when ok


def _tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _first_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


class ContainerVerifier:
    def __init__(self, settings: Any):  # the recipe's verify (kinds/container.py ContainerVerify)
        self.settings = settings

    def verify(self, job: VerifyJob) -> list[CaseResult]:
        return _Session(job, self.settings).cases()


class _Session:
    """One verification of one image: the facts gathered once, then each case."""

    def __init__(self, job: VerifyJob, settings: Any):
        self.job, self.settings = job, settings
        self.target = job.target
        self.arch: Arch = job.target.arch
        self.emulated = self.arch != Arch.host()
        self.tag = local_tag(self.target.recipe, self.arch, self.target.digest)
        self.run_timeout = RUN_TIMEOUT_S * (EMULATION_SLOWDOWN if self.emulated else 1)
        self.config: dict[str, Any] = {}
        self.image: dict[str, Any] = {}

    # -- the cases ------------------------------------------------------------------------------------

    def cases(self) -> list[CaseResult]:
        started = time.monotonic()
        problem, output = self._ensure_image()
        if problem:
            return [self._case("image", started, False, problem, output)]
        cuda = getattr(self.target.build, "cuda", None)
        cases = [self._architecture()]
        if cuda:
            cases += [self._cuda_library(), self._cuda_env()]
        nvcc = self._nvcc() if getattr(self.settings, "nvcc", False) else None
        if nvcc is not None:
            cases.append(nvcc)
        cases.append(self._labels(cuda))
        cases += [self._command(list(argv)) for argv in getattr(self.settings, "commands", ())]
        if cuda:
            cases.append(self._gpu_vector_add(nvcc))
        return cases

    def _architecture(self) -> CaseResult:
        started = time.monotonic()
        platform = f"{self.image.get('Os', '?')}/{self.image.get('Architecture', '?')}"
        if platform != self.arch.oci_platform:
            return self._case(
                "architecture", started, False, f"the image is {platform}, not {self.arch.oci_platform}", ""
            )
        said = self._run_in_image(["uname", "-m"])
        printed = said.stdout.strip()
        ok = said.ok and printed in self.arch.spellings.uname
        why = said.why or (
            "" if ok else f"uname -m printed {printed or 'nothing'}, not {self.arch.spellings.uname[0]}"
        )
        return self._case("architecture", started, ok, why, said.output)

    def _cuda_library(self) -> CaseResult:
        started = time.monotonic()
        said = self._run_in_image(["ldconfig", "-p"])
        found = [line.strip() for line in said.stdout.splitlines() if "libcudart.so" in line]
        ok = said.ok and bool(found)
        why = said.why or ("" if ok else "ldconfig -p lists no libcudart.so")
        return self._case("cuda runtime library", started, ok, why, "\n".join(found) if ok else said.output)

    def _cuda_env(self) -> CaseResult:
        started = time.monotonic()
        env = dict(item.partition("=")[::2] for item in self.config.get("Env") or ())
        problems = [f"{name} is not set" for name in CUDA_ENV if not env.get(name)]
        output = "\n".join(f"{k}={v}" for k, v in sorted(env.items()))
        dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
        if dirs:
            said = self._run_in_image(["find", *dirs, "-maxdepth", "0", "-type", "d"])
            present = set(said.stdout.split())
            missing = [d for d in dirs if d.rstrip("/") not in {p.rstrip("/") for p in present}]
            if missing:
                problems.append(f"LD_LIBRARY_PATH names missing directories: {', '.join(missing)}")
            output += "\n" + said.output
        return self._case("cuda environment", started, not problems, "; ".join(problems), output)

    def _nvcc(self) -> CaseResult:
        started = time.monotonic()
        said = self._run_in_image(["nvcc", "--version"])
        return self._case("nvcc", started, said.ok, said.why, said.output)

    def _labels(self, cuda: str | None) -> CaseResult:
        started = time.monotonic()
        labels = self.config.get("Labels") or {}
        problems = [
            f"{name} is missing"
            for name in ("org.opencontainers.image.title", "org.opencontainers.image.revision")
            if not labels.get(name)
        ]
        digest = labels.get("io.kiln.digest")
        if digest != self.target.digest:
            problems.append(f"io.kiln.digest is {digest or 'missing'}, not {self.target.digest}")
        if cuda and labels.get("io.kiln.cuda") != str(cuda):
            problems.append(f"io.kiln.cuda is {labels.get('io.kiln.cuda') or 'missing'}, not {cuda}")
        output = "\n".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return self._case("labels", started, not problems, "; ".join(problems), output)

    def _command(self, argv: list[str]) -> CaseResult:
        started = time.monotonic()
        said = self._run_in_image(argv, entrypoint=False)
        return self._case(shlex.join(argv), started, said.ok, said.why, said.output)

    def _gpu_vector_add(self, nvcc: CaseResult | None) -> CaseResult:
        started = time.monotonic()
        reason = self._gpu_unavailable(nvcc)
        if reason:
            return CaseResult(self.target.id, "gpu vector add", 0.0, True, reason, skipped=True)
        source_dir = self.job.work_dir / "cuda"
        source_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(VECTOR_ADD, source_dir / VECTOR_ADD.name)
        script = f"nvcc -o /tmp/vector_add /kiln-verify/{VECTOR_ADD.name} && /tmp/vector_add"
        said = self._said(
            self.job.runner.capture(
                ["docker", "run", "--rm", "--gpus", "all", "--network", "none",
                 "--platform", self.arch.oci_platform, "-v", f"{source_dir}:/kiln-verify:ro",
                 "--entrypoint", "sh", self.tag, "-c", script],
                timeout=GPU_TIMEOUT_S,
            ),
            GPU_TIMEOUT_S,
        )  # fmt: skip
        return self._case("gpu vector add", started, said.ok, said.why, said.output)

    def _gpu_unavailable(self, nvcc: CaseResult | None) -> str:
        """Why the GPU case cannot run here ("" when it can), for its SKIPPED message."""
        if not getattr(self.job, "gpu", False):
            return "not asked: `kiln build --gpu` runs it on a host with a GPU"
        if self.emulated:
            return f"the host is {Arch.host().value}; a GPU cannot run an emulated {self.arch.value} image"
        if shutil.which("nvidia-smi") is None:
            return "no GPU on this host (nvidia-smi is not on PATH)"
        runtimes = self.job.runner.capture(
            ["docker", "info", "--format", "{{json .Runtimes}}"], timeout=INSPECT_TIMEOUT_S
        )
        if "nvidia" not in runtimes.stdout:
            return "docker has no nvidia runtime (install the NVIDIA container toolkit)"
        has_nvcc = nvcc.passed if nvcc is not None else self._run_in_image(["nvcc", "--version"]).ok
        if not has_nvcc:
            return "the image has no nvcc (a devel image compiles the program)"
        return ""

    # -- the image and commands in it -----------------------------------------------------------------

    def _ensure_image(self) -> tuple[str, str]:
        """Inspect the tag, loading it from the OCI layout when the engine lacks it: (problem, output)."""
        inspected = self._inspect()
        if inspected.ok:
            return "", ""
        layout = next(
            (
                self.job.manifest.path_of(a)
                for a in self.job.manifest.artifacts
                if a.name == "image" and a.type == "oci-layout"
            ),
            None,
        )
        if layout is None or not layout.is_dir():
            return (
                f"{self.tag} is not in the local engine and the build has no OCI layout to load it from",
                inspected.output,
            )
        self.job.on_step(f"{self.target.id}: verify: loading {self.tag} from {layout}")
        loaded = self.job.runner.capture(
            ["skopeo", "copy", f"oci:{layout}", f"docker-daemon:{self.tag}"], timeout=LOAD_TIMEOUT_S
        )
        said = self._said(loaded, LOAD_TIMEOUT_S)
        if not said.ok:
            return f"loading {self.tag} from {layout} failed: skopeo copy: {said.why}", said.output
        inspected = self._inspect()
        if not inspected.ok:
            return (
                f"{self.tag} is not in the local engine after loading it: {inspected.why}",
                inspected.output,
            )
        return "", ""

    def _inspect(self) -> Said:
        """``docker image inspect`` of the tag; on success its facts are in ``image`` and ``config``."""
        said = self._said(
            self.job.runner.capture(["docker", "image", "inspect", self.tag], timeout=INSPECT_TIMEOUT_S),
            INSPECT_TIMEOUT_S,
        )
        if said.ok:
            try:
                self.image = json.loads(said.stdout)[0]
            except (ValueError, IndexError):
                return Said(False, said.stdout, said.output, "docker image inspect printed no image")
            self.config = self.image.get("Config") or {}
        return said

    def _run_in_image(self, argv: list[str], *, entrypoint: bool = True) -> Said:
        """``docker run`` of ``argv`` in the image, without a shell and without a network.

        ``entrypoint``: run ``argv[0]`` as the entrypoint (Kiln's own probes, whatever ENTRYPOINT the
        image sets); the recipe's commands are given to the image as they are."""
        head = ["docker", "run", "--rm", "--network", "none", "--platform", self.arch.oci_platform]
        if entrypoint:
            argv_ = [*head, "--entrypoint", argv[0], self.tag, *argv[1:]]
        else:
            argv_ = [*head, self.tag, *argv]
        return self._said(self.job.runner.capture(argv_, timeout=self.run_timeout), self.run_timeout)

    def _said(self, captured: Any, timeout: float) -> Said:
        if captured.ok:
            return Said(True, captured.stdout, _tail(captured.output), "")
        if captured.timed_out:
            why = f"timed out after {timeout:.0f}s" + (" (emulated)" if self.emulated else "")
        elif captured.returncode is None:
            why = captured.error or "did not run"
        else:
            last = _first_line(captured.stderr) or _first_line(captured.stdout)
            why = f"exit {captured.returncode}" + (f": {last}" if last else "")
        return Said(False, captured.stdout, _tail(captured.output), why[:300])

    def _case(self, name: str, started: float, passed: bool, message: str, output: str) -> CaseResult:
        return CaseResult(self.target.id, name, time.monotonic() - started, passed, message, _tail(output))
