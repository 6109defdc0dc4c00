"""What can be built where: rules that refuse impossible targets with a reason, before anything is
rendered or built.

A rule is data plus a small predicate over the resolved build settings; it belongs to the kind it
is about (``rules=`` in that kind's module under builder/kinds/). A rule that matches refuses the
target and names the recipe key to change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .arch import Arch
from .errors import KeyPath


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class Rule:
    arch: Arch | None  # None for every arch
    distro: str | None  # None for every distro
    refuses: Callable[[Any], bool]  # over the kind's validated build settings
    key: KeyPath  # the build key the refusal is about (below "build")
    reason: str

    def applies(self, arch: Arch, distro: str | None) -> bool:
        return (self.arch is None or self.arch == arch) and (self.distro is None or self.distro == distro)


@dataclass(frozen=True)
class Refusal:
    key: KeyPath  # below "build"
    reason: str


def refusals(rules: Iterable[Rule], arch: Arch, build: Any) -> list[Refusal]:
    """Why this (arch, build settings) cannot be built under ``rules``; empty when it can."""
    distro = getattr(build, "distro", None)
    return [
        Refusal(rule.key, rule.reason) for rule in rules if rule.applies(arch, distro) and rule.refuses(build)
    ]
