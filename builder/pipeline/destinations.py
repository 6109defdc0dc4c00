"""``kiln pipeline --ask-destinations``: what the destinations already hold, for the generator.

Build jobs run on other runners (ppc64le, GPU) with their own ledgers, so the generate job's ledger
never learns what they published. Asked, every destination says it itself (:func:`published_at`:
Glance, the registry, the RPM repo, the Bifrost directory); a target found there counts as published
and gets no job. A
destination that does not answer costs jobs, never the pipeline: it is named once on stderr and its
targets are taken as not published (a job that finds its digest there already publishes nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.kind import Target
from ..core.route import Candidate, Found, Publishers

__all__ = ["Answer", "Answers", "Found", "ask", "published_at"]


def published_at(target: Target, publishers: Publishers, candidate: Candidate | None = None) -> Found | None:
    """Ask ``target``'s destination whether its exact input digest is published there already: its
    route's answer (Route.published_at), with the kind's facts as publishing gets them, under the
    candidate's names with ``candidate``. None for a kind that publishes nowhere. A destination that
    does not answer raises what its client raised."""
    route = target.spec.route
    if route is None:
        return None
    return route.published_at(target, publishers, candidate, target.spec.facts(target.build_json))


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
    publishers: Publishers,
    warn: Callable[[str], None],
) -> Answers:
    """Ask each target's destination about every target the ledger does not list as published at its
    digest; a destination that fails once (any error: unreachable, refused, no credentials) is
    warned about once and asked no more."""
    out = Answers()
    for target in targets:
        route = target.spec.route
        if route is None or target.digest in ledger.get(target.id, {}):
            continue
        destination = route.destination
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
