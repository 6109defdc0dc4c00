"""The per-target loop behind ``kiln build``: skip, reuse, build, verify, publish, record.

Per target, under the build root (``.kiln/build/<slug>/``): ``render/`` (the rendered files),
``out/`` (artifacts), ``logs/`` (one log per build), ``manifest.json`` (what was built, and the
gate's verdict) and ``verify.xml`` (JUnit).

- A target whose digest already has a successful build with its artifacts on disk is not built
  again ("reused"); when it is also verified and, if asked, published, it is "skipped" without
  contacting any service.
- Publishing a target this ledger does not know at its digest, its destination is asked first
  (Route.published_at): found there, it is "skipped" -- the ledger is this runner's cache, the
  destination the authority. A destination that does not answer fails the target.
- The gate: artifacts are published only when verification passed or was switched off on purpose
  (the recipe has no check, or ``--no-verify``); a reused build that was never verified, or whose
  verification failed, is verified (again) before it is published.
- A dry run is pure: it renders in memory, asks each backend for its plan, and writes nothing
  (no ledger row, no file under the build root) and probes nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..backends.base import FACTS, read_build_facts
from ..core.kind import Backend, BuildJob, HostFacts, Target, VerifyJob, slug_of
from ..core.route import Publishers, ReusableImage
from ..core.targets import dependencies_first
from ..errors import CommandFailed, EnvironmentProblem, InvalidInput, KilnError, Problem
from ..host import compat as hostcompat
from ..host.run import Runner
from ..ledger import Ledger, TargetState
from ..manifest import BuildManifest, Verification, read_manifest
from ..publishers.from_site import SitePublishers
from ..render import render_target, write_rendered
from ..siteconfig import SiteConfig
from ..verify.boot import choose_accelerator
from ..verify.junit import write_junit
from ..workspace import Workspace, source_commit
from .attest import attest, site_signer
from .destinations import published_at
from .publish import Candidate, publish_group, publish_manifests

Step = Callable[[str], None]


class Status(StrEnum):
    """What ``kiln build`` did with one target."""

    BUILT = "built"
    REUSED = "reused"  # an existing build of the same digest, verified and/or published now
    SKIPPED = "skipped"  # nothing to do: built, verified (and published) before, or found published
    FAILED = "failed"
    DRY_RUN = "dry-run"

    @property
    def failed(self) -> bool:
        return self is Status.FAILED


@dataclass
class Outcome:
    target: str
    status: Status
    seconds: float = 0.0
    manifest: str | None = None
    verification: str | None = None  # the gate's verdict: passed (n cases), failed (...), off (...)
    published: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    plan: dict[str, Any] | None = None  # dry run: what the backend would run
    note: str | None = None  # why nothing was done (e.g. already in the registry)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BuildOptions:
    publish: bool = False
    verify: bool = True  # False: --no-verify (recorded as "off", which the gate lets through)
    dry_run: bool = False
    candidate: str | None = None  # publish under this candidate's names (site.yaml candidates:)
    gpu: bool = False  # verifiers that can: run a program on this host's GPU (kiln build --gpu)
    force: bool = False  # build again even when the digest has a build (kiln build --force)


class BuildDirs:
    """Where one build root keeps each target's files."""

    def __init__(self, root: Path):
        self.root = root

    def target(self, target: Target | str) -> Path:
        return self.root / (target if isinstance(target, str) else target.slug)

    def render(self, target: Target) -> Path:
        return self.target(target) / "render"

    def out(self, target: Target) -> Path:
        return self.target(target) / "out"

    def logs(self, target: Target) -> Path:
        return self.target(target) / "logs"

    def manifest(self, target: Target | str) -> Path:
        return self.target(target) / "manifest.json"

    def tmp(self, target: Target) -> Path:
        return self.root / ".tmp" / target.slug


def default_build_root(workspace: Workspace) -> Path:
    env_root = os.environ.get("KILN_BUILD_ROOT")
    return Path(env_root) if env_root else workspace.root / ".kiln" / "build"


class Pipeline:
    def __init__(
        self,
        workspace: Workspace,
        site: SiteConfig,
        ledger: Ledger | None,
        *,
        runner: Runner | None = None,
        on_step: Step = lambda _: None,
        build_root: Path | None = None,
        cache_dir: Path | None = None,
        publishers: Any = None,
    ):
        self.workspace = workspace
        self.site = site
        self.ledger = ledger
        self.runner = runner or Runner()
        self.on_step = on_step
        self.dirs = BuildDirs(build_root or default_build_root(workspace))
        self.cache_dir = cache_dir or Path.home() / ".cache" / "kiln"
        self._publishers = publishers
        # target id -> its image found at its destination (a route that reuses what it holds)
        self._reused: dict[str, ReusableImage] = {}
        self._built_on: set[str] = set()  # ids of targets that a target of this run builds on

    # -- the loop --------------------------------------------------------------------------------------

    def run(self, targets: list[Target], options: BuildOptions) -> list[Outcome]:
        if options.dry_run:
            return self.dry_run(targets)
        outcomes: list[Outcome] = []
        failed: set[str] = set()
        # Routes that publish several targets as one (a multi-arch tag): published once the whole
        # group is built and verified, and not at all when one of it failed.
        together: dict[tuple[str, ...], list[tuple[Outcome, BuildManifest | None]]] = {}
        self._built_on = {dependency for target in targets for dependency in target.depends_on}
        for target in dependencies_first(targets):
            started = time.monotonic()
            group = publish_group(target) if options.publish else None
            broken = [d for d in target.depends_on if d in failed]
            manifest = None
            if broken:
                outcome = Outcome(target.id, Status.FAILED, error=f"not built: {', '.join(broken)} failed")
            else:
                outcome, manifest = self._one(target, options, publish_now=group is None)
            outcome.seconds = round(time.monotonic() - started, 2)
            if outcome.status is Status.FAILED:
                failed.add(target.id)
            outcomes.append(outcome)
            if group is not None:
                together.setdefault(group, []).append((outcome, manifest))
            self.on_step(f"{target.id}: {outcome.status} in {outcome.seconds:.1f}s")
        for members in together.values():
            self._publish_together(members, options)
        return outcomes

    def _publish_together(
        self, members: list[tuple[Outcome, BuildManifest | None]], options: BuildOptions
    ) -> None:
        """One publication over a group's manifests (every arch under one tag), all or nothing."""
        # A member found in the registry has no manifest here: the index keeps its entry.
        failed = [o.target for o, m in members if o.status is Status.FAILED or (m is None and not o.note)]
        if failed:
            for outcome, _ in members:
                if outcome.status is not Status.FAILED:
                    outcome.error = f"not published: {', '.join(failed)} of the same tag failed"
            return
        if all(o.status is Status.SKIPPED for o, _ in members):
            return  # every member already published: nothing pushed
        manifests = [m for _, m in members if m is not None]
        started = time.monotonic()
        try:
            publications = publish_manifests(
                manifests, self.publishers(), self.ledger, self.on_step, self._candidate(options)
            )
        except KilnError as exc:
            for outcome, _ in members:
                outcome.status, outcome.error = Status.FAILED, f"publish: {exc}"
            return
        seconds = round(time.monotonic() - started, 2)
        for outcome, _ in members:
            if outcome.status is Status.SKIPPED:
                outcome.status = Status.REUSED  # published again, with the rest of its tag
            outcome.published = [p.as_json() for p in publications if p.target == outcome.target]
            outcome.seconds = round(outcome.seconds + seconds / len(members), 2)

    def _one(
        self, target: Target, options: BuildOptions, publish_now: bool = True
    ) -> tuple[Outcome, BuildManifest | None]:
        outcome = Outcome(target.id, Status.BUILT)
        manifest = None
        try:
            manifest = None if options.force else self.existing_manifest(target)
            route = target.spec.route
            if manifest is None and options.publish and not options.force and route is not None:
                # This runner's ledger does not know the digest: the destination is the authority
                # (another runner, or this one before its ledger, may have published it). A
                # destination that does not answer fails the target: never a silent rebuild.
                found = published_at(target, self.publishers(), self._candidate(options))
                # A target another one of this run builds on is built anyway, unless its destination
                # hands back what a build would make (the registry's image).
                if found is not None and (found.image is not None or target.id not in self._built_on):
                    if found.image is not None:
                        self._reused[target.id] = found.image
                    outcome.status, outcome.note = Status.SKIPPED, f"in {route.destination}: {found.where}"
                    outcome.verification = "passed before it was published"
                    self.on_step(f"{target.id}: {outcome.note} (same digest): not built, not published again")
                    return outcome, None
            if manifest is None:
                manifest = self.build(target)
            elif not self._needs_verification(target, manifest, options) and (
                not options.publish or self._published(manifest, options.candidate)
            ):
                outcome.status = Status.SKIPPED  # same digest, built, verified (and published): nothing to do
            else:
                outcome.status = Status.REUSED
            if outcome.status is not Status.SKIPPED:
                if self._needs_verification(target, manifest, options):
                    manifest = self.verify(target, manifest, options)
                if options.publish:
                    if not manifest.verification_ok:
                        raise CommandFailed(
                            f"verification {manifest.verification_summary}: nothing published"
                        )
                    if publish_now:
                        publications = publish_manifests(
                            [manifest], self.publishers(), self.ledger, self.on_step, self._candidate(options)
                        )
                        outcome.published = [p.as_json() for p in publications]
                elif not manifest.verification_ok:
                    raise CommandFailed(f"verification {manifest.verification_summary}")
            outcome.verification = manifest.verification_summary
            outcome.manifest = str(self.dirs.manifest(target))
        except KilnError as exc:
            outcome.status, outcome.error = Status.FAILED, str(exc)
            manifest = None
        return outcome, manifest

    def publishers(self) -> Publishers:
        if self._publishers is None:
            self._publishers = SitePublishers(self.site, self.workspace.root, self.on_step)
        return self._publishers

    def _published(self, manifest: BuildManifest, candidate: str | None = None) -> bool:
        return (
            self.ledger is not None
            and manifest.build_id is not None
            and self.ledger.published(manifest.build_id, candidate)
        )

    def _candidate(self, options: BuildOptions) -> Candidate | None:
        if options.candidate is None:
            return None
        image_suffix, repo_suffix = self.site.candidates.suffixes(options.candidate)
        return Candidate(options.candidate, image_suffix, repo_suffix)

    # -- one target's build ------------------------------------------------------------------------------

    def existing_manifest(self, target: Target) -> BuildManifest | None:
        """The manifest of an earlier successful build of this exact digest, artifacts intact."""
        path = self.dirs.manifest(target)
        if self.ledger is None or not path.exists():
            return None
        if self.ledger.state(target.id, target.digest) is not TargetState.UP_TO_DATE:
            return None
        try:
            manifest = read_manifest(path)
        except InvalidInput:
            return None
        if manifest.digest != target.digest:
            return None
        for artifact in manifest.artifacts:
            file = manifest.path_of(artifact)
            measured = file / "index.json" if file.is_dir() else file  # an OCI layout: its index
            if not measured.exists() or measured.stat().st_size != artifact.size:
                return None
        return manifest

    def build(self, target: Target) -> BuildManifest:
        backend = self._backend(target)
        assert self.ledger is not None, "a build is recorded in a ledger"
        host = gather_host_facts(target, self.site, backend, self.on_step)
        render_dir = self.dirs.render(target)
        shutil.rmtree(render_dir, ignore_errors=True)
        rendered = render_target(target, self.workspace.templates_dir)
        write_rendered(rendered, self.dirs.root, under=f"{target.slug}/render")
        dependencies = self._built_dependencies(target)
        job = self.job_for(target, {f.path: f.content for f in rendered}, host, dependencies)
        run = backend.plan(job)
        log = self.dirs.logs(target) / f"build-{time.strftime('%Y%m%dT%H%M%S')}.log"
        build_id = self.ledger.start_build(target, log_path=str(log))
        self.on_step(f"{target.id}: {run.tool} (log: {log})")
        (job.out_dir / FACTS).unlink(missing_ok=True)  # never an earlier build's
        try:
            artifacts = backend.run(run, job, self.runner, log, self.on_step)
        except BaseException as exc:
            status = "cancelled" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
            self.ledger.finish_build(build_id, status, error=str(exc)[:4000])
            raise
        manifest = BuildManifest(
            target=target.id,
            recipe=target.recipe,
            kind=target.kind,
            arch=target.arch.value,
            release=target.release,
            variant=target.variant,
            digest=target.digest,
            artifacts=tuple(artifacts),
            publish=target.publish.model_dump(mode="json"),
            build=target.build_json,
            build_id=build_id,
            source_commit=source_commit(self.workspace.root),
            verification={"status": Verification.PENDING.value},
            build_facts=read_build_facts(job.out_dir) or None,
            base_dir=self.dirs.target(target),
        )
        manifest.write(self.dirs.manifest(target))
        if manifest.build_facts:
            self.ledger.record_build_facts(build_id, manifest.build_facts)
        self.ledger.finish_build(
            build_id,
            "succeeded",
            tool_versions=backend.tool_versions(self.runner),
            artifacts=[(a.name, str(manifest.path_of(a)), a.sha256, a.size) for a in manifest.artifacts],
        )
        return self._attest(target, manifest)

    def _attest(self, target: Target, manifest: BuildManifest) -> BuildManifest:
        """SBOM and provenance beside the artifacts, listed in the manifest (builder/pipeline/attest.py)."""

        signer = site_signer(self.site, self.workspace.root, self.runner)
        manifest = attest(manifest, self.ledger, self.dirs.render(target), signer, self.runner)
        manifest.write(self.dirs.manifest(target))
        return manifest

    def _backend(self, target: Target) -> Backend:
        backend = target.spec.backend
        if backend is None:
            raise InvalidInput(Problem(f"{target.id}: kiln build does not build {target.spec.label} yet"))
        return backend

    def job_for(
        self, target: Target, rendered: dict[str, bytes], host: HostFacts, dependencies: dict[str, Path]
    ) -> BuildJob:
        return BuildJob(
            target=target,
            rendered=rendered,
            render_dir=self.dirs.render(target),
            out_dir=self.dirs.out(target),
            tmp_dir=self.dirs.tmp(target),
            build_root=self.dirs.root,
            workspace_root=self.workspace.root,
            elements_dir=self.workspace.elements_dir,
            cache_dir=self.cache_dir,
            site=self.site,
            host=host,
            dependencies=dependencies,
        )

    def _built_dependencies(self, target: Target) -> dict[str, Path]:
        """Each dependency's main artifact (its first), from its manifest in this build root."""
        found: dict[str, Path] = {}
        for dependency in target.depends_on:
            if dependency in self._reused:
                found[dependency] = self._pull_dependency(dependency)
                continue
            path = self.dirs.manifest(slug_of(dependency))
            try:
                manifest = read_manifest(path)
            except InvalidInput:
                raise InvalidInput(
                    Problem(
                        f"{target.id} builds on {dependency}, which has no build here yet: "
                        f"run `kiln build {dependency.split(':')[0]} --arch {target.arch.value}` first"
                    )
                ) from None
            found[dependency] = main_artifact(manifest)
        return found

    def _pull_dependency(self, dependency: str) -> Path:
        """A parent found in the registry, pulled by its manifest digest into an OCI layout under its
        own build directory, with the ``image.json`` a child's build reads its engine tag from."""
        found = self._reused[dependency]
        directory = self.dirs.target(slug_of(dependency)) / "registry"
        self.on_step(f"{dependency}: pulling {found.repository}@{found.manifest_digest[:19]} to build on")
        layout = found.pull(directory / "oci")
        name = found.repository.rsplit("/", 1)[-1]
        tag = f"kiln-registry/{name}:{slug_of(dependency)}-{found.manifest_digest[7:23]}"
        (directory / "image.json").write_text(json.dumps({"tag": tag, "from": found.reference}) + "\n")
        return layout

    # -- the gate ----------------------------------------------------------------------------------------

    def _needs_verification(self, target: Target, manifest: BuildManifest, options: BuildOptions) -> bool:
        status = manifest.verification_status
        if status.counts_as_pass:
            return False
        if status is Verification.OFF:  # switched off before: verify now if it can and was not told not to
            return options.verify and target.spec.verifier(target.verify) is not None
        return True  # pending (never verified) or failed

    def verify(self, target: Target, manifest: BuildManifest, options: BuildOptions) -> BuildManifest:

        verifier = target.spec.verifier(target.verify)
        if verifier is None:
            verdict: dict[str, Any] = {
                "status": Verification.OFF.value,
                "by": f"the recipe: {target.spec.label} checks nothing here",
            }
        elif not options.verify:
            verdict = {"status": Verification.OFF.value, "by": "kiln build --no-verify"}
        else:
            cases = verifier.verify(
                VerifyJob(
                    target,
                    manifest,
                    self.dirs.target(target) / "verify",
                    self.runner,
                    self.on_step,
                    gpu=options.gpu,
                )
            )
            write_junit(self.dirs.target(target) / "verify.xml", cases)
            failing = [c for c in cases if not c.passed]
            status = Verification.PASSED if cases and not failing else Verification.FAILED
            verdict = {"status": status.value, "cases": len(cases)}
            if failing:
                verdict["by"] = "; ".join(f"{c.name}: {c.message}" for c in failing)[:2000]
            elif not cases:
                verdict["by"] = "the verifier returned no test case"
        manifest = self._attest(target, _with_verification(manifest, verdict))
        if self.ledger is not None and manifest.build_id is not None:
            self.ledger.record_verification(manifest.build_id, verdict["status"], str(verdict.get("by", "")))
        self.on_step(f"{target.id}: verification {manifest.verification_summary}")
        return manifest

    # -- dry run -----------------------------------------------------------------------------------------

    def dry_run(self, targets: list[Target]) -> list[Outcome]:
        """What each target's build would run, dependencies first; writes and probes nothing."""
        outcomes = []
        planned: dict[str, Path] = {}  # target id -> its planned main artifact
        for target in dependencies_first(targets):
            outcome = Outcome(target.id, Status.DRY_RUN)
            try:
                backend = self._backend(target)
                host = HostFacts(
                    arch=host_arch(), placement=self.site.placement(target.arch, host_arch()), probed=False
                )
                rendered = {f.path: f.content for f in render_target(target, self.workspace.templates_dir)}
                dependencies = {
                    d: planned.get(d) or self._planned_dependency(target, d) for d in target.depends_on
                }
                run = backend.plan(self.job_for(target, rendered, host, dependencies))
                # the whole environment each command gets: the one Kiln runs in, the command's over it
                outcome.plan = {"placement": host.placement, **run.as_json(inherited=os.environ)}
                if run.outputs:
                    planned[target.id] = run.outputs[0].path
            except KilnError as exc:
                outcome.status, outcome.error = Status.FAILED, str(exc)
            outcomes.append(outcome)
        return outcomes

    def _planned_dependency(self, target: Target, dependency: str) -> Path:
        """A dependency outside this run: its artifact from an earlier build, or where it would be."""
        try:
            return main_artifact(read_manifest(self.dirs.manifest(slug_of(dependency))))
        except InvalidInput:
            return self.dirs.target(slug_of(dependency)) / "out" / "(built by its own target first)"


def main_artifact(manifest: BuildManifest) -> Path:
    disk = [a for a in manifest.artifacts if a.format == "qcow2"] or list(manifest.artifacts)
    if not disk:
        raise InvalidInput(Problem(f"{manifest.target}: its manifest lists no artifact"))
    return manifest.path_of(disk[0])


def _with_verification(manifest: BuildManifest, verdict: dict[str, Any]) -> BuildManifest:

    return replace(
        manifest, verification={**verdict, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )


def host_arch() -> Arch:
    try:
        return Arch.host()
    except ValueError as exc:  # a host Kiln's architecture table does not know (s390x, riscv64)
        raise EnvironmentProblem(f"this host: {exc}") from exc


def gather_host_facts(target: Target, site: SiteConfig, backend: Backend, on_step: Step) -> HostFacts:
    """Placement (refused before anything is written), then the probes this backend needs."""
    host = host_arch()
    placement = site.placement(target.arch, host)
    on_step(f"{target.id}: {placement} on this {host.value} host")
    adaptations: tuple[Any, ...] = ()
    if backend.needs_host_adaptations:
        adaptations = tuple(hostcompat.detect([target.arch.value]))
        for adaptation in adaptations:
            on_step(f"host: {adaptation.name}: {adaptation.reason}")
        blocking = [a for a in adaptations if a.name in hostcompat.BLOCKING]
        if blocking:
            raise EnvironmentProblem(
                "; ".join(f"{a.name}: {a.reason}" for a in blocking)
                + " (scripts/bootstrap.sh sets up binfmt_misc for qemu-user-static)"
            )
    accelerator = None
    if backend.needs_accelerator:
        accelerator = choose_accelerator(target.arch)
    return HostFacts(arch=host, placement=placement, adaptations=adaptations, accelerator=accelerator)


def describe_plan(outcome: Outcome) -> list[str]:
    """A dry run's plan as lines a person can paste (secrets are masked by the caller)."""

    plan = outcome.plan or {}
    lines = [f"# {outcome.target} ({plan.get('tool', '?')}, {plan.get('placement', '?')})"]
    for source, dest in plan.get("copies", []):
        lines.append(f"install -D -m 0644 {shlex.quote(source)} {shlex.quote(dest)}")
    for command in plan.get("commands", []):
        # `env -i` and every variable, one per line: pasted, it runs with exactly the environment
        # the build would (masked values aside)
        cd = f"cd {shlex.quote(command['cwd'])} && " if command.get("cwd") else ""
        env = command.get("env") or {}
        if env:
            lines.append(f"{cd}env -i \\")
            lines += [f"    {shlex.quote(f'{k}={v}')} \\" for k, v in env.items()]
            lines.append(f"    {shlex.join(command['argv'])}")
        else:
            lines.append(cd + shlex.join(command["argv"]))
    lines += [f"# outputs: {path}" for path in plan.get("outputs", [])]
    lines += [f"# note: {note}" for note in plan.get("notes", [])]
    return lines
