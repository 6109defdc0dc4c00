"""GitLab child pipelines from the pipeline layer's graph (``kiln pipeline``).

Kiln does not schedule: it writes one GitLab job per stale target and lets GitLab place each on a
runner with the right tags. Two pure steps, then the CLI writes files:

* :func:`select_stale` decides which targets to build and says why (digest never published, inputs
  changed since a git ref, published longer ago than the schedule allows);
* :func:`generate` turns them into one or more pipeline documents: ``needs:`` from
  ``Target.depends_on``, ``tags:`` per arch from site.yaml, a ``resource_group`` per publish
  destination, artifacts with JUnit, ``retry`` on runner/system failures only, ``interruptible``.
  A document over GitLab's 5 MB limit for generated configs is split per arch, then by size (a
  dependency chain always stays in one file: ``needs:`` cannot cross child pipelines).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.kind import Target, slug_of
from ..core.targets import TargetGraph, dependencies_first
from ..errors import InvalidInput, Problem
from ..host.run import Runner
from ..siteconfig import GitLabSite

# GitLab refuses a generated (artifact) config over 5 MB; stay a little under it.
MAX_BYTES = 5 * 1000 * 1000 - 4096
NOOP_JOB = "kiln-nothing-to-build"
# Retry what the runner or the machine broke, never a build that failed on its own.
RETRY_WHEN = [
    "runner_system_failure",
    "stuck_or_timeout_failure",
    "scheduler_failure",
    "api_failure",
    "data_integrity_failure",
    "runner_unsupported",
    "unmet_prerequisites",
]
BUILD_ROOT = ".kiln/build"  # the build root jobs use (builder/pipeline/build.py's default)


@dataclass(frozen=True)
class StaleTarget:
    target: Target
    reasons: tuple[str, ...]


@dataclass
class PipelineFile:
    """One generated child pipeline: its name suffix, the document and the targets in it."""

    name: str
    document: dict[str, Any]
    targets: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return render_yaml(self.document)


def input_files(target: Target) -> set[str]:
    """Workspace-relative files whose change makes a target worth rebuilding (its recipe too)."""
    return {target.recipe_file, *target.inputs}


def select_stale(
    targets: list[Target],
    published: dict[str, dict[str, float]],
    *,
    changed_files: set[str] | None = None,
    changed_ref: str = "",
    older_than: float | None = None,
) -> list[StaleTarget]:
    """Targets to build, dependencies first, each with why.

    ``published``: target id -> digest -> when it was published (Ledger.published_digests()).
    ``changed_files``: workspace-relative paths changed since ``changed_ref`` (None: not asked).
    ``older_than``: a timestamp; a published digest older than it is rebuilt (the schedule)."""
    out: list[StaleTarget] = []
    for target in dependencies_first(targets):
        reasons: list[str] = []
        digests = published.get(target.id, {})
        at = digests.get(target.digest)
        if at is None:
            if digests:
                reasons.append(f"digest {target.digest[:12]} not published (an older digest is)")
            else:
                reasons.append(f"digest {target.digest[:12]} never published")
        elif older_than is not None and at < older_than:
            reasons.append("published longer ago than the rebuild interval")
        if changed_files is not None:
            hit = sorted(input_files(target) & changed_files)
            if hit:
                more = f" (+{len(hit) - 3} more)" if len(hit) > 3 else ""
                reasons.append(f"inputs changed since {changed_ref}: {', '.join(hit[:3])}{more}")
        out.append(StaleTarget(target, tuple(reasons)))
    chosen = {s.target.id for s in out if s.reasons}
    # A target whose base is rebuilt is rebuilt after it (its digest covers the base's anyway).
    for s in out:
        if not s.reasons and any(d in chosen for d in s.target.depends_on):
            chosen.add(s.target.id)
    return [
        s if s.reasons else StaleTarget(s.target, ("builds on a target rebuilt here",))
        for s in out
        if s.target.id in chosen
    ]


def resource_group(target: Target) -> str | None:
    """``route:destination`` (``glance:Debian 12``): two jobs that write the same place never run at once."""
    route = target.spec.route
    destination = route.destination_key(target) if route is not None else None
    return f"{route.name}:{destination}" if route is not None and destination else None


def target_job(
    target: Target,
    in_pipeline: set[str],
    has_dependents: bool,
    gitlab: GitLabSite,
    publish: bool,
    candidate: str | None = None,
) -> dict[str, Any]:
    slug = target.slug
    where = f"{BUILD_ROOT}/{slug}"
    paths = [f"{where}/manifest.json", f"{where}/verify.xml", f"{where}/logs/"]
    if has_dependents:  # the jobs that need this one take its artifacts
        paths.append(f"{where}/out/")
    job: dict[str, Any] = {
        "stage": "build",
        "tags": gitlab.tags(target.arch, gpu=bool(getattr(target.build, "cuda", None))),
        "needs": [{"job": slug_of(d), "artifacts": True} for d in target.depends_on if d in in_pipeline],
        "variables": {"KILN_TARGET": target.id, "KILN_DIGEST": target.digest},
        "script": [build_command(target.id, publish, candidate)],
        "artifacts": {
            "when": "always",
            "expire_in": gitlab.artifacts_expire_in,
            "paths": paths,
            "reports": {"junit": f"{where}/verify.xml"},
        },
        "interruptible": True,
    }
    if gitlab.retry:
        job["retry"] = {"max": gitlab.retry, "when": list(RETRY_WHEN)}
    group = resource_group(target)
    if group and publish:  # a candidate writes its own names: it waits only for the same candidate
        job["resource_group"] = group if candidate is None else f"{group}@candidate-{candidate}"
    return job


def build_command(target_id: str, publish: bool, candidate: str | None) -> str:
    """The job's one line: ``kiln build <target> --publish`` (the default branch), with
    ``--candidate ID`` for a merge request (candidate names), or ``--no-publish``."""
    if not publish:
        return f"kiln build {target_id} --no-publish"
    return f"kiln build {target_id} --publish" + (f" --candidate {candidate}" if candidate else "")


def noop_document(reason: str) -> dict[str, Any]:
    """GitLab refuses a pipeline without jobs: an empty plan is one job that says so."""
    return {
        "stages": ["build"],
        NOOP_JOB: {"stage": "build", "script": [f"echo {json.dumps('kiln: ' + reason)}"]},
    }


def generate(
    stale: list[StaleTarget],
    gitlab: GitLabSite,
    *,
    publish: bool = True,
    max_bytes: int = MAX_BYTES,
    candidate: str | None = None,
) -> list[PipelineFile]:
    """The child pipeline(s) for ``stale`` targets; one file unless over ``max_bytes``. Split, the
    parts carry no downstream trigger: :func:`dispatcher` (the file above them) triggers it once.
    ``candidate``: every job publishes under that candidate's names (``--candidate``; the caller
    checked the id with site.yaml's ``candidates.suffixes``)."""
    if not stale:
        return [PipelineFile("", noop_document("nothing to build: every target's digest is published"))]
    in_pipeline = {s.target.id for s in stale}
    with_dependents = {d for s in stale for d in s.target.depends_on if d in in_pipeline}
    jobs = {
        s.target.id: target_job(
            s.target, in_pipeline, s.target.id in with_dependents, gitlab, publish, candidate
        )
        for s in stale
    }
    # Every file carries the same header; the limit is measured on what is written, header included.
    header = {"default": {"before_script": list(gitlab.before_script)}} if gitlab.before_script else {}
    return _split(stale, jobs, max_bytes, header, downstream_jobs(gitlab, publish, candidate))


def downstream_jobs(gitlab: GitLabSite, publish: bool = True, candidate: str | None = None) -> dict[str, Any]:
    """site.yaml's downstream project, triggered once every build job above it passed (the stage
    waits for them all; ``needs`` would be capped at 50 jobs); a candidate's id goes along as
    KILN_CANDIDATE, so a deployment test can boot the candidate's images. Nothing when not publishing."""
    if gitlab.downstream is None or not publish:
        return {}
    trigger = {"project": gitlab.downstream.project, "branch": gitlab.downstream.branch, "strategy": "depend"}
    job: dict[str, Any] = {"stage": "downstream", "trigger": trigger}
    if candidate:
        job["variables"] = {"KILN_CANDIDATE": candidate}
    return {"kiln-downstream": job}


def _split(
    stale: list[StaleTarget],
    jobs: dict[str, dict[str, Any]],
    max_bytes: int,
    header: dict[str, Any],
    tail: dict[str, Any],
) -> list[PipelineFile]:
    """One file when it fits (with ``tail``, the downstream trigger), else per arch, then by size;
    split, the parts carry no ``tail``: the dispatcher triggers it once, after every part."""
    whole = _document(jobs.items(), header)
    if tail:
        whole["stages"] = ["build", "downstream"]
        whole.update(tail)
    if len(render_yaml(whole)) <= max_bytes:
        return [PipelineFile("", whole, list(jobs))]
    files: list[PipelineFile] = []
    by_arch: dict[str, list[StaleTarget]] = {}
    for s in stale:
        by_arch.setdefault(s.target.arch.value, []).append(s)
    for arch, group in by_arch.items():
        doc = _document(((s.target.id, jobs[s.target.id]) for s in group), header)
        if len(render_yaml(doc)) <= max_bytes:
            files.append(PipelineFile(arch, doc, [s.target.id for s in group]))
            continue
        files.extend(_by_size(arch, group, jobs, max_bytes, header))
    return files


def _document(jobs: Iterable[tuple[str, dict[str, Any]]], header: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {**header, "stages": ["build"]}
    for target_id, job in jobs:
        doc[slug_of(target_id)] = job
    return doc


def _by_size(
    arch: str,
    group: list[StaleTarget],
    jobs: dict[str, dict[str, Any]],
    max_bytes: int,
    header: dict[str, Any],
) -> list[PipelineFile]:
    """Connected groups of jobs (a target and all it needs) packed into files under ``max_bytes``."""
    parent = {s.target.id: s.target.id for s in group}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in group:
        for d in s.target.depends_on:
            if d in parent:
                parent[root(s.target.id)] = root(d)
    components: dict[str, list[str]] = {}
    for s in group:
        components.setdefault(root(s.target.id), []).append(s.target.id)
    # render_yaml writes one line per key: a file's size is its header's plus its jobs' lines.
    overhead = len(render_yaml(_document((), header)))
    files: list[PipelineFile] = []
    current: list[str] = []
    size = overhead
    for ids in components.values():
        part = len(render_yaml(_document(((i, jobs[i]) for i in ids), header))) - overhead
        if overhead + part > max_bytes:
            raise InvalidInput(
                Problem(
                    f"{ids[0]}: {len(ids)} targets that depend on each other need {overhead + part} bytes "
                    f"of pipeline, over GitLab's limit of {max_bytes}: they cannot be split"
                )
            )
        if current and size + part > max_bytes:
            files.append(
                PipelineFile(
                    f"{arch}-{len(files) + 1}", _document(((i, jobs[i]) for i in current), header), current
                )
            )
            current, size = [], overhead
        current.extend(ids)
        size += part
    if current:
        name = f"{arch}-{len(files) + 1}" if files else arch
        files.append(PipelineFile(name, _document(((i, jobs[i]) for i in current), header), current))
    return files


def explain(stale: list[StaleTarget], files: list[PipelineFile]) -> str:
    """The expanded plan for people: every job, its tags, what it needs, and why it runs."""
    if not stale:
        return "nothing to build: one no-op job (GitLab needs at least one)"
    file_of = {t: f.name or "(one file)" for f in files for t in f.targets}
    lines = []
    for s in stale:
        job = next(f.document[slug_of(s.target.id)] for f in files if s.target.id in f.targets)
        needs = ", ".join(n["job"] for n in job["needs"]) or "-"
        lines.append(f"{slug_of(s.target.id)}  [{file_of[s.target.id]}]")
        lines.append(f"  script: {job['script'][0]}")
        lines.append(f"  tags: {', '.join(job['tags'])}   needs: {needs}")
        if "resource_group" in job:
            lines.append(f"  resource_group: {job['resource_group']}")
        lines.append(f"  why: {'; '.join(s.reasons)}")
    lines.append(f"{len(stale)} jobs in {len(files)} file(s)")
    return "\n".join(lines)


def render_yaml(document: dict[str, Any]) -> str:
    """YAML for GitLab: JSON is YAML, and json.dumps is fast and never emits tags or anchors.
    One job per line keeps large pipelines readable in diffs."""
    lines = [
        f"{json.dumps(key)}: {json.dumps(value, separators=(', ', ': '))}" for key, value in document.items()
    ]
    return "\n".join(lines) + "\n"


def changed_since(root: Any, ref: str) -> set[str]:
    """Workspace-relative files that differ between ``ref`` and the working tree (``git diff``).
    The one I/O here; raises InvalidInput when git cannot answer (not a repo, unknown ref)."""

    if ref.startswith("-"):
        raise InvalidInput(Problem(f"--changed-since: {ref!r} is not a git ref"))
    result = Runner().capture(["git", "-C", str(root), "diff", "--name-only", "--relative", ref, "--"])
    if result.returncode != 0:
        why = (result.stderr or result.error).strip().splitlines()
        raise InvalidInput(
            Problem(f"--changed-since {ref}: git diff failed: {why[0] if why else 'no output'}")
        )
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def dispatcher(
    files: list[PipelineFile], prefix: str, generate_job: str, downstream: dict[str, Any] | None = None
) -> dict[str, Any]:
    """When the plan is split, the file the parent triggers: it takes the parts from the parent's
    generate job (``needs:pipeline:job``, PARENT_PIPELINE_ID set by the parent's trigger job) and
    triggers each part as its own child pipeline, so no single config is over GitLab's limit.
    ``downstream`` (:func:`downstream_jobs`) runs once, after every part passed."""
    names = [f"{prefix}-{f.name}.yml" for f in files]
    doc: dict[str, Any] = {
        "stages": ["parts", "build"],
        "kiln-pipeline-parts": {
            "stage": "parts",
            "needs": [{"pipeline": "$PARENT_PIPELINE_ID", "job": generate_job}],
            "script": [f"ls -l {' '.join(names)}"],
            "artifacts": {"paths": names, "expire_in": "1 day"},
        },
    }
    for f, name in zip(files, names, strict=True):
        doc[f"kiln-{f.name}"] = {
            "stage": "build",
            "needs": ["kiln-pipeline-parts"],
            "trigger": {
                "include": [{"artifact": name, "job": "kiln-pipeline-parts"}],
                "strategy": "depend",
            },
        }
    if downstream:
        doc["stages"].append("downstream")
        doc.update(downstream)
    return doc


def select_ids(
    targets: list[Target],
    ids: list[str],
    with_dependencies: bool,
    built_here: Callable[[Target], bool] = lambda _: False,
) -> list[Target]:
    """The targets named by id (``kiln build debian-12:bookworm:x86_64``, as generated jobs run it),
    with what they build on when asked, except a dependency ``built_here`` already (a job's
    ``needs:`` brought its manifest and artifacts); raises InvalidInput naming an unknown id."""
    by_id = {t.id: t for t in targets}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        known = ", ".join(sorted(by_id)[:8])
        raise InvalidInput(Problem(f"{unknown[0]}: no such target (targets of that recipe: {known})"))
    wanted = TargetGraph(targets).closure(ids, skip=built_here) if with_dependencies else set(ids)
    return [t for t in targets if t.id in wanted]
