"""Every list/dict value of a recipe's build settings reaches the rendered files (issue 9).

A ``{% set %}`` inside a ``{% for %}`` does not leave the loop in Jinja, so a template could drop a
whole list (IPA elements, rpm ``--without``) while the digest still counted it. The generic check
here renders every target through the CLI only (``kiln render --json``: the Python modules behind it
are being moved) and looks for every string of the resolved build settings in that target's files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import main

REPO = Path(__file__).resolve().parents[2]

# Packer's HTTP address is written @@HTTP@@ in recipes; the packer_keys encoder rewrites it.
PACKER_HTTP_TOKEN = "@@HTTP@@"


# --- rendering through the CLI ---------------------------------------------------------------------


def _render(root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> list[Path]:
    """Render every recipe of the workspace; the target directories written."""
    capsys.readouterr()
    assert main(["--root", str(root), "render", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["rendered"]
    assert report, "no targets rendered"
    return [Path(entry["dir"]) for entry in report]


def _schema() -> dict[str, Any]:
    """The recipe JSON schema (generated from the models; a test keeps it fresh). It says which
    mappings are free-form (their keys are data) and which are models (their keys are field names)."""
    return json.loads((REPO / "schemas" / "recipe.schema.json").read_text())


# --- the resolved build settings, from the YAML (target.json does not carry them) ------------------


def _merge(base: Any, override: Any) -> Any:
    """Kiln's precedence rule: mappings merge key by key, lists and scalars replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def _load(path: Path, dirs: list[Path]) -> dict[str, Any]:
    """A recipe file with its ``extends`` chain merged (base first); ``dirs`` gets each file's folder."""
    data = yaml.safe_load(path.read_text()) or {}
    dirs.append(path.parent)
    base = data.pop("extends", None)
    return _merge(_load(path.parent / base, dirs), data) if base else data


def _resolved_build(root: Path, recipe_file: str, variant: str | None) -> tuple[str, dict, list[Path]]:
    """(kind, build settings after defaults, extends and variant, folders file paths are relative to)."""
    dirs: list[Path] = []
    data = _load(root / recipe_file, dirs)
    defaults_file = root / "recipes" / "defaults.yaml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else {}
    data = _merge(defaults.get(data["kind"], {}), data)
    build = data["build"]
    if variant:
        build = _merge(build, data["matrix"]["variants"][variant])
    return data["kind"], build, dirs


# --- walking the settings alongside their schema -----------------------------------------------------


def _node(schema: dict[str, Any], node: dict[str, Any], value: Any) -> dict[str, Any]:
    """The schema node describing ``value``: $ref followed, the discriminated or non-null branch taken."""
    while True:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        elif node.get("oneOf") or node.get("anyOf"):
            tag = node.get("discriminator")
            if tag and isinstance(value, dict):
                node = {"$ref": tag["mapping"][value[tag["propertyName"]]]}
            else:
                branches = [b for b in node.get("oneOf") or node["anyOf"] if b.get("type") != "null"]
                if isinstance(value, dict):  # a union of a string and models: the model whose keys fit
                    models = [schema["$defs"][b["$ref"].rsplit("/", 1)[-1]] for b in branches if "$ref" in b]
                    fitting = [m for m in models if set(value) <= set(m.get("properties", {}))]
                    branches = [{"$ref": "#/$defs/" + m["title"]} for m in fitting] or branches
                node = branches[0]
        else:
            return node


def _build_node(schema: dict[str, Any], kind: str, build: dict[str, Any]) -> dict[str, Any]:
    recipe = next(
        node
        for node in schema["$defs"].values()
        if node.get("properties", {}).get("kind", {}).get("const") == kind
    )
    return _node(schema, recipe["properties"]["build"], build)


def _strings(schema: dict[str, Any], node: dict[str, Any], value: Any) -> Iterator[str]:
    node = _node(schema, node, value)
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(schema, node.get("items", {}), item)
    elif isinstance(value, dict):
        fields = node.get("properties")
        for key, item in value.items():
            if fields is None:
                # A free-form mapping (env, defines, labels): its keys are data too. A model's keys
                # (iso.url, provisioner "shell", ...) are field names, not values to look for.
                yield key
                child = next(iter(node.get("patternProperties", {}).values()), {})
            else:
                child = fields.get(key, {})
            yield from _strings(schema, child, item)


def _expected(value: str, dirs: list[Path]) -> list[str]:
    """What must occur in the rendered text for one recipe string."""
    # File references are written relative to the recipe file (../../files/x.patch) and rendered
    # relative to the workspace (files/x.patch): the basename is what both spellings share.
    if "/" in value and any((folder / value).is_file() for folder in dirs):
        return [Path(value).name]
    return [piece for piece in value.split(PACKER_HTTP_TOKEN) if piece]


def _occurs(piece: str, text: str) -> bool:
    # Encoders may escape a value; plain test values pass through unchanged, JSON/HCL escape quotes.
    return piece in text or json.dumps(piece, ensure_ascii=False)[1:-1] in text


def _missing_values(root: Path, target_dir: Path, schema: dict[str, Any]) -> list[str]:
    """Strings of the target's list/dict build settings that its rendered files do not contain."""
    meta = json.loads((target_dir / "target.json").read_text())
    text = "\n".join((target_dir / name).read_text() for name in meta["files"])
    # A setting that names another target (build.base) is rendered as a dependency in target.json.
    text += "\n" + "\n".join(meta["depends_on"])
    kind, build, dirs = _resolved_build(root, meta["recipe_file"], meta["variant"])
    fields = _build_node(schema, kind, build)["properties"]
    missing = []
    for key, value in build.items():
        if not isinstance(value, list | dict):
            continue  # scalars (release, firmware, ...) are not what this test is about
        for string in _strings(schema, fields[key], value):
            if not all(_occurs(piece, text) for piece in _expected(string, dirs)):
                missing.append(f"{meta['id']}: build.{key}: {string!r}")
    return missing


def _assert_all_rendered(root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> list[Path]:
    schema = _schema()
    target_dirs = _render(root, out, capsys)
    missing = [m for d in target_dirs for m in _missing_values(root, d, schema)]
    assert missing == [], "values dropped by the templates:\n" + "\n".join(missing)
    return target_dirs


# --- the example recipes -----------------------------------------------------------------------------


def test_every_list_value_of_every_example_recipe_is_rendered(tmp_path, workspace, capsys):
    shutil.rmtree(workspace.recipes_dir)
    shutil.copytree(REPO / "recipes", workspace.recipes_dir)
    shutil.copytree(REPO / "files", workspace.root / "files")
    target_dirs = _assert_all_rendered(workspace.root, tmp_path / "out", capsys)
    recipes = {p for p in (REPO / "recipes").rglob("*.y*ml") if p.name != "defaults.yaml"}
    recipes = {p for p in recipes if not p.name.startswith("_")}
    rendered = {json.loads((d / "target.json").read_text())["recipe_file"] for d in target_dirs}
    assert len(rendered) == len(recipes)


# --- one recipe per kind that sets every list/dict key of its build model --------------------------

EVERY_KEY = {
    "recipes/dib.yaml": """
        name: dib-all
        kind: guest-image
        arches: [x86_64]
        matrix:
          variants:
            plain: {}
            extra: {packages: [htop, tmux], env: {DIB_VARIANT_ONLY: variant-value}}
        build:
          builder: dib
          distro: debian
          release: bookworm
          elements: [vm, growroot, devuser]
          packages: [cloud-init, qemu-guest-agent]
          formats: [qcow2, raw]
          env:
            DIB_DEV_USER_USERNAME: kiln-dev-user
            DIB_CLOUD_INIT_DATASOURCES: "NoCloud, ConfigDrive"
        """,
    "recipes/packer-iso.yaml": """
        name: packer-iso
        kind: guest-image
        arches: [x86_64]
        build:
          builder: packer
          distro: debian
          release: bookworm
          formats: [qcow2]
          iso:
            path: ../files/debian-netinst.iso
            checksum: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            answer_file: ../files/preseed/kiln-preseed.cfg
            boot_command: ["<esc><wait>", "auto url=@@HTTP@@/kiln-preseed.cfg<enter>"]
          provisioners:
            - shell: ["echo kiln-inline-one", "echo kiln-inline-two"]
            - script: ../files/scripts/kiln-script.sh
            - file: {source: ../files/kiln-motd.txt, destination: /etc/kiln-motd}
        """,
    "recipes/packer-base.yaml": """
        name: packer-base
        kind: guest-image
        arches: [x86_64]
        build:
          builder: packer
          distro: debian
          release: bookworm
          base: {recipe: dib-all, variant: extra}
          provisioners:
            - shell: ["echo kiln-on-base"]
        """,
    "recipes/ipa.yaml": """
        name: ipa-all
        kind: ipa-ramdisk
        arches: [x86_64]
        build:
          distro: debian
          release: bookworm
          elements: [dynamic-login, devuser]
          components: [main, contrib, non-free-firmware]
          compression: xz
          ipa_version: "9.4.0"
          packages: [lvm2, sg3-utils]
          hardware_managers: [kiln-hwm-example, "proliantutils>=2.0"]
          kernel_args: [ipa-insecure=1, kiln.arg=value]
          env:
            DIB_DEV_USER_USERNAME: ipa-dev-user
        """,
    "recipes/rpm.yaml": """
        name: rpm-all
        kind: rpm-rebuild
        arches: [ppc64le]
        build:
          source:
            url: https://example.org/srpms/kiln-hello-1.0-1.src.rpm
            sha256: "1111111111111111111111111111111111111111111111111111111111111111"
          distro: el
          release: "9"
          defines: {_kiln_vendor: kiln-vendor-value, debug_package: kiln-nil}
          patches: [../files/rpm/0001-first.patch, ../files/rpm/0002-second.patch]
          without: [tests, docs]
          run_check: false
          trusted_keys: [../files/rpm/RPM-GPG-KEY-kiln-upstream]
          build_requires_map: {"pkgconfig(kiln-glib)": [libkiln-glib-dev, kiln-pkg-config]}
        """,
    "recipes/container.yaml": """
        name: container-all
        kind: container
        arches: [x86_64]
        build:
          distro: debian
          release: bookworm
          packages: [ca-certificates, curl]
          cuda: "11.8"
          cuda_packages: [libcudart11.0]
          apt_repositories:
            - uri: "https://apt.example.com/kiln-repo"
              suite: kiln-suite
              components: [kiln-comp]
              key: ../files/kiln-apt-key.asc
          components: [main, contrib]
          env: {KILN_CONTAINER_ENV: container-env-value}
          labels: {org.example.team: kiln-team, org.example.tier: kiln-tier}
          cmd: [bash, -lc, kiln-cmd-value]
        """,
}

FILES = (
    "files/debian-netinst.iso",
    "files/preseed/kiln-preseed.cfg",
    "files/scripts/kiln-script.sh",
    "files/kiln-motd.txt",
    "files/rpm/0001-first.patch",
    "files/rpm/0002-second.patch",
    "files/rpm/RPM-GPG-KEY-kiln-upstream",
    "files/kiln-apt-key.asc",
)


def _every_key_workspace(workspace, write) -> Path:
    for name, text in EVERY_KEY.items():
        write(name, text)
    for name in FILES:
        write(name, f"{name}\n")
    return workspace.root


def test_every_list_value_of_every_build_key_is_rendered(tmp_path, workspace, write, capsys):
    root = _every_key_workspace(workspace, write)
    _assert_all_rendered(root, tmp_path / "out", capsys)


def test_every_key_recipes_cover_every_list_and_dict_key_of_every_build_model(workspace, write):
    """A new list/dict key in a build model must be added to EVERY_KEY above, so it is checked too."""
    root = _every_key_workspace(workspace, write)
    schema = _schema()
    set_keys: dict[str, set[str]] = {}
    for name in EVERY_KEY:
        data = yaml.safe_load((root / name).read_text())
        node = _build_node(schema, data["kind"], data["build"])
        set_keys.setdefault(node["title"], set()).update(data["build"])
    models = {n["title"] for n in schema["$defs"].values() if n.get("title", "").endswith("Build")}
    assert set(set_keys) == models
    for title, keys in set_keys.items():
        fields = schema["$defs"][title]["properties"]
        compound = {k for k, f in fields.items() if _node(schema, f, None).get("type") in ("array", "object")}
        assert compound <= keys, f"{title}: no EVERY_KEY recipe sets {sorted(compound - keys)}"


# --- targeted checks -----------------------------------------------------------------------------------


def _build_json(target_dirs: list[Path], recipe: str) -> dict[str, Any]:
    (found,) = [d for d in target_dirs if d.name.startswith(recipe + "_")]
    return json.loads((found / "build.json").read_text())


def test_ipa_build_json_passes_each_extra_element_and_kiln_extra_ca(tmp_path, workspace, write, capsys):
    write(
        "recipes/ipa.yaml",
        """
        name: ipa-two
        kind: ipa-ramdisk
        arches: [x86_64]
        build: {distro: debian, release: bookworm, elements: [dynamic-login, devuser]}
        """,
    )
    argv = _build_json(_render(workspace.root, tmp_path / "out", capsys), "ipa-two")["argv"]
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "-e"] == [
        "dynamic-login",
        "devuser",
        "kiln-extra-ca",
    ]
    assert argv[-1] == "debian-minimal"  # the distribution, ironic-python-agent-builder's positional


def test_rpm_build_json_passes_each_without(tmp_path, workspace, write, capsys):
    write("files/hello.src.rpm", "not really an srpm\n")
    write(
        "recipes/rpm.yaml",
        """
        name: rpm-without
        kind: rpm-rebuild
        arches: [ppc64le]
        build:
          source: {path: ../files/hello.src.rpm}
          release: "9"
          without: [tests, docs]
        """,
    )
    target_dirs = _render(workspace.root, tmp_path / "out", capsys)
    argv = _build_json(target_dirs, "rpm-without")["argv"]
    assert argv[argv.index("-ba") - 4 : argv.index("-ba")] == ["--without", "tests", "--without", "docs"]
    assert "--nocheck" not in argv
