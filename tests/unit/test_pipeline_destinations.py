"""`kiln pipeline --ask-destinations`: what every destination holds decides staleness too (issues 14, 25).

Build jobs on other runners publish without writing the generate job's ledger. The example recipes
give real targets (DIB and Packer guests publish to Glance, CUDA containers to the registry, an RPM to
a repo); the destinations are stand-ins with the publishers' query methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import builder.publishers.from_site as from_site
from builder.cli import main
from builder.errors import EnvironmentProblem
from builder.pipeline import destinations, gitlab
from builder.pipeline.destinations import published_at
from builder.pipeline.publish import Candidate
from builder.publishers.glance import GlanceImage, image_name
from builder.publishers.publication_record import PublicationRecord
from builder.publishers.registry import PublishedImage
from builder.publishers.routes import GLANCE
from tests.unit.test_gitlab_pipeline import _examples

REPO = Path(__file__).resolve().parents[2]
GUEST = "debian-12:bookworm:x86_64"
PACKER = "debian-12-packer:bookworm:x86_64"
CUDA_BASE = "cuda-base:bookworm:x86_64"
HELLO = "kiln-hello:9:ppc64le"
IPA = "ipa-bookworm:bookworm:x86_64"


class FakeGlance:
    """GlancePublisher.published_images over a list of images:
    (id, name, created_at, target, digest[, properties])."""

    def __init__(self, images=(), down: bool = False):
        self.images = list(images)
        self.down = down
        self.asked: list[tuple[str, str, str | None]] = []

    def published_images(self, target_id, digest, name=None):
        self.asked.append((target_id, digest, name))
        if self.down:
            raise EnvironmentProblem("Glance is not answering: connection refused")
        return [
            GlanceImage(i, n, at, {"kiln_target": t, "kiln_digest": d, **(rest[0] if rest else {})})
            for i, n, at, t, d, *rest in self.images
            if (t, d) == (target_id, digest) and name in (None, n)
        ]


class FakeRepo:
    """ServedRepo.published over {(repo, distro, release, arch, target): (target, digest)}."""

    def __init__(self, records=None):
        self.records = records or {}
        self.asked: list[tuple[str, ...]] = []

    def published(self, repo, distro, release, arch, target_id):
        self.asked.append((repo, distro, release, arch, target_id))
        url = f"http://repo.example/{repo}/{distro}/{release}/{arch}/kiln-published/x.json"
        named = self.records.get((repo, distro, release, arch, target_id))
        return url, PublicationRecord(*named, published_at=1000.0) if named else None


class FakeHttpDir:
    """HttpDirPublisher.published over {directory: (target, digest)}."""

    def __init__(self, records=None):
        self.records = records or {}

    def published(self, directory):
        named = self.records.get(directory)
        url = f"http://ipa.example/{directory}/kiln-published.json"
        return url, PublicationRecord(*named, published_at=2000.0) if named else None


class FakeRegistry:
    """RegistryPublisher.published_images over {(repository, tag): {arch: kiln digest}}."""

    class client:  # RegistryPublisher.client
        registry = "registry.example:5000"

    def __init__(self, tags=None):
        self.tags = tags or {}
        self.asked: list[tuple[str, str]] = []

    def published_images(self, repository, tag):
        self.asked.append((repository, tag))
        found = self.tags.get((repository, tag), {})
        return {arch: PublishedImage(digest, "sha256:" + "e" * 64) for arch, digest in found.items()}


class FakePublishers:
    def __init__(self, glance=None, registry=None, repo=None, http_dir=None):
        self._glance = glance or FakeGlance()
        self._registry = registry or FakeRegistry()
        self._repo = repo or FakeRepo()
        self._http_dir = http_dir or FakeHttpDir()

    def glance(self):
        return self._glance

    def registry(self):
        return self._registry, "team"

    def served_repo(self):
        return self._repo

    def http_dir(self):
        return self._http_dir


@pytest.fixture(scope="module")
def examples():
    return _examples()


def _by_id(targets):
    return {t.id: t for t in targets}


def _ask(targets, publishers, ledger=None):
    warnings: list[str] = []
    answers = destinations.ask(targets, ledger or {}, publishers, warnings.append)
    stale = gitlab.select_stale(targets, answers.published(ledger or {}, now=5000.0))
    return answers, {s.target.id: s.reasons for s in stale}, warnings


def test_a_target_glance_holds_at_its_digest_gets_no_job_and_the_others_still_do(examples):
    guest = _by_id(examples)[GUEST]
    glance = FakeGlance([("img-1", image_name(guest), "2026-11-20T10:00:00Z", GUEST, guest.digest)])
    answers, jobs, warnings = _ask(examples, FakePublishers(glance))
    assert GUEST not in jobs and warnings == []
    assert PACKER in jobs  # its own digest is nowhere: built, on the base Glance already has
    assert jobs[PACKER] == (f"digest {_by_id(examples)[PACKER].digest[:12]} never published",)
    assert (GUEST, guest.digest, "debian-12 bookworm x86_64") in glance.asked  # the production name
    [found] = answers.found()
    assert (found.where, found.destination) == ("glance image img-1 (debian-12 bookworm x86_64)", "Glance")
    assert found.at == 1795168800.0  # Glance's created_at, parsed as UTC


def test_an_image_of_another_digest_or_under_another_name_does_not_count(examples):
    guest = _by_id(examples)[GUEST]
    glance = FakeGlance(
        [
            ("old", image_name(guest), "2026-01-01T00:00:00Z", GUEST, "0" * 64),
            ("mr", image_name(guest) + "-mr7", "2026-01-01T00:00:00Z", GUEST, guest.digest),
        ]
    )
    answers, jobs, _ = _ask(examples, FakePublishers(glance))
    assert GUEST in jobs and answers.found() == []


def test_with_a_candidate_glance_is_asked_for_the_candidate_name(examples):
    guest = _by_id(examples)[GUEST]
    glance = FakeGlance([("mr", image_name(guest) + "-mr7", "2026-01-01T00:00:00", GUEST, guest.digest)])
    found = published_at(guest, FakePublishers(glance), Candidate("7", "-mr7", "-mr7"))
    assert found is not None and found.where == "glance image mr (debian-12 bookworm x86_64-mr7)"
    assert published_at(guest, FakePublishers(glance)) is None


def test_glance_down_warns_once_and_every_glance_target_gets_its_job(examples):
    registry = FakeRegistry(
        {("team/kiln/cuda", "11.8-base-bookworm"): {"x86_64": _by_id(examples)[CUDA_BASE].digest}}
    )
    answers, jobs, warnings = _ask(examples, FakePublishers(FakeGlance(down=True), registry))
    assert warnings == [
        f"could not ask {destination}: Glance is not answering: connection refused; "
        "its targets are taken as not published"
        for destination in ("Glance", "Glance and the Bifrost directory")  # guests, agent ramdisks
    ]
    glance_targets = [t.id for t in examples if t.spec.route is GLANCE]
    assert len(glance_targets) == 4 and all(t in jobs for t in glance_targets)
    assert answers.unanswered["Glance"] == "Glance is not answering: connection refused"
    assert CUDA_BASE not in jobs  # the registry answered all the same


def test_the_registry_holding_every_tag_at_the_digest_means_no_job(examples):
    by_id = _by_id(examples)
    base_ppc = "cuda-base:bookworm:ppc64le"
    registry = FakeRegistry(
        {("team/kiln/cuda", "11.8-base-bookworm"): {"x86_64": by_id[CUDA_BASE].digest, "ppc64le": "f" * 64}}
    )
    answers, jobs, _ = _ask(examples, FakePublishers(registry=registry))
    assert CUDA_BASE not in jobs and base_ppc in jobs  # ppc64le's image there is of another digest
    found = {a.target: a for a in answers.found()}
    assert found[CUDA_BASE].where == "registry.example:5000/team/kiln/cuda:11.8-base-bookworm"
    assert found[CUDA_BASE].at is None  # the registry does not say when: taken as now
    assert answers.published({}, now=5000.0)[CUDA_BASE] == {by_id[CUDA_BASE].digest: 5000.0}


def test_targets_the_ledger_lists_are_not_asked_and_every_route_answers(examples):
    by_id = _by_id(examples)
    publishers = FakePublishers()
    ledger = {GUEST: {by_id[GUEST].digest: 1000.0}, CUDA_BASE: {by_id[CUDA_BASE].digest: 1000.0}}
    answers, jobs, warnings = _ask(examples, publishers, ledger)
    asked = {a.target: a.destination for a in answers.answers}
    assert GUEST not in asked and CUDA_BASE not in asked and warnings == []
    # the repo and the agent's destinations are asked too: runners share no ledger
    assert asked[HELLO] == "the RPM repo" and asked[IPA] == "Glance and the Bifrost directory"
    assert publishers._repo.asked == [("kiln", "el", "9", "ppc64le", HELLO)]  # the kind's distro, release
    assert HELLO in jobs and IPA in jobs
    assert ("team/kiln/cuda", "11.8-base-bookworm") in publishers._registry.asked  # the ppc64le one


def test_the_repos_publication_record_at_the_targets_digest_means_no_job(examples):
    hello = _by_id(examples)[HELLO]
    repo = FakeRepo({("kiln", "el", "9", "ppc64le", HELLO): (HELLO, hello.digest)})
    answers, jobs, _ = _ask(examples, FakePublishers(repo=repo))
    assert HELLO not in jobs
    [found] = [a for a in answers.found() if a.target == HELLO]
    assert found.where.startswith("http://repo.example/kiln/el/9/ppc64le/") and found.at == 1000.0
    stale = FakeRepo({("kiln", "el", "9", "ppc64le", HELLO): (HELLO, "0" * 64)})  # an older build's
    assert HELLO in _ask(examples, FakePublishers(repo=stale))[1]


def _ipa_images(target, artifacts, boot_set=("kernel", "initramfs", "iso")):
    name = image_name(target)
    return [
        (
            f"img-{artifact}",
            f"{name} {artifact}",
            "2026-11-20T10:00:00Z",
            target.id,
            target.digest,
            {"kiln_artifact": artifact, "kiln_boot_set": ",".join(boot_set)},
        )
        for artifact in artifacts
    ]


def test_an_agent_ramdisk_counts_as_published_only_with_every_image_and_the_bifrost_record(examples):
    ipa = _by_id(examples)[IPA]
    directory = image_name(ipa).replace(" ", "-")
    http = FakeHttpDir({directory: (IPA, ipa.digest)})
    complete = FakeGlance(_ipa_images(ipa, ("kernel", "initramfs", "iso")))
    answers, jobs, _ = _ask(examples, FakePublishers(complete, http_dir=http))
    assert IPA not in jobs
    [found] = [a for a in answers.found() if a.target == IPA]
    assert "glance images initramfs, iso, kernel" in found.where and directory in found.where
    # a publish killed after the kernel and the ramdisk (no ISO yet) is not published
    half = FakeGlance(_ipa_images(ipa, ("kernel", "initramfs")))
    assert IPA in _ask(examples, FakePublishers(half, http_dir=http))[1]
    # every image in Glance, but the Bifrost directory not switched yet
    assert IPA in _ask(examples, FakePublishers(complete))[1]
    # a build without an ISO names a set without it
    no_iso = FakeGlance(_ipa_images(ipa, ("kernel", "initramfs"), boot_set=("kernel", "initramfs")))
    assert IPA not in _ask(examples, FakePublishers(no_iso, http_dir=http))[1]


def test_kiln_pipeline_ask_destinations_reports_what_it_asked_and_explains_it(tmp_path, capsys, monkeypatch):
    guest = _by_id(_examples())[GUEST]
    glance = FakeGlance([("img-9", image_name(guest), "2026-11-20T10:00:00Z", GUEST, guest.digest)])
    monkeypatch.setattr(from_site, "SitePublishers", lambda *a, **k: FakePublishers(glance))
    base = ["--root", str(REPO), "--ledger", str(tmp_path / "l.sqlite"), "pipeline", "--ask-destinations"]
    assert main([*base, "--json", "-o", str(tmp_path / "c.yml"), "--arch", "x86_64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert GUEST not in [j["target"] for j in report["jobs"]] and PACKER in [
        j["target"] for j in report["jobs"]
    ]
    asked = {a["target"]: a for a in report["destinations"]["asked"]}
    assert asked[GUEST]["published_at"] == "glance image img-9 (debian-12 bookworm x86_64)"
    assert asked[PACKER]["published_at"] is None
    assert main([*base, "--explain", "-o", str(tmp_path / "c.yml"), "--arch", "x86_64"]) == 0
    out = capsys.readouterr().out
    assert f"{GUEST}: published at glance image img-9 (debian-12 bookworm x86_64) (asked): no job" in out


@pytest.mark.parametrize(
    ("ci", "flag", "asks"),
    [("true", None, True), ("true", "--no-ask-destinations", False), (None, None, False),
     (None, "--ask-destinations", True)],
)  # fmt: skip
def test_kiln_pipeline_asks_by_default_under_ci_only(tmp_path, capsys, monkeypatch, ci, flag, asks):
    guest = _by_id(_examples())[GUEST]
    glance = FakeGlance([("img-9", image_name(guest), "2026-11-20T10:00:00Z", GUEST, guest.digest)])
    monkeypatch.setattr(from_site, "SitePublishers", lambda *a, **k: FakePublishers(glance))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)  # what GitLab sets in every job
    argv = ["--root", str(REPO), "--ledger", str(tmp_path / "l.sqlite"), "pipeline", "--json"]
    assert main([*argv, *([flag] if flag else []), "-o", str(tmp_path / "c.yml"), "--arch", "x86_64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert bool(glance.asked) is asks
    assert (GUEST in [j["target"] for j in report["jobs"]]) is not asks


def test_the_repositorys_generate_job_asks_the_destinations_with_the_build_jobs_credentials():
    ci = (REPO / ".gitlab-ci.yml").read_text()
    generate = ci.split("kiln-generate:", 1)[1].split("kiln-build:", 1)[0]
    assert "--ask-destinations" in generate and "scripts/ci-credentials.sh" in generate
