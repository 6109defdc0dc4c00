"""What a kind declares.

A *kind* is one artifact kind built one way: a guest image built with DIB, a guest image built with
Packer, an IPA ramdisk, an RPM rebuild, a container. Each is one module in ``builder/kinds/`` that
creates a :class:`Kind`; ``builder/kinds/__init__.py`` is the registry, and the only code that
looks a kind up by its name. Everything else (loading, expansion, digests, rendering, the build
loop, publishing) asks the Kind.

Its backend (builder/backends/base.py: a pure ``plan`` and an I/O ``run``) and its verifier
(builder/verify/base.py: manifest in, test cases out) are small interfaces; publishing goes through the kind's
``route`` (a :class:`~builder.publishers.route.Route` object from builder/publishers/routes.py), which
learns what it needs of a build from the kind's ``facts``, never from a kind name or its build keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ..arch import Arch
from ..backends.base import Backend
from ..capabilities import Rule
from ..publishers.route import Facts, Route
from ..verify.base import Verifier


@dataclass(frozen=True)
class Output:
    """One file a target renders: its path in the render directory and the template it comes from."""

    path: str  # relative to the target's render directory
    template: str  # relative to templates/
    mode: int = 0o644


# --- the kind ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One artifact kind built one way. Modules in builder/kinds/ each create one."""

    name: str  # the recipe's `kind:`
    builder: str | None  # the value of `build.builder` where a kind has several builders, else None
    build_model: type[BaseModel]
    verify_model: type[BaseModel]
    publish_model: type[BaseModel]
    outputs: Callable[[Any, Arch], Sequence[Output]]  # (build settings, arch) -> rendered files
    rules: tuple[Rule, ...] = ()  # capability rules: impossible targets, refused with a reason
    elements: Callable[[Any, Arch], Sequence[str]] = lambda build, arch: ()  # DIB elements, in order
    # The (recipe, variant) whose target of the same arch this one builds on, if any.
    base: Callable[[Any], tuple[str, str | None] | None] = lambda build: None
    base_kinds: tuple[str, ...] = ()  # kinds a base recipe may be
    # Given (recipe name, build settings) of every recipe of this kind being expanded and the
    # workspace root: recipe name -> names of the recipes of this kind it must build after (e.g. an
    # RPM rebuild whose BuildRequires another's binaries). None: recipes of the kind are independent.
    peers: Callable[[Sequence[tuple[str, Any]], Any], dict[str, tuple[str, ...]]] | None = None
    backend: Backend | None = None  # None: `kiln build` refuses the kind with a clear message
    verifier: Callable[[Any], Verifier | None] = lambda verify_settings: None  # None: nothing to check
    route: Route | None = None  # where its builds publish (builder/publishers/routes.py); None: nowhere
    # What the route may know of a build, from the manifest's build settings (the kind's own keys).
    facts: Callable[[Mapping[str, Any]], Facts] = lambda build: Facts()
    description: str = ""

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.builder)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.builder})" if self.builder else self.name
