"""plan_scale: how long Kiln takes to plan and render 2,000 targets, against parsing the YAML alone.

Generates, in a temporary workspace (a copy of this checkout's templates/, elements/ and
recipes/defaults.yaml), 1,000 recipe files with two arches each (x86_64, ppc64le) = 2,000 targets,
mixing the four kinds roughly like the example recipes: mostly DIB guest images, some containers,
rpm rebuilds (of a source file in the workspace) and IPA ramdisks, and a few Packer guest images
that build on DIB ones. Then, in one process, it times:

* baseline: reading and parsing the same 1,000 files with PyYAML (``yaml.load`` with
  ``builder.yamlsource._Loader``, the PyYAML loader Kiln builds on: ``CSafeLoader`` when libyaml is
  there; Kiln composes with a subclass that resolves tags faster, the baseline keeps PyYAML's own);
* kiln: what ``kiln plan`` + ``kiln render`` do, in memory: ``load_targets`` + a fresh sqlite
  ledger's ``states()`` + ``make_plan`` + ``render_target`` of every target;
* kiln + write (secondary): the same, also writing every target's files and ``target.json`` to a
  fresh output directory, like ``kiln render -o``.

Each is the best (minimum) of ``--repeats`` runs. Kiln's in-process caches (Jinja environment,
template closures) are cleared before each Kiln run, so every run is like a fresh ``kiln`` process
minus interpreter start-up and imports. How many cyclic-GC collections the best Kiln run paid for is
reported too: with the CLI's GC settings a collection costs a few hundredths of a second.

    .venv/bin/python bench/plan_scale.py            # human report + one JSON line
    .venv/bin/python bench/plan_scale.py --json     # the JSON line only
    .venv/bin/python bench/plan_scale.py --check    # exit 1 unless under 2 s and under 3x baseline
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder import render as render_mod  # noqa: E402
from builder import yamlsource  # noqa: E402
from builder.cli import tune_gc  # noqa: E402
from builder.ledger import Ledger  # noqa: E402
from builder.pipeline.graph import load_targets  # noqa: E402
from builder.pipeline.plan import make_plan  # noqa: E402
from builder.render import render_target, write_rendered  # noqa: E402
from builder.workspace import Workspace  # noqa: E402

# The targets.
MAX_SECONDS = 2.0
MAX_RATIO = 3.0

ARCHES = "[x86_64, ppc64le]"

# How many of each, per 1,000 recipes (the examples: mostly DIB guests, one of each of the rest).
MIX = (("dib", 600), ("container", 150), ("rpm", 100), ("ipa", 100), ("packer", 50))

GUEST_DISTROS = {
    "debian": ["bookworm", "bullseye", "trixie"],
    "ubuntu": ["jammy", "noble", "focal"],
    "centos": ["9-stream", "10-stream"],
    "rocky": ["8", "9"],
    "almalinux": ["8", "9"],
    "fedora": ["39", "40", "41"],
}
DIB_ELEMENTS = [
    "vm",
    "cloud-init-datasources",
    "growroot",
    "openssh-server",
    "block-device-efi",
    "dhcp-all-interfaces",
    "devuser",
    "selinux-permissive",
    "install-static",
    "package-installs",
    "pip-and-virtualenv",
    "simple-init",
]
PACKAGES = [
    "cloud-init",
    "qemu-guest-agent",
    "ifupdown",
    "isc-dhcp-client",
    "curl",
    "vim",
    "htop",
    "tmux",
    "git",
    "python3",
    "python3-pip",
    "chrony",
    "rsync",
    "jq",
    "lsof",
    "strace",
    "tcpdump",
    "nfs-common",
    "lvm2",
    "xfsprogs",
]
CONTAINER_PACKAGES = [
    "ca-certificates",
    "libcudart11.0",
    "python3",
    "python3-numpy",
    "libgomp1",
    "libopenblas0",
    "curl",
    "git",
    "build-essential",
    "cmake",
]


def _flow(items: list[Any]) -> str:
    return "[" + ", ".join(json.dumps(i) if isinstance(i, str) and " " in i else str(i) for i in items) + "]"


def _dib(rng: random.Random, name: str, index: int) -> str:
    distro = rng.choice(sorted(GUEST_DISTROS))
    release = rng.choice(GUEST_DISTROS[distro])
    elements = rng.sample(DIB_ELEMENTS, rng.randint(2, 6))
    packages = rng.sample(PACKAGES, rng.randint(2, 8))
    formats = rng.choice([["qcow2"], ["qcow2"], ["raw"], ["qcow2", "raw"]])
    lines = [
        "# yaml-language-server: $schema=../../schemas/recipe.schema.json",
        f"# {distro} {release} cloud guest #{index}, built with diskimage-builder.",
        f"name: {name}",
        "kind: guest-image",
        f"description: {distro.capitalize()} {release} cloud image number {index}",
        f"arches: {ARCHES}",
        "build:",
        "  builder: dib",
        f"  distro: {distro}",
        f'  release: "{release}"',
        f"  elements: {_flow(elements)}",
        f"  packages: {_flow(packages)}",
        f"  formats: {_flow(formats)}",
    ]
    if rng.random() < 0.3:
        lines.append(f"  size_gb: {rng.choice([4, 8, 10, 20])}")
    if rng.random() < 0.6:
        lines += [
            "  env:",
            '    DIB_CLOUD_INIT_DATASOURCES: "NoCloud, ConfigDrive, OpenStack, None"',
            f'    DIB_IMAGE_CACHE_TAG: "bench-{index}"',
        ]
    lines += ["verify:", "  boot:", f"    timeout_s: {rng.choice([600, 900, 1200])}"]
    if rng.random() < 0.5:
        lines += ["    checks:", f'      - "test -d /etc/cloud && echo {index}"']
    lines += [
        "publish:",
        "  glance:",
        f"    visibility: {rng.choice(['public', 'private', 'shared'])}",
        "    properties:",
        f"      os_distro: {distro}",
        f'      os_version: "{release}"',
    ]
    return "\n".join(lines) + "\n"


def _packer(rng: random.Random, name: str, index: int, base: str) -> str:
    return (
        "# yaml-language-server: $schema=../../schemas/recipe.schema.json\n"
        f"# A Packer build on top of the DIB-built {base} image.\n"
        f"name: {name}\n"
        "kind: guest-image\n"
        f"description: {base} with a provisioning marker, built by Packer (#{index})\n"
        f"arches: {ARCHES}\n"
        "build:\n"
        "  builder: packer\n"
        "  distro: debian\n"
        "  release: bookworm\n"
        "  base:\n"
        f"    recipe: {base}\n"
        "  ssh_username: debian\n"
        f"  memory_mb: {rng.choice([1024, 2048, 4096])}\n"
        "  provisioners:\n"
        "    - shell:\n"
        f"        - \"echo 'provisioned {index}' | sudo tee /etc/kiln-provisioned\"\n"
        "    - script: ../../files/packer/harden-ssh.sh\n"
        "verify:\n"
        "  boot:\n"
        "    checks:\n"
        '      - "test -f /etc/kiln-provisioned"\n'
        "publish:\n"
        "  glance:\n"
        "    properties:\n"
        "      os_distro: debian\n"
        '      os_version: "12"\n'
    )


def _container(rng: random.Random, name: str, index: int) -> str:
    distro = rng.choice(["debian", "ubuntu"])
    if distro == "debian":
        release, cuda = "bookworm", rng.choice(["11.8", None])
    else:
        release, cuda = rng.choice(["jammy", "focal"]), rng.choice(["11.8", "12.2", "12.4", None])
    packages = rng.sample(CONTAINER_PACKAGES, rng.randint(1, 5))
    lines = [
        "# yaml-language-server: $schema=../../schemas/recipe.schema.json",
        f"# Container image #{index} for x86_64 and ppc64le, one multi-arch tag.",
        f"name: {name}",
        "kind: container",
        f"description: Runtime image {index} on {distro} {release}",
        f"arches: {ARCHES}",
        "build:",
        f"  distro: {distro}",
        f"  release: {release}",
    ]
    if cuda:
        lines.append(f'  cuda: "{cuda}"')
    lines += [
        f"  components: {_flow(['main', 'contrib', 'non-free'] if distro == 'debian' else ['main'])}",
        f"  packages: {_flow(packages)}",
        "  cmd: [bash]",
        "  labels:",
        f'    org.example.team: "team-{index % 17}"',
        "verify:",
        "  commands:",
        '    - [sh, -c, "true"]',
        "publish:",
        "  registry:",
        f"    repository: kiln/{name}",
        f'    tags: ["{cuda or "cpu"}-{release}"]',
    ]
    return "\n".join(lines) + "\n"


def _rpm(rng: random.Random, name: str, index: int) -> str:
    lines = [
        "# yaml-language-server: $schema=../../schemas/recipe.schema.json",
        f"# Rebuild SRPM #{index} for ppc64le and x86_64 with an extra patch.",
        f"name: {name}",
        "kind: rpm-rebuild",
        f"description: bench package {index} rebuilt with Kiln's patch",
        f"arches: {ARCHES}",
        "build:",
        "  source:",
        "    path: ../../files/srpms/bench-1.0-1.src.rpm",
        f"  distro: {rng.choice(['el', 'el', 'fedora'])}",
        f'  release: "{rng.choice(["8", "9", "10"])}"',
        f"  release_suffix: .kiln{index % 5 + 1}",
        "  patches:",
        "    - ../../files/rpm/bench/0001-bench.patch",
    ]
    if rng.random() < 0.5:
        lines += ["  without: [tests, docs]", "  run_check: false"]
    if rng.random() < 0.3:
        lines += ["  defines:", f'    _bench_index: "{index}"']
    lines += ["verify:", "  install: true", "publish:", "  repo:", "    repo: kiln"]
    return "\n".join(lines) + "\n"


def _ipa(rng: random.Random, name: str, index: int) -> str:
    distro = rng.choice(["debian", "ubuntu", "centos"])
    release = {"debian": "bookworm", "ubuntu": "jammy", "centos": "9-stream"}[distro]
    lines = [
        "# yaml-language-server: $schema=../../schemas/recipe.schema.json",
        f"# Ironic Python Agent ramdisk #{index} on {distro} {release}.",
        f"name: {name}",
        "kind: ipa-ramdisk",
        f"description: IPA ramdisk {index} for bare-metal provisioning",
        f"arches: {ARCHES}",
        "build:",
        f"  distro: {distro}",
        f"  release: {release}",
        f"  iso: {rng.choice(['true', 'false'])}",
        f"  compression: {rng.choice(['gzip', 'xz'])}",
        f"  components: {_flow(rng.choice([['main'], ['main', 'non-free-firmware']]))}",
    ]
    if rng.random() < 0.4:
        lines.append(f'  ipa_version: "9.{index % 12}.0"')
    if rng.random() < 0.4:
        extra = rng.sample(["dynamic-login", "devuser", "extra-hardware"], 2)
        lines.append(f"  elements: {_flow(extra)}")
    lines += [
        "verify:",
        "  boot:",
        "    timeout_s: 1200",
        "    memory_mb: 3072",
        "publish:",
        "  glance:",
        "    visibility: public",
    ]
    return "\n".join(lines) + "\n"


def make_workspace(root: Path, recipes: int, seed: int = 1) -> list[Path]:
    """A workspace under ``root`` with ``recipes`` generated recipe files; returns their paths."""
    for name in ("templates", "elements"):
        shutil.copytree(REPO / name, root / name)
    (root / "recipes").mkdir()
    shutil.copy2(REPO / "recipes" / "defaults.yaml", root / "recipes" / "defaults.yaml")
    files = root / "files"
    (files / "srpms").mkdir(parents=True)
    (files / "srpms" / "bench-1.0-1.src.rpm").write_bytes(b"\xed\xab\xee\xdb" + bytes(range(256)) * 64)
    (files / "rpm" / "bench").mkdir(parents=True)
    (files / "rpm" / "bench" / "0001-bench.patch").write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    (files / "packer").mkdir()
    (files / "packer" / "harden-ssh.sh").write_text("#!/bin/sh\nset -eu\necho hardened\n")

    rng = random.Random(seed)
    counts = [(kind, round(n * recipes / 1000)) for kind, n in MIX]
    counts[0] = (counts[0][0], recipes - sum(n for _, n in counts[1:]))  # dib takes the rounding
    paths: list[Path] = []
    dib_names: list[str] = []
    subdir = {"dib": "guest", "packer": "guest", "container": "containers", "rpm": "rpm", "ipa": "ipa"}
    index = 0
    for kind, n in counts:
        for _ in range(n):
            index += 1
            name = f"{kind}-{rng.choice(['alpha', 'beta', 'gamma', 'delta', 'omega'])}-{index:04d}"
            if kind == "dib":
                text = _dib(rng, name, index)
                dib_names.append(name)
            elif kind == "packer":
                text = _packer(rng, name, index, rng.choice(dib_names))
            elif kind == "container":
                text = _container(rng, name, index)
            elif kind == "rpm":
                text = _rpm(rng, name, index)
            else:
                text = _ipa(rng, name, index)
            path = root / "recipes" / subdir[kind] / f"{name}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            paths.append(path)
    return paths


# --- the measured work ---------------------------------------------------------------------------------


def baseline(paths: list[Path]) -> int:
    """Read and parse every recipe file with PyYAML, nothing else."""
    loader = yamlsource._Loader
    n = 0
    for path in paths:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # a safe loader
        n += len(data)
    return n


def baseline_safe_load(paths: list[Path]) -> int:
    """The same with ``yaml.safe_load``: PyYAML's default safe entry point (pure-Python parser)."""
    n = 0
    for path in paths:
        n += len(yaml.safe_load(path.read_text(encoding="utf-8")))
    return n


def _clear_kiln_caches() -> None:
    render_mod.clear_caches()


def kiln(workspace: Workspace, ledger_path: Path, out_dir: Path | None) -> int:
    """``kiln plan`` + ``kiln render``: targets, ledger states, plan, every target rendered."""
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    if problems:
        raise SystemExit("generated recipes are invalid:\n" + "\n".join(str(p) for p in problems[:20]))
    with Ledger(ledger_path) as ledger:
        entries = make_plan(targets, ledger.states())
    templates_dir = workspace.templates_dir
    size = 0
    for entry in entries:
        target = entry.target
        files = render_target(target, templates_dir)
        size += sum(len(f.content) for f in files)
        if out_dir is not None:  # what cmd_render does besides rendering
            target_dir = out_dir / target.slug
            manifest = {
                **target.summary(),
                "inputs": list(target.inputs),
                "files": sorted(f.path for f in files),
            }
            write_rendered(files, target_dir)
            (target_dir / "target.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if len(entries) != len(targets):
        raise SystemExit("plan lost targets")
    return len(entries)


class GcCounter:
    """Counts the cyclic GC's collections (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.count += 1


def best_of(repeats: int, run: Callable[[int], Any]) -> tuple[float, list[float], Any]:
    times = []
    result = None
    for i in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = run(i)
        times.append(time.perf_counter() - start)
    return min(times), times, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", type=int, default=1000, help="recipe files (2 targets each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; best is kept")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--no-write", action="store_true", help="skip the plan + render + write measurement")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless kiln is under {MAX_SECONDS:g} s and under {MAX_RATIO:g}x the baseline",
    )
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.json else print
    # The kiln CLI tunes the cyclic GC at start-up (builder.cli.tune_gc); apply the same here, to
    # the baselines too, so that every figure is measured under the same collector settings.
    tune_gc()

    with tempfile.TemporaryDirectory(prefix="kiln-plan-scale-") as tmp:
        root = Path(tmp).resolve()
        paths = make_workspace(root, args.recipes)
        workspace = Workspace(root)
        loader_name = yamlsource._Loader.__name__
        say(f"workspace: {root} ({len(paths)} recipe files)")

        base_s, base_all, _ = best_of(args.repeats, lambda i: baseline(paths))
        say(f"baseline  (PyYAML {loader_name}, {len(paths)} files): best {base_s:.3f} s  {_runs(base_all)}")
        safe_s, safe_all, _ = best_of(args.repeats, lambda i: baseline_safe_load(paths))
        say(f"baseline2 (yaml.safe_load, pure Python): best {safe_s:.3f} s  {_runs(safe_all)}")

        gc_counter = GcCounter()
        kiln_gc: list[int] = []  # collections during each in-memory kiln run

        def run_kiln(i: int, write: bool) -> int:
            _clear_kiln_caches()
            out = root / "out" / f"{int(write)}-{i}" if write else None
            before = gc_counter.count
            n = kiln(workspace, root / ".kiln" / f"ledger-{int(write)}-{i}.sqlite", out)
            if not write:
                kiln_gc.append(gc_counter.count - before)
            return n

        kiln_s, kiln_all, n_targets = best_of(args.repeats, lambda i: run_kiln(i, False))
        best_gc = kiln_gc[kiln_all.index(kiln_s)]
        say(f"kiln plan + render, in memory ({n_targets} targets): best {kiln_s:.3f} s  {_runs(kiln_all)}")
        say(f"  cyclic GC collections during that run: {best_gc} (all runs: {kiln_gc})")
        write_s = write_all = None
        if not args.no_write:
            write_s, write_all, _ = best_of(args.repeats, lambda i: run_kiln(i, True))
            say(f"kiln plan + render + write files: best {write_s:.3f} s  {_runs(write_all)}")

    ratio = kiln_s / base_s
    ok = kiln_s < MAX_SECONDS and ratio < MAX_RATIO
    result = {
        "benchmark": "plan_scale",
        "recipes": len(paths),
        "targets": n_targets,
        "repeats": args.repeats,
        "yaml_loader": loader_name,
        "baseline_s": round(base_s, 4),
        "kiln_s": round(kiln_s, 4),
        "kiln_targets_per_s": round(n_targets / kiln_s, 1),
        "kiln_gc_collections": best_gc,
        "ratio": round(ratio, 2),
        "baseline_safe_load_s": round(safe_s, 4),
        "ratio_vs_safe_load": round(kiln_s / safe_s, 2),
        "kiln_write_s": round(write_s, 4) if write_s is not None else None,
        "kiln_write_targets_per_s": round(n_targets / write_s, 1) if write_s else None,
        "targets_met": ok,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    say(
        f"kiln: {n_targets / kiln_s:,.0f} targets/s; kiln/baseline = {ratio:.2f}x "
        f"(vs yaml.safe_load: {kiln_s / safe_s:.2f}x) "
        f"(targets: < {MAX_SECONDS:g} s, < {MAX_RATIO:g}x) -> {'met' if ok else 'MISSED'}"
    )
    print(json.dumps(result, sort_keys=True))
    return 1 if args.check and not ok else 0


def _runs(times: list[float]) -> str:
    return "(runs: " + ", ".join(f"{t:.3f}" for t in times) + ")"


if __name__ == "__main__":
    sys.exit(main())
