"""The base tree (builder/backends/dib_base.py and its use in the DIB backend): what its key covers,
the store's LRU limit, the spot DIB starts from, and two builds needing one missing base.

The DIB runs themselves are played by a fake runner here; tests/e2e/test_base_tree.py builds for real.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from builder.arch import Arch
from builder.backends import dib_base
from builder.backends.base import read_build_facts
from builder.backends.dib import DibBackend, PhaseClock, elements_and_packages
from builder.backends.ipa import IpaBackend
from builder.core.kind import BuildJob, HostFacts, Target
from builder.host.run import Runner
from builder.pipeline.graph import load_targets
from builder.render import render_target
from builder.siteconfig import SiteConfig
from builder.workspace import PACKAGE_ROOT, Workspace

ELEMENTS = ["debian-minimal", "vm", "cloud-init-datasources", "growroot", "openssh-server", "kiln-extra-ca"]
SHARED = ["cloud-init", "qemu-guest-agent", "ifupdown", "isc-dhcp-client"]
ENV = {"ARCH": "amd64", "DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": "http://mirror.example/debian"}
STATE = [("http://mirror.example/debian/dists/bookworm", "a" * 64)]


def _spec(elements_dir: Path = PACKAGE_ROOT / "elements", **changes: Any) -> dib_base.BaseSpec:
    args: dict[str, Any] = {
        "distro": "debian",
        "release": "bookworm",
        "arch": Arch.X86_64,
        "elements": ELEMENTS,
        "elements_dir": elements_dir,
        "env": ENV,
        "recipe_packages": [*SHARED, "curl"],
        "shared_packages": SHARED,
        "distro_elements": {"debian-minimal", "debootstrap"},
        "mirror_state": STATE,
    }
    args.update(changes)
    return dib_base.base_spec(**args)


def test_the_base_holds_the_distro_packages_and_the_shared_ones_the_recipe_asks_for():
    spec = _spec()
    assert "linux-image-amd64" in spec.packages  # debian-minimal's own, for this arch
    assert "linux-image-arm64" not in spec.packages
    assert "open-iscsi" in spec.packages  # DIB's base element installs it in every build
    assert "open-iscsi" not in _spec(env={**ENV, "DIB_SKIP_BASE_PACKAGE_INSTALL": "1"}).packages
    assert set(SHARED) <= set(spec.packages)
    assert "curl" not in spec.packages  # the recipe's own addition: installed per build
    # a package the recipe does not ask for never enters its base
    assert "sudo" not in _spec(shared_packages=[*SHARED, "sudo"]).packages


def test_one_package_added_to_a_recipe_keeps_its_base():
    assert dib_base.base_key(_spec()) == dib_base.base_key(_spec(recipe_packages=[*SHARED, "curl", "jq"]))


def test_a_changed_mirror_state_element_or_base_package_list_makes_a_new_base(tmp_path):
    key = dib_base.base_key(_spec())
    assert dib_base.base_key(_spec(mirror_state=[(STATE[0][0], "b" * 64)])) != key
    assert dib_base.base_key(_spec(recipe_packages=SHARED[1:])) != key  # cloud-init no longer shared
    assert dib_base.base_key(_spec(release="trixie")) != key
    assert dib_base.base_key(_spec(arch=Arch.PPC64LE)) != key
    # A changed root.d script of an element (a copy of Kiln's elements with one script edited).
    elements = tmp_path / "elements"
    shutil.copytree(PACKAGE_ROOT / "elements", elements)
    assert dib_base.base_key(_spec(elements_dir=elements)) == key
    extra = elements / "kiln-extra-ca" / "root.d"
    extra.mkdir()
    (extra / "60-site-tweak").write_text("#!/bin/bash\necho tweak\n")
    assert dib_base.base_key(_spec(elements_dir=elements)) != key
    # ... and a changed recording script (the stage's version).
    shutil.rmtree(extra)
    script = elements / dib_base.ELEMENT / "root.d" / f"76-{dib_base.ELEMENT}"
    script.write_text(script.read_text() + "\n# changed\n")
    assert dib_base.base_key(_spec(elements_dir=elements)) != key


def test_an_element_with_root_d_scripts_changes_the_base_and_one_without_does_not():
    key = dib_base.base_key(_spec())
    # cloud-init-datasources has no root.d/environment.d script: dropping it keeps the base
    assert dib_base.base_key(_spec(elements=[e for e in ELEMENTS if e != "cloud-init-datasources"])) == key
    # ubuntu's distro element brings other root.d scripts: another base
    assert dib_base.base_key(_spec(elements=["ubuntu-minimal", *ELEMENTS[1:]])) != key


def test_only_variables_the_tree_scripts_read_are_inputs():
    key = dib_base.base_key(_spec())
    assert dib_base.base_key(_spec(env={**ENV, "DIB_CLOUD_INIT_DATASOURCES": "None"})) == key
    assert dib_base.base_key(_spec(env={**ENV, "TMPDIR": "/elsewhere"})) == key  # a per-run path
    assert dib_base.base_key(_spec(env={**ENV, "DIB_DEBIAN_COMPONENTS": "main,contrib"})) != key
    assert dib_base.base_key(_spec(env={**ENV, "DIB_RELEASE": "trixie"})) != key


def _element_with_environment(elements: Path, text: str) -> None:
    folder = elements / "kiln-extra-ca" / "environment.d"
    folder.mkdir(exist_ok=True)
    (folder / "20-site-defaults.bash").write_text(text)


def test_environment_d_files_count_by_what_they_set_that_root_d_scripts_read(tmp_path):
    spec = _spec()
    assert not [s for s, _ in spec.scripts if "/environment.d/" in s]  # sourced here: keyed by effect
    key = dib_base.base_key(spec)
    elements = tmp_path / "elements"
    shutil.copytree(PACKAGE_ROOT / "elements", elements)
    # a variable no root.d script reads (IPA's elements set many of these): the same base
    _element_with_environment(elements, "export IPA_REMOVE_FIRMWARE=${IPA_REMOVE_FIRMWARE:-amdgpu}\n")
    assert dib_base.base_key(_spec(elements_dir=elements)) == key
    # a default the debootstrap root.d script reads: a new base, though the recipe's env is unchanged
    _element_with_environment(elements, "export DIB_DEBIAN_COMPONENTS=main,contrib\n")
    changed = _spec(elements_dir=elements)
    assert dict(changed.env)["DIB_DEBIAN_COMPONENTS"] == "main,contrib"
    assert dib_base.base_key(changed) != key
    # a file that cannot be sourced here: its text is keyed instead (a base of its own, never a wrong one)
    _element_with_environment(elements, "exit 1\n")
    failed = _spec(elements_dir=elements)
    assert "kiln-extra-ca/environment.d/20-site-defaults.bash" in dict(failed.scripts)
    assert dib_base.base_key(failed) != key


def test_elements_and_packages_of_a_disk_image_create_argv():
    argv = ["disk-image-create", "-a", "amd64", "-o", "image/x", "-t", "qcow2,raw", "--image-size", "4",
            "-p", "cloud-init,curl", "debian-minimal", "vm", dib_base.ELEMENT]  # fmt: skip
    assert elements_and_packages(argv) == (["debian-minimal", "vm"], ["cloud-init", "curl"])


# --- the store -------------------------------------------------------------------------------------------


def _record(store: dib_base.BaseStore, key: str, size: int, used: float) -> None:
    store.prepare(key).write_bytes(b"x" * size)
    store.commit(key, _spec(), 1.0)
    record = store.directory(key) / dib_base.RECORD
    os.utime(record, (used, used))


def test_a_half_written_base_is_never_reused(tmp_path):
    store = dib_base.BaseStore(tmp_path)
    store.prepare("k").write_bytes(b"tree")  # no record: the build that wrote it did not finish
    assert not store.has("k")
    store.commit("k", _spec(), 1.0)
    assert store.has("k")
    assert json.loads((tmp_path / "k" / dib_base.RECORD).read_text())["spec"]["packages"]


def test_the_least_recently_used_bases_are_evicted_over_the_limit(tmp_path):
    store = dib_base.BaseStore(tmp_path)
    now = time.time()
    _record(store, "old", 4000, now - 300)
    one = sum(f.stat().st_size for f in (tmp_path / "old").iterdir())  # a tree and its record
    store.max_bytes = 2 * one + one // 2  # room for two bases, not three
    _record(store, "used", 4000, now - 100)
    assert store.evicted == []
    store.touch("used")  # reused just now: the newest
    store.prepare("new").write_bytes(b"x" * 4000)
    store.commit("new", _spec(), 1.0)
    assert store.evicted == ["old"]
    assert store.has("used") and store.has("new") and not (tmp_path / "old").exists()


# --- the spot ---------------------------------------------------------------------------------------------


def test_the_spot_points_at_the_chosen_tree_and_a_fresh_debootstrap_is_kept_as_the_plain_one(tmp_path):
    name = dib_base.spot_name("debian", "bookworm", Arch.X86_64)
    assert name == "debootstrap-debian-bookworm-amd64.tar.gz"
    (tmp_path / name).write_bytes(b"plain debootstrap")  # what DIB wrote after debootstrapping
    tree = tmp_path / "tree.tar.gz"
    tree.write_bytes(b"base tree")
    assert dib_base.point_spot(tmp_path, name, tree) == tree
    assert (tmp_path / name).read_bytes() == b"base tree"
    assert (tmp_path / "kiln-plain" / name).read_bytes() == b"plain debootstrap"
    # a build without a base (cache off, or recording) starts from the plain one, never a tree
    assert dib_base.point_spot(tmp_path, name, None) == tmp_path / "kiln-plain" / name
    assert (tmp_path / name).read_bytes() == b"plain debootstrap"
    dib_base.settle_spot(tmp_path, name)
    assert not (tmp_path / name).exists() and not (tmp_path / name).is_symlink()
    assert tree.read_bytes() == b"base tree"  # the store's tree is never written through the link


# --- the phases -------------------------------------------------------------------------------------------


def test_phase_times_come_from_the_dib_run_parts_lines():
    now = [0.0]
    clock = PhaseClock(lambda: now[0])
    for at, line in [
        (1.0, "x | dib-run-parts Running /tmp/dib_build.a/hooks/root.d/08-debootstrap"),
        (5.0, "x | dib-run-parts Running /tmp/dib_build.a/hooks/root.d/75-debian-minimal-baseinstall"),
        (12.0, "x | dib-run-parts Running /tmp/in_target.d/install.d/01-package-installs"),
        (40.0, "x | Converting image using qemu-img convert"),
    ]:
        now[0] = at
        clock.line(line)
    now[0] = 45.0
    assert clock.durations() == {"root.d": 11.0, "install.d": 28.0, "qemu-img convert": 5.0}


# --- the backend: two builds needing one missing base ---------------------------------------------------


def _target(target_id: str = "debian-12:bookworm:x86_64") -> Target:
    workspace = Workspace(PACKAGE_ROOT)
    targets, problems = load_targets(
        [workspace.recipes_dir / "guest", workspace.recipes_dir / "ipa"], workspace
    )
    assert problems == []
    return {t.id: t for t in targets}[target_id]


def _job(target: Target, tmp_path: Path, name: str, cache: Path) -> BuildJob:
    root = tmp_path / name
    return BuildJob(
        target=target,
        rendered={f.path: f.content for f in render_target(target, PACKAGE_ROOT / "templates")},
        render_dir=root / "render",
        out_dir=root / "out",
        tmp_dir=root / "tmp",
        build_root=root,
        workspace_root=PACKAGE_ROOT,
        elements_dir=PACKAGE_ROOT / "elements",
        cache_dir=cache,
        site=SiteConfig(),
        host=HostFacts(arch=Arch.X86_64, placement="native"),
    )


@dataclass
class FakeDib(Runner):
    """Plays disk-image-create: records the base tree when asked (slowly, so that a second build
    arrives while the first records), and writes the image."""

    modes: list[str] = field(default_factory=list)

    def run(self, argv: Any, *, cwd: Any = None, env: Any = None, log_path: Any = None, **_: Any) -> Any:
        env = dict(env or {})
        mode = env["KILN_BASE_TREE_MODE"]
        self.modes.append(mode)
        if mode == "record":
            time.sleep(0.5)
            Path(env["KILN_BASE_TREE_OUT"]).write_bytes(b"tree")
        output = Path(cwd) / (argv[argv.index("-o") + 1] + ".qcow2")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"QFI\xfb")
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text("")


@pytest.fixture
def steady_mirror(monkeypatch):
    monkeypatch.setattr(
        dib_base, "mirror_state", lambda suites, timeout_s=30.0: [(s, "a" * 64) for s in suites]
    )


def test_two_concurrent_builds_needing_one_missing_base_build_it_once(tmp_path, steady_mirror):
    cache = tmp_path / "cache"
    backend = DibBackend()
    runner = FakeDib()
    target = _target()
    outcomes: dict[str, Any] = {}
    steps: list[str] = []

    def build(name: str) -> None:
        job = _job(target, tmp_path, name, cache)
        run = backend.plan(job)
        backend.run(run, job, runner, tmp_path / name / "build.log", steps.append)
        outcomes[name] = read_build_facts(job.out_dir)["base"]

    threads = [threading.Thread(target=build, args=(n,)) for n in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(runner.modes) == ["record", "reuse"]  # built once; the other waited, then reused it
    assert sorted(o["state"] for o in outcomes.values()) == ["recorded", "reused"]
    assert outcomes["first"]["digest"] == outcomes["second"]["digest"]
    digest = outcomes["first"]["digest"][:12]
    # what kiln build says: which base, reused or recorded, and the DIB phase times
    assert f"debian-12:bookworm:x86_64: base tree {digest} not cached: recording it in this build" in steps
    assert any(s.startswith(f"debian-12:bookworm:x86_64: base tree {digest} reused") for s in steps)
    assert sum(s.startswith("debian-12:bookworm:x86_64: dib phases: ") for s in steps) == 2
    spot = cache / "dib" / "amd64" / dib_base.spot_name("debian", "bookworm", Arch.X86_64)
    assert not spot.is_symlink()  # nothing left pointing at a tree after the runs


def test_a_failed_build_leaves_no_base_to_reuse(tmp_path, steady_mirror):
    cache = tmp_path / "cache"
    backend = DibBackend()

    @dataclass
    class FailingDib(FakeDib):
        def run(self, argv: Any, **kwargs: Any) -> Any:
            env = kwargs["env"]
            Path(env["KILN_BASE_TREE_OUT"]).write_bytes(b"tree")  # recorded, then the build failed
            raise RuntimeError("DIB failed in install.d")

    job = _job(_target(), tmp_path, "failed", cache)
    with pytest.raises(RuntimeError):
        backend.run(backend.plan(job), job, FailingDib(), tmp_path / "failed.log", lambda _: None)
    assert list((cache / "dib-base" / "amd64").iterdir()) == []
    runner = FakeDib()
    job = _job(_target(), tmp_path, "again", cache)
    backend.run(backend.plan(job), job, runner, tmp_path / "again.log", lambda _: None)
    assert runner.modes == ["record"]


def test_the_base_cache_switched_off_in_site_yaml_adds_no_element_and_records_nothing(
    tmp_path, steady_mirror
):
    site = SiteConfig.model_validate({"dib": {"base_cache": {"enabled": False}}})
    job = replace(_job(_target(), tmp_path, "off", tmp_path / "cache"), site=site)
    run = DibBackend().plan(job)
    assert dib_base.ELEMENT not in run.commands[0].argv

    @dataclass
    class NoModeDib(FakeDib):
        def run(self, argv: Any, **kwargs: Any) -> Any:
            kwargs["env"] = {"KILN_BASE_TREE_MODE": "unset", **kwargs["env"]}
            return FakeDib.run(self, argv, **kwargs)

    runner = NoModeDib()
    DibBackend().run(run, job, runner, tmp_path / "off.log", lambda _: None)
    assert read_build_facts(job.out_dir)["base"]["state"] == "off"
    assert not (tmp_path / "cache" / "dib-base").exists()


# --- IPA ramdisks on the same base ------------------------------------------------------------------------


def _base_of(backend: DibBackend, job: BuildJob) -> dib_base.BaseSpec:
    command = backend.plan(job).commands[0]
    inputs = backend.base_inputs(command)
    return dib_base.base_spec(
        distro="debian",
        release=job.target.release,
        arch=job.target.arch,
        elements=inputs.elements,
        elements_dir=job.elements_dir,
        elements_path=inputs.elements_path,
        env=inputs.env,
        recipe_packages=inputs.packages,
        shared_packages=job.site.dib.base_cache.packages,
        distro_elements={"debian-minimal", "debootstrap"},
        mirror_state=STATE,
    )


def test_an_ipa_ramdisk_records_and_reuses_the_base_through_ironic_python_agent_builder(tmp_path):
    job = _job(_target("ipa-bookworm:bookworm:x86_64"), tmp_path, "ipa", tmp_path / "cache")
    argv = IpaBackend().plan(job).commands[0].argv
    # ironic-python-agent-builder passes -e elements on to disk-image-create; the distribution stays last
    assert argv[-3:] == ("-e", dib_base.ELEMENT, "debian-minimal")
    inputs = IpaBackend().base_inputs(IpaBackend().plan(job).commands[0])
    assert inputs.elements[:2] == ["ironic-python-agent-ramdisk", "debian-minimal"]
    assert dib_base.ELEMENT not in inputs.elements
    assert inputs.elements_path.endswith("ironic-python-agent-builder/dib")
    off = replace(job, site=SiteConfig.model_validate({"dib": {"base_cache": {"enabled": False}}}))
    assert dib_base.ELEMENT not in IpaBackend().plan(off).commands[0].argv


def test_a_guest_image_and_an_ipa_ramdisk_share_the_base_where_their_inputs_agree(tmp_path):
    ipa = _base_of(IpaBackend(), _job(_target("ipa-bookworm:bookworm:x86_64"), tmp_path, "ipa", tmp_path))
    guest_job = _job(_target(), tmp_path, "guest", tmp_path)
    guest = _base_of(DibBackend(), guest_job)
    # IPA's environment.d files set nothing the root.d scripts read differently: only the packages
    # the guest recipe shares (cloud-init, ...) and the ramdisk does not ask for keep them apart
    assert (guest.scripts, guest.env) == (ipa.scripts, ipa.env)
    assert set(ipa.packages) < set(guest.packages) and "cloud-init" in guest.packages
    no_shared = replace(guest_job, site=SiteConfig.model_validate({"dib": {"base_cache": {"packages": []}}}))
    assert dib_base.base_key(_base_of(DibBackend(), no_shared)) == dib_base.base_key(ipa)
