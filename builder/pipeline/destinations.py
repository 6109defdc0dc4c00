"""``kiln pipeline --ask-destinations``: what the destinations already hold, for the generator.

Build jobs run on other runners (ppc64le, GPU) with their own ledgers, so the generate job's ledger
never learns what they published. Asked, Glance and the registry say it themselves
(:func:`published_at`); a target found there counts as published and gets no job. A
destination that does not answer costs jobs, never the pipeline: it is named once on stderr and its
targets are taken as not published (a job that finds its digest there already publishes nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .graph import Target
from .publish import Candidate, in_registry


@dataclass(frozen=True)
class Found:
    """Where a target's exact input digest is published, as its destination answers, and since when
    (a timestamp; None where the destination does not say)."""

    where: str
    at: float | None = None


def published_at(target: Any, publishers: Any, candidate: Candidate | None = None) -> Found | None:
    """Ask ``target``'s destination whether its exact input digest is published there already
    (``kiln pipeline --ask-destinations``: build jobs on other runners never write the generator's
    ledger). The registry: :func:`in_registry`. Glance: an active, promoted (not a candidate upload)
    image under the target's image name whose ``kiln_target`` and ``kiln_digest`` are the target's,
    as ``GlancePublisher.publish`` leaves it. With ``candidate``: under the candidate's names.
    Routes not in :data:`ASKABLE` (repo, ipa, any a kind adds) are not asked: None, the ledger
    decides. A destination that does not answer raises what its client raised."""
    ask = ASKABLE.get(target.spec.publish_route or "")
    return None if ask is None else ask[1](target, publishers, candidate)


def _ask_registry(target: Any, publishers: Any, candidate: Candidate | None) -> Found | None:
    found = in_registry(target, publishers, candidate)
    return None if found is None else Found(found.reference)


def _ask_glance(target: Any, publishers: Any, candidate: Candidate | None) -> Found | None:
    if getattr(target.publish, "glance", None) is None:
        return None
    name = target.image_name + (candidate.image_suffix if candidate else "")
    images = publishers.glance().published(target.id, target.digest, name=name)
    if not images:
        return None
    image_id, _, created_at = max(images, key=lambda image: image[2])
    return Found(f"glance image {image_id} ({name})", _timestamp(created_at))


def _timestamp(iso: str) -> float | None:
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


# Routes whose destination can be asked what it holds: the destination's name (for people) and how.
ASKABLE: dict[str, tuple[str, Callable[[Any, Any, Candidate | None], Found | None]]] = {
    "glance": ("Glance", _ask_glance),
    "registry": ("the registry", _ask_registry),
}


@dataclass(frozen=True)
class Answer:
    target: str
    digest: str  # the target's input digest, asked about
    destination: str  # Glance, the registry
    where: str | None  # where its digest is published; None: not there
    at: float | None = None  # since when, as the destination says; None: not said


@dataclass
class Answers:
    answers: list[Answer] = field(default_factory=list)
    unanswered: dict[str, str] = field(default_factory=dict)  # destination -> what went wrong

    def found(self) -> list[Answer]:
        return [a for a in self.answers if a.where is not None]

    def published(self, ledger: dict[str, dict[str, float]], now: float) -> dict[str, dict[str, float]]:
        """``ledger`` (Ledger.published_digests()) with every digest found added: since when the
        destination says, else ``now`` (the registry does not say)."""
        merged = {target: dict(digests) for target, digests in ledger.items()}
        for answer in self.found():
            merged.setdefault(answer.target, {})[answer.digest] = answer.at if answer.at is not None else now
        return merged

    def as_json(self) -> dict[str, Any]:
        return {
            "asked": [
                {"target": a.target, "destination": a.destination, "published_at": a.where, "since": a.at}
                for a in self.answers
            ],
            "unanswered": dict(self.unanswered),
        }

    def explain(self, in_pipeline: set[str]) -> list[str]:
        lines = [
            f"{a.target}: published at {a.where} (asked)" + ("" if a.target in in_pipeline else ": no job")
            for a in self.found()
        ]
        silent = f" (no answer from {', '.join(self.unanswered)})" if self.unanswered else ""
        lines.append(
            f"asked the destinations about {len(self.answers)} target(s): "
            f"{len(self.found())} published there{silent}"
        )
        return lines


def ask(
    targets: list[Target],
    ledger: dict[str, dict[str, float]],
    publishers: Any,
    warn: Callable[[str], None],
) -> Answers:
    """Ask each target's destination about every target the ledger does not list as published at its
    digest; a destination that fails once (any error: unreachable, refused, no credentials) is
    warned about once and asked no more."""
    out = Answers()
    for target in targets:
        route = target.spec.publish_route or ""
        if route not in ASKABLE or target.digest in ledger.get(target.id, {}):
            continue
        destination = ASKABLE[route][0]
        if destination in out.unanswered:
            continue
        try:
            found = published_at(target, publishers)
        except Exception as exc:  # not knowing costs a job, never the generation
            why = str(exc).rstrip(".")
            out.unanswered[destination] = why
            warn(f"could not ask {destination}: {why}; its targets are taken as not published")
            continue
        where, at = (found.where, found.at) if found is not None else (None, None)
        out.answers.append(Answer(target.id, target.digest, destination, where, at))
    return out
