"""Rendering: byte-identical output, encoders that keep recipe values inert, template errors located."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest

from builder.cli import main
from builder.errors import InvalidInput
from builder.pipeline.graph import load_targets
from builder.render import (
    encode_dockerfile,
    encode_hcl,
    encode_rpm_macro,
    encode_sh,
    render_target,
)
from builder.workspace import PACKAGE_ROOT, Workspace


def _render_all(workspace: Workspace) -> dict[str, dict[str, bytes]]:
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    return {t.id: {f.path: f.content for f in render_target(t, workspace.templates_dir)} for t in targets}


def _copy_examples(workspace: Workspace) -> None:
    shutil.rmtree(workspace.recipes_dir)
    shutil.copytree(PACKAGE_ROOT / "recipes", workspace.recipes_dir)
    shutil.copytree(PACKAGE_ROOT / "files", workspace.root / "files")


def test_cli_render_twice_gives_byte_identical_trees(tmp_path, workspace, monkeypatch):
    _copy_examples(workspace)
    monkeypatch.chdir(workspace.root)
    trees = []
    for name in ("one", "two"):
        out = tmp_path / name
        assert main(["--root", str(workspace.root), "render", "-o", str(out), "-q"]) == 0
        trees.append(
            {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        )
    assert trees[0] == trees[1]
    assert "debian-12_bookworm_ppc64le/build.json" in trees[0]
    assert "cuda-runtime_bookworm_ppc64le/Dockerfile" in trees[0]


def test_rendering_in_another_checkout_gives_the_same_bytes(tmp_path, workspace):
    _copy_examples(workspace)
    first = _render_all(workspace)
    other = tmp_path / "another" / "place"
    shutil.copytree(workspace.root, other)
    assert _render_all(Workspace(other)) == first


def test_dib_build_file_maps_the_arch_and_lists_elements(workspace):
    _copy_examples(workspace)
    rendered = _render_all(workspace)["debian-12:bookworm:ppc64le"]
    build = json.loads(rendered["build.json"])
    argv = build["argv"]
    assert argv[:3] == ["disk-image-create", "-a", "ppc64el"]
    assert argv[-2:] == ["kiln-extra-ca", "kiln-ppc64le-boot"] and "debian-minimal" in argv
    env = rendered["dib.env"].decode()
    assert "DIB_RELEASE=bookworm\n" in env
    assert "DIB_BOOTLOADER_SERIAL_CONSOLE=hvc0\n" in env  # pseries' console
    amd64 = _render_all(workspace)["debian-12:bookworm:x86_64"]
    assert "kiln-ppc64le-boot" not in json.loads(amd64["build.json"])["argv"]
    assert b"SERIAL_CONSOLE" not in amd64["dib.env"]
    assert "DIB_CLOUD_INIT_DATASOURCES='NoCloud, ConfigDrive, OpenStack, None'\n" in env


def test_dockerfile_differs_per_arch_only_where_it_should(workspace):
    _copy_examples(workspace)
    rendered = _render_all(workspace)
    amd = rendered["cuda-runtime:bookworm:x86_64"]["Dockerfile"].decode()
    ppc = rendered["cuda-runtime:bookworm:ppc64le"]["Dockerfile"].decode()
    assert 'LD_LIBRARY_PATH="/usr/lib/x86_64-linux-gnu"' in amd
    assert 'LD_LIBRARY_PATH="/usr/lib/powerpc64le-linux-gnu"' in ppc
    assert "apt-mark hold libnvtoolsext1" in ppc  # CUDA packages held: later layers cannot upgrade them
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=11.8"' in ppc
    assert "'main contrib non-free'" in ppc


def test_rpm_macros_set_dist_and_escape_percent(workspace, write):
    write("files/x.src.rpm", "x")
    write(
        "recipes/r.yaml",
        """
        name: r
        kind: rpm-rebuild
        arches: [ppc64le]
        build:
          release: "9"
          source: {path: ../files/x.src.rpm}
          defines: {vendor: "100% Kiln %{name}"}
          without: [tests]
        """,
    )
    macros = _render_all(workspace)["r:9:ppc64le"]["kiln.macros"].decode()
    assert "%dist .el9\n" in macros and "%rhel 9\n" in macros
    assert "%vendor 100%% Kiln %%{name}\n" in macros
    assert "%_without_tests --without-tests\n" in macros


# --- encoders: each is a test of "values never become code" in one language ---------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", '"plain"'),
        ('${file("/etc/passwd")}', '"$${file(\\"/etc/passwd\\")}"'),
        ("%{ if true }x%{ endif }", '"%%{ if true }x%%{ endif }"'),
        ('quote " and \\ backslash', '"quote \\" and \\\\ backslash"'),
        (["a", "${b}"], '["a", "$${b}"]'),
    ],
)
def test_hcl_encoder_never_interpolates(value, expected):
    assert encode_hcl(value) == expected


def test_shell_encoder_quotes_metacharacters():
    assert encode_sh("a; rm -rf / $(id) `id`") == "'a; rm -rf / $(id) `id`'"
    assert encode_sh(["x y", "z"]) == "'x y' z"


def test_dockerfile_encoder_blocks_expansion_and_line_breaks():
    assert encode_dockerfile('$HOME "x"') == '"\\$HOME \\"x\\""'
    with pytest.raises(ValueError):
        encode_dockerfile("a\nRUN evil")


def test_rpm_macro_encoder_doubles_percent_and_refuses_newlines():
    assert encode_rpm_macro("%{_bindir}") == "%%{_bindir}"
    with pytest.raises(ValueError):
        encode_rpm_macro("x\n%define evil 1")


# --- template errors and the finalize rule ---------------------------------------------------------------


def _one_dib_target(workspace: Workspace, write):
    write(
        "recipes/g.yaml",
        "name: g\nkind: guest-image\narches: [x86_64]\n"
        "build: {builder: dib, distro: debian, release: bookworm}\n",
    )
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    return targets[0]


def test_template_that_emits_an_unencoded_value_fails_naming_template_and_line(workspace, write):
    template = workspace.templates_dir / "dib/environment.j2"
    template.write_text("# header\nDIB_RELEASE={{ build.release }}\n")
    target = _one_dib_target(workspace, write)
    with pytest.raises(InvalidInput) as caught:
        render_target(target, workspace.templates_dir)
    message = str(caught.value)
    assert message.startswith("templates/dib/environment.j2:2: ")
    assert "without an encoding filter" in message


def test_template_syntax_error_names_template_and_line(workspace, write):
    target = _one_dib_target(workspace, write)
    (workspace.templates_dir / "dib/environment.j2").write_text("ok\n\n{% if %}\n")
    from builder.render import clear_caches

    clear_caches()
    with pytest.raises(InvalidInput) as caught:
        render_target(target, workspace.templates_dir)
    assert str(caught.value).startswith("templates/dib/environment.j2:3: ")


def test_undefined_variable_in_a_template_is_an_error_not_an_empty_string(workspace, write):
    target = _one_dib_target(workspace, write)
    (workspace.templates_dir / "dib/environment.j2").write_text("X={{ build.no_such_key | sh }}\n")
    from builder.render import clear_caches

    clear_caches()
    with pytest.raises(InvalidInput, match="no_such_key"):
        render_target(target, workspace.templates_dir)


def test_sandbox_blocks_attribute_escapes_in_templates(workspace, write):
    target = _one_dib_target(workspace, write)
    (workspace.templates_dir / "dib/environment.j2").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() | json }}\n"
    )
    from builder.render import clear_caches

    clear_caches()
    with pytest.raises(InvalidInput):
        render_target(target, workspace.templates_dir)


def test_recipe_values_are_rendered_as_data_even_when_they_look_like_jinja(workspace, write):
    """Loading refuses template syntax; this checks the second wall: rendering never evaluates data."""
    target = _one_dib_target(workspace, write)
    hostile = "{{ ''.__class__ }}{% import os %}"
    # As a bug upstream of rendering would: the templates read the target's JSON form.
    object.__setattr__(target, "build_json", {**target.build_json, "env": {"DIB_X": hostile}})
    env_file = {f.path: f.content for f in render_target(target, workspace.templates_dir)}["dib.env"].decode()
    assert f"DIB_X={shlex.quote(hostile)}\n" in env_file


@pytest.fixture(autouse=True)
def _fresh_environment():
    from builder.render import clear_caches

    clear_caches()
    yield
    clear_caches()


# --- packer validate: Debian's packer 1.6.6 accepts what Kiln renders -----------------------------------


PACKER_ISO = """
name: from-iso
kind: guest-image
arches: [x86_64, ppc64le]
build:
  builder: packer
  distro: debian
  release: bookworm
  iso:
    url: http://127.0.0.1:8000/debian-12-netinst.iso
    checksum: sha256:{sha}
    answer_file: ../files/preseed.cfg
    boot_command: ["<esc><wait>", "auto url=@@HTTP@@/preseed.cfg<enter>"]
  provisioners:
    - file: {{source: ../files/motd, destination: /tmp/motd}}
    - script: ../files/setup.sh
    - shell: ["echo '${{HOME}}' > /tmp/home"]
"""


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed (make test installs it)")
@pytest.mark.parametrize("arch", ["x86_64", "ppc64le"])
@pytest.mark.parametrize("recipe", ["examples", "iso"])
def test_packer_validate_accepts_rendered_templates(tmp_path, workspace, write, arch, recipe):
    if recipe == "examples":
        _copy_examples(workspace)
        target_id = f"debian-12-packer:bookworm:{arch}"
    else:
        write("files/preseed.cfg", "d-i debian-installer/locale string en_US\n")
        write("files/motd", "hello\n")
        write("files/setup.sh", "#!/bin/sh\ntrue\n")
        write("recipes/iso.yaml", PACKER_ISO.format(sha="ab" * 32))
        target_id = f"from-iso:bookworm:{arch}"
    targets, problems = load_targets([workspace.recipes_dir], workspace)
    assert problems == []
    target = {t.id: t for t in targets}[target_id]
    out = tmp_path / "render"
    out.mkdir()
    for item in render_target(target, workspace.templates_dir):
        (out / item.path).parent.mkdir(parents=True, exist_ok=True)
        (out / item.path).write_bytes(item.content)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"")
    base_var = ["-var", f"base_image={base}"] if recipe == "examples" else []
    result = subprocess.run(
        [
            "packer",
            "validate",
            *base_var,
            "-var",
            f"ssh_private_key_file={key}",
            "-var",
            f"workspace={workspace.root}",
            "image.pkr.hcl",
        ],
        cwd=out,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    hcl = (out / "image.pkr.hcl").read_text()
    assert f'qemu_binary      = "{"qemu-system-ppc64" if arch == "ppc64le" else "qemu-system-x86_64"}"' in hcl
    if recipe == "iso":
        assert '"auto url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/preseed.cfg<enter>"' in hcl
        assert "\"echo '$${HOME}' > /tmp/home\"" in hcl  # HCL interpolation escaped
