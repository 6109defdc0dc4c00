"""What can be built where: rules keyed by kind, distro and architecture that refuse impossible
targets with a reason, before anything is rendered or built.

Each rule is data plus a small predicate over the resolved build settings; a rule that matches
refuses the target and names the recipe key to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .arch import Arch
from .errors import KeyPath


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class Rule:
    kind: str  # "*" for every kind
    arch: Arch | None  # None for every arch
    distro: str | None  # None for every distro
    refuses: Callable[[Any], bool]  # over the kind's validated build settings
    key: KeyPath  # the build key the refusal is about (below "build")
    reason: str

    def applies(self, kind: str, arch: Arch, distro: str | None) -> bool:
        return (
            self.kind in ("*", kind)
            and (self.arch is None or self.arch == arch)
            and (self.distro is None or self.distro == distro)
        )


RULES: tuple[Rule, ...] = (
    Rule(
        kind="container",
        arch=Arch.PPC64LE,
        distro=None,
        refuses=lambda b: b.cuda is not None and _version(b.cuda) > (12, 4),
        key=("cuda",),
        reason="NVIDIA dropped ppc64le after CUDA 12.4; use 12.4 or older for ppc64le",
    ),
    Rule(
        kind="container",
        arch=None,
        distro="debian",
        refuses=lambda b: b.cuda is not None and b.release in ("bookworm", "12") and b.cuda != "11.8",
        key=("cuda",),
        reason="Debian 12 ships CUDA 11.8 only (non-free nvidia-cuda-toolkit); use cuda: '11.8'",
    ),
    Rule(
        kind="guest-image",
        arch=Arch.PPC64LE,
        distro=None,
        refuses=lambda b: b.firmware == "uefi",
        key=("firmware",),
        reason="POWER guests boot through SLOF/Open Firmware, not UEFI; use firmware: bios",
    ),
    Rule(
        kind="guest-image",
        arch=Arch.AARCH64,
        distro=None,
        refuses=lambda b: b.firmware == "bios",
        key=("firmware",),
        reason="aarch64 guests boot with UEFI only; use firmware: uefi",
    ),
)


@dataclass(frozen=True)
class Refusal:
    key: KeyPath  # below "build"
    reason: str


def refusals(kind: str, arch: Arch, build: Any) -> list[Refusal]:
    """Why this (kind, arch, build settings) cannot be built; empty when it can."""
    distro = getattr(build, "distro", None)
    return [
        Refusal(rule.key, rule.reason)
        for rule in RULES
        if rule.applies(kind, arch, distro) and rule.refuses(build)
    ]
