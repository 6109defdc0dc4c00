"""What a kind is, the targets it expands to, and the interfaces of its backend and verifier.

A *kind* is one artifact kind built one way: a guest image built with DIB, a guest image built with
Packer, an IPA ramdisk, an RPM rebuild, a container. Each is one module in ``builder/kinds/`` that
creates a :class:`Kind`; ``builder/kinds/__init__.py`` is the registry, and the only code that looks
a kind up by its name. Everything else (loading, expansion, digests, rendering, the build loop,
publishing) asks the Kind.

A :class:`Target` is one thing to build (recipe x release x variant x arch), made by
builder/pipeline/graph.py. A kind's backend is a :class:`Backend` (a pure ``plan`` and an I/O
``run``; helpers in builder/backends/base.py), its verifier a :class:`Verifier` (manifest in, test
cases out), its route a :class:`~builder.core.route.Route` (builder/publishers/routes.py). These types
refer to each other (a target has a kind, a kind a backend, a backend's job a target), so they live
in one module: no import cycle, not even for type checking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from ..arch import Arch
from ..capabilities import Rule
from ..host.command import Command
from ..manifest import Artifact, ArtifactType, BuildManifest
from .route import Facts, Route

if TYPE_CHECKING:  # both below this module: builder/host/, builder/siteconfig.py
    from ..host.run import Runner
    from ..siteconfig import SiteConfig

Step = Callable[[str], None]


# --- the kind and its targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One file a target renders: its path in the render directory and the template it comes from."""

    path: str  # relative to the target's render directory
    template: str  # relative to templates/
    mode: int = 0o644


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


@dataclass(frozen=True)
class Target:
    """One thing to build: a recipe x release x variant x arch, fully resolved and validated."""

    recipe: str
    kind: str  # the recipe's kind name; ``spec`` is the Kind itself
    arch: Arch
    release: str
    variant: str | None
    recipe_file: str  # workspace-relative
    build: BaseModel  # the kind's validated build settings (after defaults, extends, matrix)
    verify: BaseModel
    publish: BaseModel
    elements: tuple[str, ...]  # the kind's elements, in order (a DIB-built kind's DIB elements), else ()
    inputs: tuple[str, ...]  # workspace-relative files whose bytes the digest covers
    depends_on: tuple[str, ...]  # ids of targets this one builds on
    digest: str
    spec: Kind = field(compare=False, repr=False)
    # The models' JSON form, made once: the digest, the templates and the manifest read it.
    build_json: dict[str, Any] = field(compare=False, repr=False, default_factory=dict)
    verify_json: dict[str, Any] = field(compare=False, repr=False, default_factory=dict)

    @property
    def id(self) -> str:
        variant = f"+{self.variant}" if self.variant else ""
        return f"{self.recipe}:{self.release}{variant}:{self.arch.value}"

    @property
    def slug(self) -> str:
        return slug_of(self.id)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "recipe": self.recipe,
            "kind": self.kind,
            "arch": self.arch.value,
            "release": self.release,
            "variant": self.variant,
            "recipe_file": self.recipe_file,
            "digest": self.digest,
            "depends_on": list(self.depends_on),
        }


def slug_of(target_id: str) -> str:
    """A target id as a directory and GitLab job name: ``debian-12:bookworm+cloud:x86_64`` ->
    ``debian-12_bookworm_cloud_x86_64`` (recipe, release and variant names never contain '_')."""
    return target_id.replace("+", "_").replace(":", "_")


# --- the backend interface ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedOutput:
    path: Path
    name: str
    type: ArtifactType
    format: str | None = None


@dataclass(frozen=True)
class BuildRun:
    """Exactly what a backend will do for one target."""

    tool: str
    commands: tuple[Command, ...]
    outputs: tuple[ExpectedOutput, ...]
    base_dir: Path  # the target's directory: artifact paths in the manifest are relative to it
    copies: tuple[tuple[Path, Path], ...] = ()  # (source, destination) placed before the commands
    notes: tuple[str, ...] = ()  # what a dry run cannot know (e.g. "accelerator probed at build time")

    def as_json(self, inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The plan as data; ``inherited``: the environment Kiln runs in (each command's whole
        environment is printed)."""
        return {
            "tool": self.tool,
            "commands": [c.as_json(inherited) for c in self.commands],
            "copies": [[str(a), str(b)] for a, b in self.copies],
            "outputs": [str(o.path) for o in self.outputs],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class HostFacts:
    """What the pipeline found out about this host before planning (nothing when dry-running)."""

    arch: Arch
    placement: str  # native | emulated
    adaptations: tuple[Any, ...] = ()  # hostcompat.Adaptation
    accelerator: str | None = None  # kvm | tcg; None: not probed (dry run)
    probed: bool = True


@dataclass(frozen=True)
class BuildJob:
    """Everything a backend's plan step reads: resolved data, paths, and facts gathered earlier."""

    target: Target
    rendered: Mapping[str, bytes]  # render-dir-relative path -> content
    render_dir: Path
    out_dir: Path
    tmp_dir: Path
    build_root: Path
    workspace_root: Path
    elements_dir: Path
    cache_dir: Path
    site: SiteConfig
    host: HostFacts
    dependencies: Mapping[str, Path] = field(default_factory=dict)  # dependency target id -> its artifact


class Backend(Protocol):
    """How a kind builds: a pure ``plan`` and an I/O ``run``. A backend class subclasses this
    protocol explicitly, so the capabilities below default to off and are plain typed attributes."""

    tool: str
    # Probe the host before planning: device-mapper shims, sudo, binfmt_misc (builder/host/compat.py).
    needs_host_adaptations: bool = False
    # Choose KVM or TCG before planning (a build that boots a VM, e.g. Packer's QEMU builder).
    needs_accelerator: bool = False

    def plan(self, job: BuildJob) -> BuildRun: ...

    def run(
        self, run: BuildRun, job: BuildJob, runner: Runner, log: Path, on_step: Step
    ) -> list[Artifact]: ...

    def tool_versions(self, runner: Runner) -> dict[str, str]: ...


# --- the verifier interface --------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    suite: str  # the target id
    name: str  # "boot", or a check command
    seconds: float
    passed: bool
    message: str = ""
    output: str = ""
    # Skipped: the check could not run here (no GPU...); ``passed`` stays True so the gate ignores
    # it, ``message`` says why, and JUnit shows it as skipped.
    skipped: bool = False


@dataclass(frozen=True)
class VerifyJob:
    target: Target
    manifest: BuildManifest
    work_dir: Path
    runner: Runner
    on_step: Step
    gpu: bool = False  # `kiln build --gpu`: run the checks that need a GPU (skipped otherwise)


class Verifier(Protocol):
    def verify(self, job: VerifyJob) -> list[CaseResult]: ...
