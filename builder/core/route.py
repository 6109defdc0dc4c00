"""What a publish route is: how one kind's manifests reach one destination.

A kind names its route object (``Kind.route``); the pipeline's publish step (builder/pipeline/
publish.py) is only the gate, the dispatch and the ledger record. Everything that depends on the
destination is a method here, so a new destination is one class beside its client in
``builder/publishers/`` and no table elsewhere:

* :meth:`Route.publish`: publish manifests (with their kind's publish settings and facts);
* :meth:`Route.rename_for_candidate`: the same settings under a candidate's names;
* :meth:`Route.destination_key`: what a job writes to, for GitLab's ``resource_group``;
* :meth:`Route.published_at`: is this exact input digest published there already -- every route
  answers from its destination (runners share no ledger), and ``kinds.register`` refuses a kind whose
  route does not (:func:`answers`);
* :attr:`Route.together`: whether one publication spans several targets (a multi-arch tag).

The built-in routes: builder/publishers/routes.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from ..arch import Arch
from ..errors import InvalidInput, Problem

if TYPE_CHECKING:  # annotations only: the manifest module is light, this keeps the layer obvious
    from ..manifest import BuildManifest

Step = Callable[[str], None]


@dataclass(frozen=True)
class Publication:
    target: str
    artifact: str
    publisher: str
    location: str
    noop: bool = False
    candidate: str | None = None  # published under candidate names (kiln build --candidate)

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "artifact": self.artifact,
            "publisher": self.publisher,
            "location": self.location,
            "noop": self.noop,
            "candidate": self.candidate,
        }


@dataclass(frozen=True)
class Candidate:
    """Publish under candidate names: ``id`` (a merge request's IID) and the suffixes site.yaml's
    ``candidates:`` makes of it (siteconfig.CandidateSite.suffixes)."""

    id: str
    image_suffix: str
    repo_suffix: str


@dataclass(frozen=True)
class Facts:
    """What a route may know of a build beyond its identity, as the build's kind states it
    (``Kind.facts``): a route never reads another kind's build keys."""

    distro: str = ""  # the OS a guest image or a package set is for (Glance os_distro, repo layout)
    os_release: str = ""  # that OS's release ("bookworm", "9"); "" where the target's release says it
    firmware: str | None = None  # the guest's boot firmware (Glance hw_firmware_type)
    ipa_version: str | None = None  # an agent ramdisk's IPA version (Glance kiln_ipa_version)
    debug_login: bool = False  # an agent ramdisk with a debug login (Glance kiln_debug_login)


NO_FACTS = Facts()


@dataclass(frozen=True)
class Routed:
    """One manifest on its way out: its kind's publish settings (validated, candidate names already
    applied) and the kind's facts about the build."""

    manifest: BuildManifest
    settings: Any  # the kind's publish model
    facts: Facts


@dataclass(frozen=True)
class ReusableImage:
    """An image found at its destination that a child build can start from (the registry's)."""

    reference: str  # registry/repository:tag
    repository: str
    manifest_digest: str
    pull: Callable[[Path], Path]  # into an OCI layout at the given directory


@dataclass(frozen=True)
class Found:
    """Where a target's exact input digest is published, as its destination answers, and since when
    (a timestamp; None where the destination does not say); ``image`` where a child can build on it."""

    where: str
    at: float | None = None
    image: ReusableImage | None = None


class TargetLike(Protocol):
    """What a route may know of a target before it is built (builder/pipeline/graph.Target)."""

    @property
    def id(self) -> str: ...

    recipe: str
    release: str
    variant: str | None
    arch: Arch
    digest: str
    publish: Any  # the kind's publish model


class Publishers(Protocol):
    """The clients a route publishes with, each made on first use (publishers/from_site.py)."""

    def glance(self) -> Any: ...
    def registry(self) -> tuple[Any, str]: ...
    def repo(self) -> Any: ...
    def served_repo(self) -> Any: ...
    def mirror(self) -> Any: ...
    def http_dir(self) -> Any: ...


class Route:
    """One destination. Subclasses override :meth:`publish` and what else their destination has."""

    name: str = ""  # the route's name: resource groups (``glance:<image>``), messages
    destination: str = ""  # the destination, for people ("Glance", "the RPM repo")
    together: bool = False  # one publication over every arch of a recipe, release and variant

    def publish(self, items: list[Routed], publishers: Publishers, on_step: Step) -> list[Publication]:
        raise NotImplementedError

    def rename_for_candidate(self, identity: Any, data: dict[str, Any], candidate: Candidate) -> None:
        """Give the publish settings (their JSON data, changed in place) the candidate's names. A
        route without candidate names refuses: a candidate is never published under production names."""
        raise InvalidInput(
            Problem(f"{_label(identity)}: the {self.name} route has no candidate names: nothing published")
        )

    def settings_for(self, identity: Any, settings: BaseModel, candidate: Candidate | None) -> Any:
        """A kind's publish settings as this route publishes them: under ``candidate``'s names
        (:meth:`rename_for_candidate`, validated again: length limits), or as they are without one.
        Publishing and :meth:`published_at` both name things through this, so they agree."""
        if candidate is None:
            return settings
        data = settings.model_dump(mode="json")
        self.rename_for_candidate(identity, data, candidate)
        try:
            return type(settings).model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise InvalidInput(
                Problem(
                    f"{_label(identity)}: candidate {candidate.id} name for publish."
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
                )
            ) from None

    def destination_key(self, target: TargetLike) -> str | None:
        """What publishing ``target`` writes to (two jobs with the same key never run at once), or None."""
        return None

    def published_at(
        self,
        target: TargetLike,
        publishers: Publishers,
        candidate: Candidate | None = None,
        facts: Facts = NO_FACTS,
    ) -> Found | None:
        """Where ``target``'s exact input digest is published already (under ``candidate``'s names
        when given; ``facts``: its kind's, as publishing gets them), or None -- as the destination
        itself says, never a ledger: the ledger is one runner's cache. Found only when everything a
        publish of the target writes is there (a publish killed half-way is not published). A
        destination that does not answer raises what its client raised: not answering is never
        taken as "not published". Every route overrides this (:func:`answers`)."""
        raise NotImplementedError(f"the {self.name} route cannot say what its destination holds")

    def __repr__(self) -> str:
        return f"<route {self.name}>"


def answers(route: Route) -> bool:
    """Whether ``route`` can say what its destination holds (overrides :meth:`Route.published_at`)
    and names that destination: what ``kinds.register`` requires of a kind's route."""
    return type(route).published_at is not Route.published_at and bool(route.destination)


def _label(identity: Any) -> str:
    """A manifest's target id (``manifest.target``) or a target's (``target.id``)."""
    return str(identity.target) if isinstance(getattr(identity, "target", None), str) else str(identity.id)
