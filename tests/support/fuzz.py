"""A seeded fuzzer for Kiln's input handling: mutated copies of the example recipes, run in-process
through the CLI (``validate --json``, ``plan --json``, ``render -o OUT --json``).

Every case is a pure function of ``(seed, index)``: the example recipes under ``recipes/`` with 1-4
mutations from five families, applied to one to three of the files:

- structure: delete, duplicate or move keys, swap a value's type, nest deeply, set the keys that
  drive expansion (kind, arches, matrix, build.base, extends) to odd values;
- YAML: aliases, merge keys (of themselves, chains, bombs), explicit tags on the wrong text,
  complex and duplicate keys, styles;
- bytes: flips, control characters, invalid UTF-8, truncation, BOMs, long lines, template syntax;
- paths: references with ``..``, absolute, ``~``, NUL, long components; planted symlinks (out of the
  workspace, loops), FIFOs, directories and long names among the recipes;
- output: planted symlinks in the render output directory.

Each case is classified (the worst of its commands):

- ``ok``: exit 0 with a JSON document;
- ``refusal``: exit 1, every problem carrying file and line;
- ``unlocated``: a refusal (exit 1, 2 or 3) whose problems lack a file:line;
- ``traceback``: an exception escaping ``main``, an exit code other than 0-3, a problem marked
  internal, or output that is not the promised JSON;
- ``escape``: a file outside the workspace and the output directory changed;
- ``hang``: a command over the time limit (or a worker that stopped answering).

``python -m tests.support.fuzz --cases N --out DIR`` runs N cases on every core, writes each failure
(its files, the commands, tracebacks) under DIR, and prints the totals; ``make fuzz N=100000``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import gc
import io
import itertools
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

from tests.support.worker_pool import run_cases

REPO = Path(__file__).resolve().parent.parent.parent
SEVERITY = ("ok", "refusal", "unlocated", "escape", "traceback", "hang")
FAILURES = ("unlocated", "escape", "traceback", "hang")

# A file outside the workspace and the output directory changed (by render, through a symlink).
ESCAPE = ("WroteOutside", "builder/cli/recipes.py", "cmd_render")
# Crash classes found in code that could not be changed at the time, as (exception, innermost
# builder/ file, function), e.g. ("NotADirectoryError", "builder/render.py", "write_rendered"):
# counted apart ("known-open"), not as failures, until fixed. Empty: none is open.
KNOWN_OPEN: frozenset[tuple[str, str, str]] = frozenset()


def _words(text: str) -> list[str]:
    return text.split()


# --- cases -----------------------------------------------------------------------------------------


@dataclass
class Plant:
    """Something put in the workspace besides recipe files: a symlink, FIFO, directory or file."""

    path: str  # relative to the workspace root ("out/..." is relative to the output directory's parent)
    kind: str  # "symlink", "fifo", "dir", "file", "deep"
    target: str = ""  # symlink target ("@outside/" and "@ws/" are replaced by those directories)
    data: bytes = b""


@dataclass
class Case:
    seed: int
    index: int
    files: dict[str, bytes]  # workspace-relative path -> bytes (recipes/...)
    plants: list[Plant] = field(default_factory=list)
    mutations: list[str] = field(default_factory=list)


def example_files() -> dict[str, bytes]:
    root = REPO / "recipes"
    return {
        p.relative_to(REPO).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*.yaml"))
        if p.is_file() and not p.is_symlink()
    }


_EXAMPLES: dict[str, bytes] | None = None


def make_case(seed: int, index: int) -> Case:
    global _EXAMPLES
    if _EXAMPLES is None:
        _EXAMPLES = example_files()
    rng = random.Random(f"kiln-fuzz/{seed}/{index}")
    case = Case(seed, index, dict(_EXAMPLES))
    names = sorted(case.files)
    recipes = [n for n in names if not n.endswith("defaults.yaml")]
    chosen = rng.sample(recipes, k=rng.choice((1, 1, 1, 1, 2, 3)))
    if rng.random() < 0.08:
        chosen.append("recipes/defaults.yaml")
    if rng.random() < 0.25:  # fewer recipes around: dependencies missing, less work
        for name in recipes:
            if name not in chosen and rng.random() < 0.5:
                del case.files[name]
    for name in chosen:
        for _ in range(rng.choice((1, 1, 1, 1, 2, 2, 3, 4))):
            family = rng.choices(FAMILIES, weights=[w for _, w, _ in MUTATORS])[0]
            mutate = dict((f, m) for f, _, m in MUTATORS)[family]
            if name not in case.files and family not in ("paths", "output"):
                continue  # replaced by a planted path
            try:
                label = mutate(rng, case, name)
            except (_Skip, RecursionError):
                continue
            case.mutations.append(f"{name}: {family}: {label}")
    return case


class _Skip(Exception):
    """The mutation does not apply to the file as it is now."""


def _load(case: Case, name: str) -> Any:
    text = case.files[name]
    # PyYAML itself expands merge keys and aliases without limit (the chains Kiln must refuse):
    # structure mutations apply only to text without them, and to modest sizes.
    if b"<<" in text or b"&" in text or b"*" in text or len(text) > 200_000:
        raise _Skip()
    try:
        return yaml.load(text, Loader=_LOADER)
    except Exception:
        raise _Skip() from None


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the pure-Python ones are slow on long text
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _dump(case: Case, name: str, data: Any, rng: random.Random) -> None:
    try:
        text = yaml.dump(
            data,
            Dumper=_DUMPER,
            sort_keys=False,
            allow_unicode=rng.random() < 0.7,
            default_flow_style=rng.random() < 0.1,
        )
    except Exception:
        raise _Skip() from None
    case.files[name] = text.encode("utf-8", "surrogatepass")


# --- structure ---------------------------------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if len(prefix) > 100:  # deep enough
        return
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(data, path[:-1])[path[-1]] = value
    return data


KEYS = _words(
    "name kind arches matrix releases variants build builder distro release base recipe "
    "variant iso path url script shell file source patches env elements packages formats "
    "publish glance verify boot checks extends description properties labels cmd defines "
    "registry tags repository <<"
)
FILE_REFS = [
    "../../etc/passwd",
    "/etc/passwd",
    "~/x",
    "C:/x",
    "../" * 40 + "etc/shadow",
    "",
    "a\x00b",
    "a" * 300,
    "x/" * 1500 + "y",
    "../../files/packer/harden-ssh.sh",
    "../../files",
    "loop.sh",
    "fifo.sh",
    "zero.sh",
    "outside.sh",
    "../../recipes/guest/debian-12.yaml",
    "debian-12.yaml",
    "../defaults.yaml",
    "nope.yaml",
    "/dev/zero",
    "../../files/srpms/kiln-hello-1.0-1.src.rpm",
    ".",
    "..",
    "./" * 3000,
    "\u2028x",
    "%2e%2e/x",
    "loopdir/x.yaml",
    "outdir/x.yaml",
]


def random_scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            lambda: rng.choice([0, -1, 1, 7, 2**31, 2**64, -(2**63), 10**100]),
            lambda: rng.choice([0.5, -0.0, float("inf"), float("nan"), 1e308]),
            lambda: rng.choice([True, False, None]),
            lambda: rng.choice(["", " ", "x86_64", "ppc64le", "arm64", "s390x", "bookworm", "debian"]),
            lambda: rng.choice(["guest-image", "ipa-ramdisk", "rpm-rebuild", "container", "Guest-Image"]),
            lambda: rng.choice(["dib", "packer", "el", "fedora", "qcow2", "raw", "uefi", "bios"]),
            lambda: rng.choice(["{{ .Name }}", "{% x %}", "{# c #}", "@@HTTP@@", "${HOME}", "%{x}", "$(id)"]),
            lambda: rng.choice(["a\nb", "a\rb", "a\x00b", "\x1b[2J", "x\u2028y", "x\x85y", "tab\there"]),
            lambda: rng.choice(["é", "\U0001f600", "\ufeff", "A" * 5000, "-" * 70]),
            lambda: rng.choice(FILE_REFS),
            lambda: rng.choice(["http://user:secret@mirror/debian", "https://x/" + "y" * 3000, "ftp://x"]),
            lambda: rng.choice(["1.0", "11.8", "9", "12", "2024-01-01", "0x1F", "1e3", ".inf", "~", "null"]),
            lambda: "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 20))),
        ]
    )()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        return random_scalar(rng)
    if roll < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def mutate_structure(rng: random.Random, case: Case, name: str) -> str:
    data = _load(case, name)
    if not isinstance(data, dict):
        raise _Skip()
    paths = [p for p in _paths(data) if p]
    op = rng.choice(
        _words(
            "delete duplicate move swap nest kind arches matrix base extends fileref env unknown huge-list"
        )
    )
    if op == "delete" and paths:
        path = rng.choice(paths)
        parent = _get(data, path[:-1])
        del parent[path[-1]]
    elif op == "duplicate" and paths:
        source = rng.choice(paths)
        target = rng.choice([p for p in _paths(data) if isinstance(_get(data, p), dict)])
        _get(data, target)[rng.choice([*KEYS, str(source[-1])])] = _get(data, source)
    elif op == "move" and paths:
        source = rng.choice(paths)
        value = _get(data, source)
        del _get(data, source[:-1])[source[-1]]
        dicts = [p for p in _paths(data) if isinstance(_get(data, p), dict)]
        _get(data, rng.choice(dicts))[str(source[-1])] = value
    elif op == "swap" and paths:
        data = _set(data, rng.choice(paths), random_value(rng))
    elif op == "nest" and paths:
        path = rng.choice(paths)
        value = _get(data, path)
        for _ in range(rng.choice((10, 63, 64, 65, 120))):
            value = [value] if rng.random() < 0.5 else {"k": value}
        data = _set(data, path, value)
    elif op == "kind":
        data["kind"] = rng.choice([["guest-image"], {"a": 1}, 5, None, "container", "rpm-rebuild", "x" * 100])
    elif op == "arches":
        data["arches"] = rng.choice(
            [
                [],
                ["x86_64"] * 2,
                ["amd64", "x86_64"],
                ["ppc64el", "ppc64le", "s390x"],
                "x86_64",
                [random_scalar(rng)],
                [f"a{i}" for i in range(200)],
            ]
        )
    elif op == "matrix":
        releases = rng.choice([0, 1, 2, 40, 1001, 3000])
        variants = rng.choice([0, 1, 2, 30, 1001])
        matrix: dict[str, Any] = {}
        if releases:
            matrix["releases"] = [f"r{i}" for i in range(releases)]
        if variants:
            matrix["variants"] = {
                f"v{i}": rng.choice([{}, {"packages": ["x"]}, {"bogus": 1}]) for i in range(variants)
            }
        data["matrix"] = matrix if rng.random() < 0.9 else random_value(rng)
    elif op == "base":
        build = data.setdefault("build", {})
        if not isinstance(build, dict):
            raise _Skip()
        build["builder"] = "packer"
        build.pop("elements", None)
        build.pop("env", None)
        build.pop("packages", None)
        build["base"] = {
            "recipe": rng.choice(
                [data.get("name", "x"), "debian-12", "debian-12-packer", "nope", "cuda-runtime"]
            ),
            **({"variant": rng.choice(["v1", "main", ""])} if rng.random() < 0.3 else {}),
        }
    elif op == "extends":
        data["extends"] = rng.choice(
            [*FILE_REFS, "debian-12.yaml", "../guest/debian-12.yaml", name.split("/")[-1]]
        )
    elif op == "fileref":
        refs = [
            p for p in _paths(data) if p and p[-1] in ("script", "path", "answer_file", "source", "patches")
        ]
        if not refs:
            raise _Skip()
        path = rng.choice(refs)
        ref = rng.choice(FILE_REFS)
        data = _set(data, path, [ref] if isinstance(_get(data, path), list) else ref)
    elif op == "env":
        build = data.get("build")
        if not isinstance(build, dict):
            raise _Skip()
        build["env"] = {
            rng.choice(["DIB_X", "A", "lower", "X" * 70, "1X"]): random_scalar(rng) for _ in range(2)
        }
    elif op == "unknown":
        dicts = [p for p in _paths(data) if isinstance(_get(data, p), dict)]
        _get(data, rng.choice(dicts))[rng.choice([*KEYS, "bogus", "Name", "kind "])] = random_value(rng)
    elif op == "huge-list":
        lists = [p for p in _paths(data) if isinstance(_get(data, p), list)]
        if not lists:
            raise _Skip()
        value = _get(data, rng.choice(lists))
        value.extend([rng.choice(["x", 1, None, "a-b"])] * rng.choice((100, 5000)))
    else:
        raise _Skip()
    _dump(case, name, data, rng)
    return op


# --- values that stay valid (so that plan and render see odd but accepted input) ------------------

ODD_TEXT = [
    'it\'s "quoted" and \\back\\slashed',
    "$(id) `id` ${HOME} $HOME; rm -rf / && echo | cat > /tmp/x",
    "%{_bindir} %(echo hi) %define x 1",
    "\u202eRTL \u200b zero-width \U0001f525 caf\u00e9 \u4e2d\u6587",
    "@@HTTP@@/preseed.cfg @@HTTP@@@@HTTP@@ @@ @@HTTP",
    "<enter><wait5><esc> {single} [brackets] }} {{",
    "trailing space ",
    " leading space",
    "tab\tinside",
    "#not a comment",
    "- not a list",
    "key: value",
    "x" * 4096,
    "",
    "\\x7b\\x7b not template",
]


def _odd(rng: random.Random) -> str:
    text = rng.choice(ODD_TEXT)
    return text.replace("{{", "{ {").replace("}}", "} }") if rng.random() < 0.9 else text


def mutate_values(rng: random.Random, case: Case, name: str) -> str:
    data = _load(case, name)
    if not isinstance(data, dict):
        raise _Skip()
    build = data.get("build") if isinstance(data.get("build"), dict) else None
    kind = data.get("kind")
    op = rng.choice(
        _words("description env packages releases variants arches strings checks labels defines shell")
    )
    if op == "description":
        data["description"] = _odd(rng)
    elif op == "env" and build is not None and kind != "rpm-rebuild" and build.get("builder") != "packer":
        env = build.setdefault("env", {}) if isinstance(build.get("env"), dict) else {}
        build["env"] = env
        for _ in range(rng.randrange(1, 4)):
            env[rng.choice(["DIB_X", "DIB_DEBUG_TRACE", "_A", "LANG", "X" * 64])] = _odd(rng)
    elif op == "packages" and build is not None and kind in ("guest-image", "container"):
        if build.get("builder") == "packer":
            raise _Skip()
        build["packages"] = sorted(
            {
                rng.choice(["vim", "g++", "libc6:amd64", "a.b_c-d", "x" * 128, "z1"])
                for _ in range(rng.randrange(1, 5))
            }
        )
    elif op == "releases":
        data["matrix"] = {
            "releases": sorted(
                {
                    rng.choice(["bookworm", "trixie", "9", "10", "22.04", "a" * 32])
                    for _ in range(rng.randrange(1, 4))
                }
            )
        }
    elif op == "variants":
        variants: dict[str, Any] = {}
        for _ in range(rng.randrange(1, 4)):
            overrides = rng.choice([{}, {"formats": ["raw"]}, {"release": "trixie"}, {"packages": ["curl"]}])
            variants[rng.choice(["min", "full", "v" * 63, "a-b", "x1"])] = overrides
        data["matrix"] = {"variants": variants}
    elif op == "arches":
        data["arches"] = sorted(
            {rng.choice(["x86_64", "amd64", "ppc64le", "ppc64el", "aarch64", "arm64"]) for _ in range(3)}
        )
    elif op == "strings":
        strings = [
            p
            for p in _paths(data)
            if p
            and isinstance(_get(data, p), str)
            and p[-1] in ("description", "image_name", "os_distro", "os_version", 0, 1, 2)
        ]
        if not strings:
            raise _Skip()
        data = _set(data, rng.choice(strings), _odd(rng))
    elif op == "checks":
        verify = data.setdefault("verify", {})
        if not isinstance(verify, dict):  # an earlier mutation made it a list or null
            raise _Skip()
        if kind == "container":
            verify["commands"] = [[_odd(rng), _odd(rng)]]
        elif kind in ("guest-image", "ipa-ramdisk"):
            verify["boot"] = {"checks": [_odd(rng) for _ in range(rng.randrange(1, 3))]}
        else:
            raise _Skip()
    elif op == "labels" and build is not None and kind == "container":
        build["labels"] = {rng.choice(["org.opencontainers.image.title", "a/b", "x"]): _odd(rng)}
        if rng.random() < 0.5:
            build["cmd"] = [_odd(rng), _odd(rng)]
    elif op == "defines" and build is not None and kind == "rpm-rebuild":
        build["defines"] = {rng.choice(["_with_x", "dist", "A_B", "_smp_mflags"]): _odd(rng)}
    elif op == "shell" and build is not None and build.get("builder") == "packer":
        provisioners = build.setdefault("provisioners", [])
        if isinstance(provisioners, list):
            provisioners.append({"shell": [_odd(rng) for _ in range(rng.randrange(1, 3))]})
    else:
        raise _Skip()
    _dump(case, name, data, rng)
    return op


# --- YAML features (on the node graph) -----------------------------------------------------------


def _nodes(node: yaml.Node, seen: set[int] | None = None) -> Iterator[yaml.Node]:
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    yield node
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            yield from _nodes(child, seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _nodes(key, seen)
            yield from _nodes(value, seen)


MAP = "tag:yaml.org,2002:map"
SEQ = "tag:yaml.org,2002:seq"
STR = "tag:yaml.org,2002:str"
MERGE = "tag:yaml.org,2002:merge"
TAGS = [
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:binary",
    "tag:yaml.org,2002:set",
    STR,
    "tag:yaml.org,2002:omap",
    "tag:yaml.org,2002:value",
    "tag:yaml.org,2002:yaml",
    MERGE,
    "tag:yaml.org,2002:python/object/apply:os.system",
    "!custom",
    "!",
    "tag:example.com,2000:x",
]


def _merge_key() -> yaml.ScalarNode:
    return yaml.ScalarNode(MERGE, "<<")


def _map(pairs: list[tuple[yaml.Node, yaml.Node]], flow: bool = True) -> yaml.MappingNode:
    return yaml.MappingNode(MAP, pairs, flow_style=flow)


def _s(text: str) -> yaml.ScalarNode:
    return yaml.ScalarNode(STR, text)


def mutate_yaml(rng: random.Random, case: Case, name: str) -> str:
    try:
        root = yaml.compose(case.files[name].decode("utf-8"), Loader=_LOADER)
    except Exception:
        raise _Skip() from None
    if not isinstance(root, yaml.MappingNode):
        raise _Skip()
    nodes = list(_nodes(root))
    mappings = [n for n in nodes if isinstance(n, yaml.MappingNode)]
    scalars = [n for n in nodes if isinstance(n, yaml.ScalarNode)]
    collections = [n for n in nodes if isinstance(n, yaml.MappingNode | yaml.SequenceNode)]
    op = rng.choice(
        _words(
            "alias merge self-merge merge-chain merge-bomb alias-bomb tag tag-collection "
            "binary-template complex-key duplicate-key recursive style merge-list"
        )
    )
    if op == "alias":
        source = rng.choice(nodes)
        target = rng.choice(mappings)
        if target.value:
            i = rng.randrange(len(target.value))
            target.value[i] = (target.value[i][0], source)
    elif op == "merge":
        target, source = rng.choice(mappings), rng.choice(mappings)
        target.value.insert(rng.randrange(len(target.value) + 1), (_merge_key(), source))
    elif op == "merge-list":
        target = rng.choice(mappings)
        items = [rng.choice(nodes) for _ in range(rng.randrange(1, 4))]
        target.value.append((_merge_key(), yaml.SequenceNode(SEQ, items, flow_style=True)))
    elif op == "self-merge":
        target = rng.choice(mappings)
        chain = [target, *[m for m in mappings if rng.random() < 0.2]]
        chain[-1].value.append((_merge_key(), target))
    elif op in ("merge-chain", "merge-bomb"):
        levels = rng.choice((5, 12, 40)) if op == "merge-chain" else rng.choice((8, 16))
        width = 10 if op == "merge-chain" else 2
        level: list[yaml.MappingNode] = [_map([(_s("a"), _s("1")), (_s("b"), _s("2"))])]
        for i in range(levels):
            if op == "merge-chain":  # the same mapping listed ten times
                refs: list[yaml.Node] = [level[-1]] * width
                nxt = [_map([(_merge_key(), yaml.SequenceNode(SEQ, refs, flow_style=True))])]
            else:  # two mappings per level, each merging both of the level before (distinct keys)
                nxt = [
                    _map(
                        [
                            (_merge_key(), yaml.SequenceNode(SEQ, list(level), flow_style=True)),
                            (_s(f"k{i}{j}"), _s("x")),
                        ]
                    )
                    for j in range(2)
                ]
            level = nxt
        holder = rng.choice(mappings)
        holder.value.append((_s(rng.choice(["x-chain", "description", "env", "matrix"])), level[0]))
    elif op == "alias-bomb":
        leaf: yaml.Node = yaml.SequenceNode(SEQ, [_s("lol")] * 9, flow_style=True)
        for _ in range(rng.choice((3, 6, 10))):
            leaf = yaml.SequenceNode(SEQ, [leaf] * 9, flow_style=True)
        rng.choice(mappings).value.append((_s("bomb"), leaf))
    elif op == "tag" and scalars:
        for node in rng.sample(scalars, k=min(len(scalars), rng.randrange(1, 4))):
            node.tag = rng.choice(TAGS)
            if rng.random() < 0.3:
                node.value = rng.choice(["abc", "", "1.5", "yes", "2024-13-45", "!!!", "0x", "9" * 5000, "~"])
    elif op == "tag-collection" and collections:
        rng.choice(collections).tag = rng.choice(TAGS)
    elif op == "binary-template" and scalars:
        node = rng.choice(scalars)
        node.tag = "tag:yaml.org,2002:binary"
        node.value = base64.b64encode(rng.choice([b"{{ .Name }}", b"{% x %}", b"ok", b"\xff\xfe"])).decode()
    elif op == "complex-key" and mappings:
        target = rng.choice([m for m in mappings if m.value] or mappings)
        key = rng.choice(
            [
                yaml.SequenceNode(SEQ, [_s("a")]),
                _map([(_s("a"), _s("b"))]),
                yaml.ScalarNode("tag:yaml.org,2002:int", "1"),
                yaml.ScalarNode("tag:yaml.org,2002:null", "~"),
                yaml.ScalarNode("tag:yaml.org,2002:binary", "e3s="),
            ]
        )
        target.value.append((key, _s("v")))
    elif op == "duplicate-key":
        target = rng.choice([m for m in mappings if m.value] or [root])
        if target.value:
            target.value.append(rng.choice(target.value))
    elif op == "recursive" and collections:
        holder = rng.choice(collections)
        if isinstance(holder, yaml.MappingNode):
            holder.value.append((_s("self"), holder))
        else:
            holder.value.append(holder)
    elif op == "style":
        for node in collections:
            node.flow_style = rng.random() < 0.5
        for node in scalars:
            node.style = rng.choice([None, "'", '"', "|", ">"])
    else:
        raise _Skip()
    try:
        text = yaml.serialize(root, Dumper=_DUMPER, allow_unicode=True)
    except Exception:
        raise _Skip() from None
    case.files[name] = text.encode("utf-8", "surrogatepass")
    return op


# --- bytes ---------------------------------------------------------------------------------------


def mutate_bytes(rng: random.Random, case: Case, name: str) -> str:
    data = bytearray(case.files[name])
    op = rng.choice(
        _words(
            "flip control invalid-utf8 truncate bom utf16 crlf tabs line-dup line-del line-swap "
            "indent template long-line docs directive nul"
        )
    )
    pos = rng.randrange(len(data) + 1)
    lines = bytes(data).split(b"\n")
    if op == "flip" and data:
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == "control":
        char = rng.choice(
            [
                b"\x00",
                b"\x07",
                b"\x08",
                b"\x0b",
                b"\x0c",
                b"\x1b",
                b"\x7f",
                b"\xc2\x85",
                b"\xe2\x80\xa8",
                b"\xc2\x9b",
                b"\r",
                b"\t",
            ]
        )
        data[pos:pos] = char
    elif op == "invalid-utf8":
        data[pos:pos] = rng.choice(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]
        )
    elif op == "truncate":
        del data[pos:]
    elif op == "bom":
        data[0 if rng.random() < 0.5 else pos : 0 if rng.random() < 0.5 else pos] = b"\xef\xbb\xbf"
    elif op == "utf16":
        data = bytearray(
            bytes(data).decode("utf-8", "replace").encode(rng.choice(["utf-16", "utf-32", "utf-16-be"]))
        )
    elif op == "crlf":
        data = bytearray(bytes(data).replace(b"\n", rng.choice([b"\r\n", b"\r"])))
    elif op == "tabs":
        data = bytearray(bytes(data).replace(b"  ", b"\t", rng.randrange(1, 5)))
    elif op == "line-dup" and lines:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        data = bytearray(b"\n".join(lines))
    elif op == "line-del" and lines:
        del lines[rng.randrange(len(lines))]
        data = bytearray(b"\n".join(lines))
    elif op == "line-swap" and len(lines) > 1:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
        data = bytearray(b"\n".join(lines))
    elif op == "indent" and lines:
        i = rng.randrange(len(lines))
        lines[i] = b" " * rng.randrange(1, 5) + lines[i] if rng.random() < 0.5 else lines[i].lstrip()
        data = bytearray(b"\n".join(lines))
    elif op == "template":
        data[pos:pos] = rng.choice([b"{{ .Name }}", b"{%", b"{#", b"\\x7b\\x7b", b"@@HTTP@@", b"${x}"])
    elif op == "long-line":
        data[pos:pos] = b"x" * rng.choice((5000, 200_000))
    elif op == "docs":
        data[pos:pos] = rng.choice([b"\n---\n", b"\n...\n", b"\n--- |\n"])
    elif op == "directive":
        data[0:0] = rng.choice(
            [b"%YAML 1.1\n---\n", b"%YAML 2.0\n---\n", b"%TAG !e! tag:example.com,2000:\n---\n"]
        )
    elif op == "nul":
        data = bytearray(b"\x00" * rng.randrange(1, 64))
    else:
        raise _Skip()
    case.files[name] = bytes(data)
    return op


# --- paths and the file system -------------------------------------------------------------------


def mutate_paths(rng: random.Random, case: Case, name: str) -> str:
    op = rng.choice(
        _words(
            "link-out link-passwd link-loop link-chain-loop link-devzero link-dangling "
            "link-dir-loop link-dir-out fifo-recipe dir-recipe long-name deep-path refs-planted "
            "defaults-odd link-in"
        )
    )
    folder = name.rsplit("/", 1)[0]
    if op == "link-out":
        case.plants.append(Plant(name, "symlink", "@outside/valid.yaml"))
    elif op == "link-passwd":
        case.plants.append(Plant(name, "symlink", "/etc/passwd"))
    elif op == "link-loop":
        case.plants.append(Plant(name, "symlink", name.rsplit("/", 1)[1]))
    elif op == "link-chain-loop":
        case.plants.append(Plant(f"{folder}/a-loop.yaml", "symlink", "b-loop.yaml"))
        case.plants.append(Plant(f"{folder}/b-loop.yaml", "symlink", "a-loop.yaml"))
    elif op == "link-devzero":
        case.plants.append(Plant(name, "symlink", "/dev/zero"))
    elif op == "link-dangling":
        case.plants.append(Plant(f"{folder}/dangling.yaml", "symlink", "nowhere/x.yaml"))
    elif op == "link-dir-loop":
        case.plants.append(Plant(f"{folder}/loopdir", "symlink", "."))
        case.plants.append(Plant("recipes/up", "symlink", ".."))
    elif op == "link-dir-out":
        case.plants.append(Plant(f"{folder}/outdir", "symlink", "@outside"))
    elif op == "fifo-recipe":
        case.plants.append(Plant(f"{folder}/fifo.yaml", "fifo"))
    elif op == "dir-recipe":
        case.plants.append(Plant(f"{folder}/dir.yaml", "dir"))
    elif op == "long-name":
        length = rng.choice((200, 250))
        case.plants.append(Plant(f"{folder}/{'n' * length}.yaml", "file", data=case.files.get(name, b"")))
    elif op == "deep-path":
        case.plants.append(Plant(f"{folder}/deep", "deep", data=case.files.get(name, b"")))
    elif op == "refs-planted":
        case.plants += [
            Plant(f"{folder}/loop.sh", "symlink", "loop.sh"),
            Plant(f"{folder}/fifo.sh", "fifo"),
            Plant(f"{folder}/zero.sh", "symlink", "/dev/zero"),
            Plant(f"{folder}/outside.sh", "symlink", "@outside/secret.sh"),
        ]
        if name not in case.files:
            return op
        try:
            return op + "+" + mutate_structure_fileref(rng, case, name)
        except _Skip:
            return op
    elif op == "defaults-odd":
        kind = rng.choice(["symlink", "fifo", "dir", "symlink-out", "loop"])
        plant = {
            "symlink": Plant("recipes/defaults.yaml", "symlink", "/etc/passwd"),
            "fifo": Plant("recipes/defaults.yaml", "fifo"),
            "dir": Plant("recipes/defaults.yaml", "dir"),
            "symlink-out": Plant("recipes/defaults.yaml", "symlink", "@outside/valid.yaml"),
            "loop": Plant("recipes/defaults.yaml", "symlink", "defaults.yaml"),
        }[kind]
        case.files.pop("recipes/defaults.yaml", None)
        case.plants.append(plant)
        return f"{op}-{kind}"
    elif op == "link-in":
        others = [n for n in case.files if n != name]
        if not others:
            raise _Skip()
        case.plants.append(Plant(f"{folder}/alias.yaml", "symlink", "@ws/" + rng.choice(others)))
    if op in ("link-out", "link-passwd", "link-loop", "link-devzero"):
        case.files.pop(name, None)
    return op


def mutate_structure_fileref(rng: random.Random, case: Case, name: str) -> str:
    data = _load(case, name)
    refs = [p for p in _paths(data) if p and p[-1] in ("script", "path", "answer_file", "patches", "extends")]
    ref = rng.choice(["loop.sh", "fifo.sh", "zero.sh", "outside.sh"])
    if refs:
        path = rng.choice(refs)
        data = _set(data, path, [ref] if isinstance(_get(data, path), list) else ref)
    elif isinstance(data, dict):
        data["extends"] = ref
    else:
        raise _Skip()
    _dump(case, name, data, rng)
    return ref


def mutate_output(rng: random.Random, case: Case, name: str) -> str:
    op = rng.choice(["slug-link", "file-link", "out-is-file"])
    slug = rng.choice(
        [
            "debian-12_bookworm_x86_64",
            "cuda-runtime_bookworm_x86_64",
            "kiln-hello_9_ppc64le",
            "ipa-bookworm_bookworm_x86_64",
        ]
    )
    if op == "slug-link":
        case.plants.append(Plant(f"out/{slug}", "symlink", "@outside/rendered"))
    elif op == "file-link":
        case.plants.append(Plant(f"out/{slug}", "dir"))
        case.plants.append(Plant(f"out/{slug}/target.json", "symlink", "@outside/victim.txt"))
    elif op == "out-is-file":
        case.plants.append(Plant("out", "file", data=b"not a directory\n"))
    return op


MUTATORS: list[tuple[str, float, Callable[[random.Random, Case, str], str]]] = [
    ("values", 0.30, mutate_values),
    ("structure", 0.20, mutate_structure),
    ("yaml", 0.18, mutate_yaml),
    ("bytes", 0.17, mutate_bytes),
    ("paths", 0.10, mutate_paths),
    ("output", 0.05, mutate_output),
]
FAMILIES = [f for f, _, _ in MUTATORS]


# --- running one case ----------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the alarm in a command that ran past the limit (BaseException: nothing catches it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


@dataclass
class Sandbox:
    """One worker's directories: a workspace (templates, elements, files copied once), the render
    output directory, a place outside both that no command may change, and a ledger."""

    base: Path

    @property
    def ws(self) -> Path:
        return self.base / "ws"

    @property
    def out(self) -> Path:
        return self.base / "out"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    @property
    def ledger(self) -> Path:
        return self.base / "ledger.sqlite"

    def prepare(self) -> None:
        self.ws.mkdir(parents=True, exist_ok=True)
        for name in ("templates", "elements", "files"):
            if not (self.ws / name).exists():
                shutil.copytree(REPO / name, self.ws / name, symlinks=True)

    def reset(self, case: Case) -> None:
        for path in (self.ws / "recipes", self.out, self.outside):
            _remove(path)
        self.outside.mkdir()
        (self.outside / "valid.yaml").write_bytes(_EXAMPLES_OR_LOAD()["recipes/guest/debian-12.yaml"])
        (self.outside / "secret.sh").write_text("echo stolen\n")
        (self.outside / "victim.txt").write_text("must stay\n")
        (self.outside / "rendered").mkdir()
        for rel, data in case.files.items():
            path = self.ws / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (self.ws / "recipes").mkdir(exist_ok=True)
        for plant in case.plants:
            self._plant(plant)

    def _plant(self, plant: Plant) -> None:
        path = (self.base if plant.path.startswith("out") else self.ws) / plant.path
        target = plant.target.replace("@outside", str(self.outside)).replace("@ws", str(self.ws))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove(path)
            if plant.kind == "symlink":
                os.symlink(target, path)
            elif plant.kind == "fifo":
                os.mkfifo(path)
            elif plant.kind == "dir":
                path.mkdir()
                (path / "inner.yaml").write_bytes(_EXAMPLES_OR_LOAD()["recipes/ipa/ipa-bookworm.yaml"])
            elif plant.kind == "file":
                path.write_bytes(plant.data)
            elif plant.kind == "deep":  # a recipe below a path longer than PATH_MAX, made with *at()
                path.mkdir()
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    for _ in range(24):
                        os.mkdir("d" * 200, dir_fd=fd)
                        new = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                        os.close(fd)
                        fd = new
                    leaf = os.open("deep.yaml", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                    os.write(leaf, plant.data)
                    os.close(leaf)
                finally:
                    os.close(fd)
        except OSError:
            pass  # e.g. a name the file system refuses: the case runs without it

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """What is outside the workspace and the output directory: name -> (size, mtime)."""
        found: dict[str, tuple[int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.outside):
            for name in [*dirnames, *filenames]:
                info = os.lstat(os.path.join(dirpath, name))
                found[os.path.relpath(os.path.join(dirpath, name), self.outside)] = (
                    info.st_size,
                    info.st_mtime_ns,
                )
        return found


def _EXAMPLES_OR_LOAD() -> dict[str, bytes]:
    global _EXAMPLES
    if _EXAMPLES is None:
        _EXAMPLES = example_files()
    return _EXAMPLES


def _remove(path: Path) -> None:
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):  # a tree deeper than PATH_MAX: rmtree (fd-based) usually manages
            raise OSError(f"cannot remove {path}")
    else:
        os.unlink(path)


@dataclass
class CommandResult:
    command: str
    category: str
    exit_code: int | None
    seconds: float
    detail: str = ""  # the traceback, or why the output was not right
    signature: tuple[str, str, str] | None = None  # (exception, builder file, function) of a traceback


def traceback_signature(exc: BaseException) -> tuple[str, str, str]:
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "/builder/" in f.filename] or frames
    where = inner[-1] if inner else None
    if where is None:
        return (type(exc).__name__, "?", "?")
    rel = where.filename.split("/builder/", 1)[-1]
    return (type(exc).__name__, f"builder/{rel}", where.name)


def run_command(argv: list[str], limit: float) -> CommandResult:
    """One CLI command in this process, classified; never raises (but for KeyboardInterrupt)."""
    from builder.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code: int | None = None
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    name = next(a for a in argv if a in ("validate", "plan", "render"))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    except _Hang:
        return CommandResult(name, "hang", None, time.monotonic() - started, f"over {limit:g}s")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a traceback is exactly what is counted
        signal.setitimer(signal.ITIMER_REAL, 0)
        detail = "".join(traceback.format_exception(exc))[-6000:]
        return CommandResult(
            name, "traceback", None, time.monotonic() - started, detail, traceback_signature(exc)
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        gc.unfreeze()  # main() freezes what is alive for the rest of its run: here, the next case
    seconds = time.monotonic() - started
    paths = [value for flag, value in itertools.pairwise(argv) if flag in ("--ledger", "-o")]
    category, detail = classify(code, out.getvalue(), err.getvalue(), paths)
    signature = None
    if category == "traceback":
        saved = _saved_traceback(err.getvalue())
        if saved:
            detail = saved[-6000:] + "\n" + detail
            signature = _signature_from_text(saved)
        found = re.search(r"\((\w+) at (builder/[^:]+):\d+ in (\w+)", detail)  # an internal problem
        if signature is None and found:
            signature = (found[1], found[2], found[3])
    return CommandResult(name, category, code, seconds, detail, signature)


def _saved_traceback(stderr: str) -> str:
    """The traceback the CLI saved for an internal error ("...; traceback: PATH"), if it did."""
    marker = "traceback: "
    if marker not in stderr:
        return ""
    path = stderr.rsplit(marker, 1)[1].strip().splitlines()[0] if stderr.strip() else ""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _signature_from_text(text: str) -> tuple[str, str, str] | None:
    """(exception, innermost builder/ file, function) from a formatted traceback."""
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', text)
    inner = [f for f in frames if "/builder/" in f[0]] or frames
    lines = [line for line in text.strip().splitlines() if line and not line.startswith(" ")]
    if not inner or not lines:
        return None
    exception = lines[-1].split(":", 1)[0].strip().rsplit(".", 1)[-1]
    return (exception, "builder/" + inner[-1][0].split("/builder/", 1)[-1], inner[-1][1])


def classify(
    code: int | None, stdout: str, stderr: str, arguments: list[str] | None = None
) -> tuple[str, str]:
    """(category, detail) of a command that returned ``code`` having printed ``stdout``/``stderr``.
    A problem without file:line is located enough when it names a path given as an argument
    (``-o DIR``, ``--ledger``): that is the input it is about."""
    if code not in (0, 1, 2, 3):
        return "traceback", f"exit code {code}\n{stderr[-3000:]}"
    if "Traceback (most recent call last)" in stderr:
        return "traceback", stderr[-3000:]
    if code == 0:
        try:
            json.loads(stdout)
        except ValueError:
            return "traceback", f"exit 0 without a JSON document on stdout: {stdout[:500]!r}"
        return "ok", ""
    try:
        document = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        return "traceback", f"exit {code} with output that is not JSON: {stdout[:500]!r}"
    problems = document.get("problems") if isinstance(document, dict) else None
    if not problems:
        return "unlocated", f"exit {code} without problems in the JSON: {stderr[-1000:]}"
    internal = [p for p in problems if isinstance(p, dict) and p.get("internal")]
    if internal:
        return "traceback", "internal error reported as a problem: " + json.dumps(internal)[:3000]
    unlocated = [
        p
        for p in problems
        if not (isinstance(p, dict) and p.get("file") and p.get("line"))
        and not any(a in str(p.get("message") if isinstance(p, dict) else p) for a in arguments or ())
    ]
    if unlocated:
        return "unlocated", json.dumps(unlocated)[:3000]
    return "refusal", ""


@dataclass
class CaseResult:
    index: int
    category: str
    commands: list[CommandResult]
    mutations: list[str]
    seconds: float
    case: Case | None = None  # kept for failures, to be written out

    @property
    def signature(self) -> tuple[str, str, str] | None:
        return next((c.signature for c in self.commands if c.signature is not None), None)


def _worst(categories: list[str]) -> str:
    return max(categories, key=SEVERITY.index)


def run_case(sandbox: Sandbox, case: Case, limit: float) -> CaseResult:
    started = time.monotonic()
    sandbox.reset(case)
    before = sandbox.snapshot()
    common = ["--root", str(sandbox.ws), "--ledger", str(sandbox.ledger)]
    commands = [run_command([*common, "validate", "--json"], limit)]
    if commands[0].category != "hang":
        commands.append(run_command([*common, "plan", "--json"], limit))
    if commands[0].exit_code == 0:
        commands.append(run_command([*common, "render", "-o", str(sandbox.out), "--json"], limit))
    if sandbox.snapshot() != before:
        commands.append(
            CommandResult("outside", "escape", None, 0.0, "a file outside ws/ and out/ changed", ESCAPE)
        )
    category = _worst([c.category for c in commands])
    kept = case if category in FAILURES or any(c.category == "traceback" for c in commands) else None
    return CaseResult(case.index, category, commands, case.mutations, time.monotonic() - started, kept)


# --- workers -------------------------------------------------------------------------------------


def limit_process(memory_mb: int) -> None:
    """In a child: die with the parent (a killed fuzzer leaves no workers) and cap its memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if memory_mb:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


def _worker(conn: Connection, base: str, seed: int, limit: float, memory_mb: int) -> None:
    limit_process(memory_mb)
    sandbox = Sandbox(Path(base))
    sandbox.prepare()
    os.chdir(sandbox.ws)  # problems name files relative to the workspace, as a user would run it
    os.environ.pop("KILN_ROOT", None)
    os.environ.pop("KILN_LEDGER", None)
    os.environ["XDG_CACHE_HOME"] = str(sandbox.base / "cache")  # the CLI's saved tracebacks go there
    done = 0
    while True:
        try:
            index = conn.recv()
        except (EOFError, OSError):
            return
        if index is None:
            return
        try:
            result = run_case(sandbox, make_case(seed, index), limit)
        except _Hang:
            result = CaseResult(index, "hang", [], [], limit)
        except Exception as exc:  # the fuzzer's own trouble (a plant it could not make): say so
            detail = "".join(traceback.format_exception(exc))[-3000:]
            result = CaseResult(
                index, "traceback", [CommandResult("fuzzer", "traceback", None, 0, detail)], [], 0
            )
        conn.send(result)
        done += 1
        if done % 25 == 0:
            # main() raises the GC thresholds for a one-shot run; over thousands of runs in one
            # process the cyclic garbage would grow by megabytes a second.
            gc.collect()


@dataclass
class Totals:
    cases: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    known: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    signatures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failures: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    slowest: tuple[float, int] = (0.0, -1)

    def line(self) -> str:
        c = self.counts
        known = sum(self.known.values())
        return (
            f"cases {self.cases}: ok {c['ok']}, clean refusals {c['refusal']}, unlocated refusals "
            f"{c['unlocated']}, tracebacks {c['traceback']}{f' (+{known} known-open)' if known else ''}, "
            f"hangs {c['hang']}, writes outside {c['escape']} in {self.seconds:.1f}s "
            f"(slowest case {self.slowest[0]:.2f}s: #{self.slowest[1]})"
        )


def run(
    cases: int,
    *,
    seed: int = 1,
    start: int = 0,
    jobs: int | None = None,
    limit: float = 10.0,
    out: Path | None = None,
    memory_mb: int = 3072,
    known_open: frozenset[tuple[str, str, str]] = KNOWN_OPEN,
    progress: Callable[[Totals], None] | None = None,
) -> Totals:
    """Run cases ``start .. start+cases-1`` of ``seed`` on ``jobs`` worker processes."""
    jobs = jobs or os.cpu_count() or 1
    totals = Totals()
    started = time.monotonic()
    # tmpfs where there is one: each case rewrites a workspace, and mkdir on a disk costs ~30x more.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-", dir=shm) as scratch:

        def record(result: CaseResult) -> None:
            _record(totals, result, seed, out, known_open)
            if progress is not None:
                progress(totals)

        run_cases(
            range(start, start + cases),
            jobs=jobs,
            target=_worker,
            args_for=lambda slot: (f"{scratch}/w{slot}", seed, limit, memory_mb),
            deadline_s=3 * limit + 30,  # a case has at most three commands, plus start-up
            died=lambda index, code, seconds: CaseResult(
                index,
                "traceback",
                [CommandResult("worker", "traceback", code, 0.0, f"worker died (exit {code})")],
                [],
                0.0,
            ),
            hung=lambda index, seconds: CaseResult(
                index,
                "hang",
                [CommandResult("worker", "hang", None, seconds, "the worker stopped answering")],
                [],
                seconds,
            ),
            record=record,
        )
    totals.seconds = time.monotonic() - started
    return totals


def _record(
    totals: Totals,
    result: CaseResult,
    seed: int,
    out: Path | None,
    known_open: frozenset[tuple[str, str, str]],
) -> None:
    totals.cases += 1
    category = result.category
    crashes = [c for c in result.commands if c.category in ("traceback", "escape")]
    signatures = [c.signature or ("?", "?", c.command) for c in crashes]
    for signature in signatures:
        totals.signatures[signature] += 1
    known = bool(crashes) and all(s in known_open for s in signatures)
    if known:  # every crash of this case is of a known-open class: counted apart
        totals.known[signatures[0]] += 1
        rest = [c.category for c in result.commands if c.category not in ("traceback", "escape")]
        category = _worst(rest or ["ok"])
    totals.counts[category] += 1
    if result.seconds > totals.slowest[0]:
        totals.slowest = (result.seconds, result.index)
    if category in FAILURES:
        totals.failures.append(result)
    if out is not None and (category in FAILURES or (known and totals.known[signatures[0]] <= 5)):
        save_failure(out, seed, result, prefix="known-" if known else "")


def save_failure(out: Path, seed: int, result: CaseResult, prefix: str = "") -> Path:
    """Write a failing case (its recipe files, planted paths, commands and tracebacks) under ``out``."""
    case = result.case or _regenerate(seed, result.index)
    folder = out / f"{prefix}{result.category}-{seed}-{result.index}"
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in case.files.items():
        path = folder / "input" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    report = {
        "seed": seed,
        "index": result.index,
        "category": result.category,
        "mutations": case.mutations,
        "plants": [
            {"path": p.path, "kind": p.kind, "target": p.target, "bytes": len(p.data)} for p in case.plants
        ],
        "commands": [
            {
                "command": c.command,
                "category": c.category,
                "exit_code": c.exit_code,
                "seconds": round(c.seconds, 3),
                "signature": list(c.signature) if c.signature else None,
                "detail": c.detail,
            }
            for c in result.commands
        ],
        "replay": f"python -m tests.support.fuzz --seed {seed} --start {result.index} --cases 1 --out DIR",
    }
    (folder / "case.json").write_text(json.dumps(report, indent=2) + "\n")
    return folder


def _regenerate(seed: int, index: int) -> Case:
    """The case again (for a worker that was killed with it), made in a child process under the
    workers' memory cap: a case is cheap to make, but this process must never be the one to blow up."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()

    def make() -> None:
        limit_process(3072)
        try:
            child.send(make_case(seed, index))
        except Exception:
            child.send(Case(seed, index, {}, mutations=["(could not be regenerated)"]))

    proc = context.Process(target=make, daemon=True)
    proc.start()
    case = parent.recv() if parent.poll(60) else Case(seed, index, {}, mutations=["(regeneration timed out)"])
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cases", type=int, default=1000, help="how many cases (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="the seed: cases are a function of (seed, index)")
    parser.add_argument("--start", type=int, default=0, help="the first case index (to replay one)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    parser.add_argument("--limit", type=float, default=10.0, help="seconds per command before it is a hang")
    parser.add_argument("--out", type=Path, default=None, help="write each failure (with its input) here")
    parser.add_argument("--memory-mb", type=int, default=3072, help="address-space limit per worker")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the scratch directory goes too
    last = [0.0]

    def progress(totals: Totals) -> None:
        if sys.stderr.isatty() and time.monotonic() - last[0] > 1:
            last[0] = time.monotonic()
            sys.stderr.write(f"\r{totals.cases}/{args.cases} {dict(totals.counts)}")
            sys.stderr.flush()

    totals = run(
        args.cases,
        seed=args.seed,
        start=args.start,
        jobs=args.jobs,
        limit=args.limit,
        out=args.out,
        memory_mb=args.memory_mb,
        progress=progress,
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for signature, count in totals.signatures.most_common():
        mark = " (known-open)" if signature in KNOWN_OPEN else ""
        print(f"  traceback x{count}: {signature[0]} in {signature[1]} {signature[2]}(){mark}")
    print(totals.line())
    if totals.failures and args.out is not None:
        print(f"failures written under {args.out}")
    return 1 if totals.failures else 0


if __name__ == "__main__":
    sys.exit(main())
