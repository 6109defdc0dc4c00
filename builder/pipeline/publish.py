"""Publishing: the gate, the dispatch of each manifest to its kind's route, and the ledger record.

A manifest is publishable once its verification passed or was switched off on purpose (the
manifest says which, and by what); ``allow_unverified`` is the explicit override. Where and how a
manifest is published is its kind's ``route`` (builder/publishers/route.py), never a branch on a
kind's or a route's name here. A route that publishes a group together (a multi-arch tag) gets the
group's manifests in one call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from ..core.route import Candidate, Facts, Publication, Publishers, Route, Routed, Step
from ..errors import EnvironmentProblem, InvalidInput, KilnError, Problem
from ..kinds import publishing_of
from ..ledger import Ledger, candidate_publisher
from ..manifest import BuildManifest

__all__ = ["Candidate", "Publication", "Unverified", "check_publishable", "publish_manifests"]


class Unverified(KilnError):
    """A manifest whose verification did not pass (and was not switched off) was asked to publish."""


def publish_group(target: Any) -> tuple[str, ...] | None:
    """The group a target is published with (route, recipe, release, variant), or None: alone."""
    route = target.spec.route
    if route is None or not route.together:
        return None
    return (route.name, target.recipe, target.release, target.variant or "")


def check_publishable(manifests: list[BuildManifest], allow_unverified: bool = False) -> None:
    """Refuse manifests whose verification did not pass, unless ``allow_unverified``."""
    refused = [m for m in manifests if not m.verification_ok]
    if refused and not allow_unverified:
        raise Unverified(
            "not publishing unverified builds (pass --allow-unverified to publish anyway):\n"
            + "\n".join(f"  {m.target}: verification {m.verification_summary}" for m in refused)
        )


def publish_settings(manifest: BuildManifest) -> tuple[Route | None, Any]:
    """The manifest's route, and its publish settings as its kind's typed model (defaults filled in
    once, there)."""
    try:
        spec = publishing_of(manifest.kind)
    except KeyError as exc:
        raise InvalidInput(Problem(f"{manifest.target}: {exc.args[0]}")) from None
    try:
        return spec.route, spec.publish_model.model_validate(manifest.publish or {})
    except ValidationError as exc:
        raise InvalidInput(
            Problem(f"{manifest.target}: publish settings: {exc.errors()[0]['msg']}")
        ) from None


def publish_manifests(
    manifests: list[BuildManifest],
    publishers: Publishers,
    ledger: Ledger | None,
    on_step: Step = lambda _: None,
    candidate: Candidate | None = None,
) -> list[Publication]:
    """Publish each manifest through its kind's route; record the publications in the ledger.
    ``publishers`` is a publishers.from_site.SitePublishers (or a test's stand-in). With a
    ``candidate``, every route publishes under candidate names (never the production ones), and the
    ledger records those publications as the candidate's (Ledger.published ignores them)."""
    routed: dict[Route, list[Routed]] = {}
    for manifest in manifests:
        route, settings = publish_settings(manifest)
        if route is None:
            continue
        if candidate is not None:
            settings = route.settings_for(manifest, settings, candidate)
        routed.setdefault(route, []).append(Routed(manifest, settings, _facts(manifest)))
    publications: list[Publication] = []
    for route, items in routed.items():
        publications += route.publish(items, publishers, on_step)
    if candidate is not None:
        publications = [replace(p, candidate=candidate.id) for p in publications]
    if ledger is not None:
        _record(ledger, manifests, publications)
    return publications


def _facts(manifest: BuildManifest) -> Facts:
    """The kind's facts about this build (every builder of a kind states them alike: ``register``)."""
    try:
        return publishing_of(manifest.kind).facts(manifest.build)
    except KeyError as exc:
        raise InvalidInput(Problem(f"{manifest.target}: {exc.args[0]}")) from None


def _record(ledger: Ledger, manifests: list[BuildManifest], publications: list[Publication]) -> None:
    ids: dict[tuple[str, str], int] = {}
    for manifest in manifests:
        ids.update({(manifest.target, name): i for name, i in ledger.artifact_ids_for(manifest).items()})
    for pub in publications:
        if pub.noop:
            continue
        artifact_id = ids.get((pub.target, pub.artifact))
        if artifact_id is None:
            raise EnvironmentProblem(f"ledger has no artifact {pub.artifact} of {pub.target}")
        publisher = pub.publisher
        if pub.candidate is not None:
            publisher = candidate_publisher(pub.publisher, pub.candidate)
        ledger.record_publication(artifact_id, publisher, pub.location)
