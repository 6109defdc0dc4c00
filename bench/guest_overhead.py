"""guest_overhead: what Kiln adds to a real diskimage-builder build, and what its caches save.

Builds the example ``debian-12`` x86_64 guest image for real (``--no-verify --no-publish``) and
times, in one run:

* **overhead**: ``kiln build debian-12 --arch x86_64 --no-verify --no-publish`` as a subprocess,
  in a fresh build root and ledger (the whole process: interpreter start-up, recipes, render, host
  probes, shims, the DIB run, manifest, ledger), against a bare ``disk-image-create`` run straight
  through ``subprocess`` with exactly the argv, cwd and environment Kiln uses. Those come from Kiln
  itself: the bench renders the target and runs the DIB backend's plan (site environment, host
  shims, ``dib.plan_run``) with a runner that only replaces Kiln's subprocess handling (output
  pumped line by line into the log) by a plain ``Popen`` writing to a file. Both use the same build
  root path, so the two command lines are byte-identical; the bench compares them with the one
  Kiln writes at the top of its build log. Kiln's own time (the whole process minus the
  disk-image-create it ran, from the ``# exit 0 after Ns`` line of its log) is reported too: other
  load on the host moves the ratio far more than it moves that (a wait for Kiln's per-arch cache
  lock, while another x86_64 build holds it, would show up there too). Both use the same warm DIB
  cache (Kiln's, ``~/.cache/kiln/dib/amd64``); when it has no debootstrap tarball for the
  release, one untimed Kiln build fills it first. The order of the two alternates between repeats.
* **no-op rebuild**: the same ``kiln build`` again, same ledger and build root: the whole process
  is timed (3 runs, the slowest counts) and its JSON must say ``skipped`` or ``reused``.
* **warm vs cold cache**: a second recipe on the same base (``debian-12`` plus ``curl``, named
  ``debian-12-curl``, written into a temporary copy of the workspace) built by Kiln with an empty
  DIB cache (``HOME`` pointed at an empty directory: Kiln's cache is under ``~/.cache/kiln``) and
  with the normal, warm cache that the first recipe filled.

Each figure is the best (minimum) of ``--repeats`` runs (default 1: a build takes minutes). Dirty
pages are flushed (``sync``) before every timed build, and the 1-minute load average is recorded
around each one: other builds on the host slow these down.

    .venv/bin/python bench/guest_overhead.py              # report + one JSON line (~10 min)
    .venv/bin/python bench/guest_overhead.py --json       # the JSON line only
    .venv/bin/python bench/guest_overhead.py --check      # exit 1 if a target below is missed
    .venv/bin/python bench/guest_overhead.py --repeats 2 --no-cache-compare

Targets (from the issue): Kiln's build at most 1.05x the bare ``disk-image-create``, and a no-op
rebuild under 2 s for the whole process. The warm/cold cache ratio is reported, with no target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.backends.dib import dib_cache  # noqa: E402
from builder.core.kind import Target  # noqa: E402
from builder.errors import CommandFailed  # noqa: E402
from builder.host.run import KILL_GRACE_S, Runner, RunResult, stop_process_group  # noqa: E402
from builder.ledger import Ledger  # noqa: E402
from builder.pipeline.build import Pipeline, gather_host_facts  # noqa: E402
from builder.pipeline.graph import load_targets, select  # noqa: E402
from builder.render import render_target, write_rendered  # noqa: E402
from builder.siteconfig import SiteConfig, load_site  # noqa: E402
from builder.workspace import Workspace  # noqa: E402

# The targets.
MAX_RATIO = 1.05
MAX_NOOP_S = 2.0

RECIPE = "debian-12"
SECOND_RECIPE = "debian-12-curl"
ARCH = "x86_64"
NOOP_RUNS = 3
LOAD_WARN = 2.5  # 1-minute load average above which a figure is flagged (2 cores here)
KILN_TIMEOUT_S = 3600
APT_LOCK_HINT = (
    "another DIB build is using the same apt cache without Kiln's cache lock: DIB bind-mounts"
    " $DIB_IMAGE_CACHE/apt/<distro> as the chroot's /var/cache/apt/archives, so concurrent builds"
    " contend for apt's lock there; run the benchmark when no other build is running"
)


# --- helpers ---------------------------------------------------------------------------------------------


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _remove(path: Path) -> None:
    """Remove a build tree; DIB leaves root-owned files, so fall back to sudo when not root."""
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        subprocess.run(["sudo", "-n", "rm", "-rf", str(path)], check=True)


def _sync() -> None:
    subprocess.run(["sync"], check=False)


def _target(workspace: Workspace, recipe: str) -> Target:
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    if problems:
        raise SystemExit("recipes are invalid:\n" + "\n".join(str(p) for p in problems[:20]))
    [target] = select(targets, arch=ARCH, recipe=recipe)
    return target


def _dib_arch(target: Target, workspace: Workspace) -> str:
    files = render_target(target, workspace.templates_dir)
    argv = json.loads(next(f.content for f in files if f.path == "build.json"))["argv"]
    return argv[argv.index("-a") + 1]


def _dib_cache(workspace: Workspace, target: Target, work: Path) -> Path:
    """The DIB cache Kiln's DIB backend uses for this target (one per architecture, under ``$HOME``)."""
    with Ledger(work / "probe-ledger.sqlite") as ledger:
        return dib_cache(Pipeline(workspace, SiteConfig(), ledger).cache_dir, target.arch)


def _debootstrap_tarball(cache: Path, target: Target, workspace: Workspace) -> Path:
    # DIB's debootstrap element: $DIB_IMAGE_CACHE/debootstrap-$DISTRO_NAME-$DIB_RELEASE-$ARCH.tar.gz
    distro = target.build.distro
    return cache / f"debootstrap-{distro}-{target.release}-{_dib_arch(target, workspace)}.tar.gz"


def _kiln_log(build_root: Path, target: Target) -> Path | None:
    logs = sorted((build_root / target.slug / "logs").glob("build-*.log"))
    return logs[-1] if logs else None


def _log_command_and_dib_seconds(log: Path | None) -> tuple[str | None, float | None]:
    """The command line Kiln's runner wrote first in the log, and its ``# exit 0 after Ns`` line."""
    if log is None:
        return None, None
    text = log.read_text(errors="replace")
    first = text.split("\n", 1)[0]
    command = first[2:] if first.startswith("$ ") else None
    found = re.findall(r"^# exit 0 after ([0-9.]+)s$", text, re.MULTILINE)
    return command, float(found[-1]) if found else None


# --- Kiln as a subprocess ---------------------------------------------------------------------------------


def kiln_command(root: Path, site: Path, ledger: Path, recipe: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "builder",
        "--root",
        str(root),
        "--site",
        str(site),
        "--ledger",
        str(ledger),
        "build",
        recipe,
        "--arch",
        ARCH,
        "--no-verify",
        "--no-publish",
        "--json",
    ]


def run_kiln(argv: list[str], build_root: Path, home: Path | None = None) -> dict[str, Any]:
    """Run ``kiln build`` once; the whole process is timed. Returns its outcome and timings."""
    env = {**os.environ, "KILN_BUILD_ROOT": str(build_root)}
    if home is not None:
        env["HOME"] = str(home)
    load_before = _load()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=KILN_TIMEOUT_S)
    except BaseException:
        # Kiln turns SIGTERM into a clean stop of DIB's process group (unmounts, loop devices).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    seconds = time.perf_counter() - started
    try:
        [outcome] = json.loads(out)["targets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(
            f"kiln build printed no usable JSON (exit {proc.returncode}): {exc}\n{err[-3000:]}"
        ) from None
    if proc.returncode != 0 or outcome["status"] == "failed":
        error = str(outcome.get("error"))
        if "Could not get lock /var/cache/apt/archives/lock" in error:
            error += "\n" + APT_LOCK_HINT
        raise SystemExit(f"kiln build failed (exit {proc.returncode}): {error}\n{err[-3000:]}")
    return {
        "seconds": seconds,
        "status": outcome["status"],
        "inner_s": outcome["seconds"],  # Kiln's own figure for the target, without start-up
        "manifest": outcome["manifest"],
        "load_before": load_before,
        "load_after": _load(),
    }


# --- bare disk-image-create -------------------------------------------------------------------------------


@dataclass
class BareRunner(Runner):
    """Runs the command Kiln hands its runner with a plain ``Popen`` into a log file, and times it."""

    extra_env: dict[str, str] = field(default_factory=dict)
    # Shared with copies: backends hand the command to a copy of the runner (dataclasses.replace).
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        return self.record.get("seconds")

    @property
    def command(self) -> str | None:
        return self.record.get("command")

    def run(  # type: ignore[override]
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        log_path: Path | None = None,
        check: bool = True,
        stdin: bytes | None = None,
        kill_grace_s: float = KILL_GRACE_S,
    ) -> RunResult:
        args = [os.fspath(a) for a in argv]
        self.record["command"] = self.describe(args, cwd, env)
        # What Runner.run gives the child: its own environment (here: the same as the Kiln
        # subprocess's, KILN_BUILD_ROOT included) overlaid with the build's.
        full_env = {**os.environ, **self.extra_env, **(env or {})}
        assert log_path is not None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w", encoding="utf-8") as log:
            log.write(f"$ {self.command}\n")
            log.flush()
            started = time.perf_counter()
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode = proc.wait(timeout=timeout)
            except BaseException:
                stop_process_group(proc, kill_grace_s)
                raise
            self.record["seconds"] = time.perf_counter() - started
        if check and returncode != 0:
            raise CommandFailed(f"bare disk-image-create exited {returncode} (log: {log_path})")
        return RunResult(tuple(args), returncode, self.seconds, (), log_path)


def run_bare(workspace: Workspace, site_path: Path, target: Target, build_root: Path, ledger: Path) -> dict:
    """Render the target and let the DIB backend prepare and hand over its command (run bare)."""
    runner = BareRunner(extra_env={"KILN_BUILD_ROOT": str(build_root)})
    site = load_site(site_path, workspace.root)
    backend = target.spec.backend
    assert backend is not None
    with Ledger(ledger) as led:  # the pipeline's directories and job; nothing is recorded
        pipeline = Pipeline(workspace, site, led, runner=runner, build_root=build_root)
        host = gather_host_facts(target, site, backend, lambda _: None)
        rendered = render_target(target, workspace.templates_dir)
        write_rendered(rendered, pipeline.dirs.render(target))
        job = pipeline.job_for(target, {f.path: f.content for f in rendered}, host, {})
        load_before = _load()
        log = pipeline.dirs.logs(target) / "bare.log"
        artifacts = backend.run(backend.plan(job), job, runner, log, lambda _: None)
    assert runner.seconds is not None
    return {
        "seconds": runner.seconds,
        "command": runner.command,
        "image_bytes": sum(a.size for a in artifacts),
        "load_before": load_before,
        "load_after": _load(),
    }


# --- the second recipe ------------------------------------------------------------------------------------


def make_second_workspace(root: Path) -> Path:
    """A copy of templates/, elements/ and the recipes debian-12 needs, plus debian-12-curl."""
    for name in ("templates", "elements"):
        shutil.copytree(REPO / name, root / name)
    guest = root / "recipes" / "guest"
    guest.mkdir(parents=True)
    shutil.copy2(REPO / "recipes" / "defaults.yaml", root / "recipes" / "defaults.yaml")
    original = REPO / "recipes" / "guest" / f"{RECIPE}.yaml"
    shutil.copy2(original, guest / original.name)
    data = yaml.safe_load(original.read_text())
    data["name"] = SECOND_RECIPE
    data["description"] = f"{data['description']}, plus curl"
    data["build"]["packages"] = [*data["build"].get("packages", []), "curl"]
    text = "# yaml-language-server: $schema=../../schemas/recipe.schema.json\n"
    text += f"# {RECIPE} plus curl: a second recipe on the same base (bench/guest_overhead.py).\n"
    (guest / f"{SECOND_RECIPE}.yaml").write_text(text + yaml.safe_dump(data, sort_keys=False))
    return root


# --- the run ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each build; the best is kept")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless kiln/bare <= {MAX_RATIO:g} and a no-op rebuild takes < {MAX_NOOP_S:g} s",
    )
    parser.add_argument("--site", type=Path, help="site.yaml to build with (default: an empty one)")
    parser.add_argument("--no-cache-compare", action="store_true", help="skip the warm/cold cache builds")
    parser.add_argument("--warm-up", action="store_true", help="do the untimed warm-up build even if warm")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (images!)")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    work = Path(tempfile.mkdtemp(prefix="kiln-guest-overhead-")).resolve()
    try:
        result = _measure(args, work, say)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            _remove(work)
    print(json.dumps(result, sort_keys=True))
    return 1 if args.check and not result["targets_met"] else 0


def _measure(args: argparse.Namespace, work: Path, say: Any) -> dict[str, Any]:
    site_path = args.site.resolve() if args.site else work / "site.yaml"
    if not args.site:
        site_path.write_text("{}\n")
    workspace = Workspace(REPO)
    target = _target(workspace, RECIPE)
    cache = _dib_cache(workspace, target, work)
    tarball = _debootstrap_tarball(cache, target, workspace)
    build_root = work / "build"
    runs = 0

    def fresh_ledger() -> Path:
        nonlocal runs
        runs += 1
        return work / f"ledger-{runs}.sqlite"

    def reset() -> None:
        _remove(build_root)
        _sync()

    say(f"work dir: {work}; DIB cache: {cache}; load average {_load()}")
    warmed = False
    if args.warm_up or not tarball.exists():
        say(f"warm-up (untimed): {tarball.name} {'exists' if tarball.exists() else 'is missing'}")
        reset()
        run = run_kiln(kiln_command(REPO, site_path, fresh_ledger(), RECIPE), build_root)
        say(f"  warm-up build: {run['seconds']:.1f} s")
        warmed = True

    kiln_runs: list[dict] = []
    bare_runs: list[dict] = []
    noop_runs: list[dict] = []
    same_command: list[bool] = []
    for i in range(args.repeats):
        for which in ("kiln", "bare") if i % 2 == 0 else ("bare", "kiln"):
            reset()
            if which == "kiln":
                ledger = fresh_ledger()
                command = kiln_command(REPO, site_path, ledger, RECIPE)
                run = run_kiln(command, build_root)
                if run["status"] != "built":
                    raise SystemExit(f"expected a fresh build, kiln said {run['status']}")
                logged, dib_s = _log_command_and_dib_seconds(_kiln_log(build_root, target))
                run.update(command=logged, dib_s=dib_s)
                kiln_runs.append(run)
                say(
                    f"[{i + 1}] kiln build (whole process): {run['seconds']:.1f} s "
                    f"(disk-image-create inside: {dib_s or 0:.1f} s; load {run['load_before']} -> "
                    f"{run['load_after']})"
                )
                if not noop_runs:  # same ledger and build root, before anything is wiped
                    for _ in range(NOOP_RUNS):
                        noop = run_kiln(command, build_root)
                        noop_runs.append(noop)
                        say(f"    no-op rebuild: {noop['seconds']:.2f} s, status {noop['status']}")
            else:
                run = run_bare(workspace, site_path, target, build_root, work / "bare-ledger.sqlite")
                bare_runs.append(run)
                say(
                    f"[{i + 1}] bare disk-image-create: {run['seconds']:.1f} s "
                    f"(load {run['load_before']} -> {run['load_after']})"
                )
        same_command.append(kiln_runs[-1]["command"] == bare_runs[-1]["command"])
        if not same_command[-1]:
            say("WARNING: the bare command line differs from Kiln's:")
            say(f"  kiln: {kiln_runs[-1]['command']}\n  bare: {bare_runs[-1]['command']}")
    reset()

    kiln_s = min(r["seconds"] for r in kiln_runs)
    bare_s = min(r["seconds"] for r in bare_runs)
    ratio = kiln_s / bare_s
    noop_s = max(r["seconds"] for r in noop_runs)
    noop_ok = all(r["status"] in ("skipped", "reused") for r in noop_runs)
    overhead_ok = ratio <= MAX_RATIO
    noop_met = noop_ok and noop_s < MAX_NOOP_S
    own = [round(r["seconds"] - r["dib_s"], 2) for r in kiln_runs if r["dib_s"] is not None]
    if own:
        say(f"kiln's own time (process minus its disk-image-create): {min(own):.2f} s")
    say(
        f"overhead: kiln {kiln_s:.1f} s / bare {bare_s:.1f} s = {ratio:.3f}x "
        f"(target <= {MAX_RATIO:g}x) -> {'met' if overhead_ok else 'MISSED'}"
    )
    say(
        f"no-op rebuild: slowest of {len(noop_runs)} {noop_s:.2f} s, statuses "
        f"{sorted({r['status'] for r in noop_runs})} (target < {MAX_NOOP_S:g} s) -> "
        f"{'met' if noop_met else 'MISSED'}"
    )

    cache_result: dict[str, Any] | None = None
    if not args.no_cache_compare:
        cache_result = _cache_compare(args, work, site_path, fresh_ledger, say)

    loads = [r[k] for r in (*kiln_runs, *bare_runs) for k in ("load_before", "load_after")]
    if cache_result:
        loads += [r[k] for r in cache_result["runs"] for k in ("load_before", "load_after")]
    if max(loads) > LOAD_WARN:
        say(f"NOTE: the 1-minute load average reached {max(loads)} (> {LOAD_WARN}) during the builds")
    valid = all(same_command)
    return {
        "benchmark": "guest_overhead",
        "target": f"{RECIPE}:{target.release}:{ARCH}",
        "repeats": args.repeats,
        "warm_up_build": warmed,
        "overhead": {
            "kiln_s": round(kiln_s, 2),
            "bare_s": round(bare_s, 2),
            "ratio": round(ratio, 4),
            "kiln_runs": [round(r["seconds"], 2) for r in kiln_runs],
            "bare_runs": [round(r["seconds"], 2) for r in bare_runs],
            "kiln_dib_runs": [r["dib_s"] for r in kiln_runs],
            "kiln_inner_runs": [r["inner_s"] for r in kiln_runs],
            # Kiln's own time: the whole process minus the disk-image-create it ran (its log's
            # "# exit 0 after Ns"); unlike the ratio, other load on the host barely moves it.
            "kiln_own_s": min(own) if own else None,
            "kiln_own_runs": own,
            "same_command": valid,
            "image_bytes": bare_runs[-1]["image_bytes"],
        },
        "noop": {
            "seconds": round(noop_s, 3),
            "runs": [round(r["seconds"], 3) for r in noop_runs],
            "statuses": [r["status"] for r in noop_runs],
        },
        "cache": cache_result and {k: v for k, v in cache_result.items() if k != "runs"},
        "loadavg_max": max(loads),
        "loadavg_runs": loads,
        "targets_met": overhead_ok and noop_met and valid,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def _cache_compare(
    args: argparse.Namespace, work: Path, site_path: Path, fresh_ledger: Any, say: Any
) -> dict[str, Any]:
    root = make_second_workspace(work / "workspace")
    build_root = work / "build-second"
    cold_runs: list[dict] = []
    warm_runs: list[dict] = []
    for i in range(args.repeats):
        for which in ("cold", "warm") if i % 2 == 0 else ("warm", "cold"):
            _remove(build_root)
            _sync()
            command = kiln_command(root, site_path, fresh_ledger(), SECOND_RECIPE)
            if which == "cold":
                home = work / f"home-cold-{i}"  # an empty ~/.cache/kiln
                home.mkdir()
                run = run_kiln(command, build_root, home=home)
                cold_runs.append(run)
                _remove(home)
            else:
                run = run_kiln(command, build_root)
                warm_runs.append(run)
            if run["status"] != "built":
                raise SystemExit(f"expected a fresh build of {SECOND_RECIPE}, kiln said {run['status']}")
            say(
                f"[{i + 1}] {SECOND_RECIPE}, {which} DIB cache: {run['seconds']:.1f} s "
                f"(load {run['load_before']} -> {run['load_after']})"
            )
    _remove(build_root)
    cold_s = min(r["seconds"] for r in cold_runs)
    warm_s = min(r["seconds"] for r in warm_runs)
    say(f"cache: warm {warm_s:.1f} s / cold {cold_s:.1f} s = {warm_s / cold_s:.2f}x")
    return {
        "recipe": SECOND_RECIPE,
        "cold_s": round(cold_s, 2),
        "warm_s": round(warm_s, 2),
        "ratio_warm_over_cold": round(warm_s / cold_s, 3),
        "cold_runs": [round(r["seconds"], 2) for r in cold_runs],
        "warm_runs": [round(r["seconds"], 2) for r in warm_runs],
        "runs": [*cold_runs, *warm_runs],
    }


if __name__ == "__main__":
    sys.exit(main())
