"""Malformed recipes are refused with errors that say exactly where: file:line:col: key.path: message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from builder.errors import InvalidInput, Location, Problem, format_key_path
from builder.pipeline.graph import load_targets
from builder.recipes import RecipeLoader
from builder.workspace import Workspace
from tests.support.recipes import MINIMAL_GUEST, Write

GUEST = MINIMAL_GUEST
PACKER = """\
name: p
kind: guest-image
arches: [x86_64]
build:
  builder: packer
  distro: debian
  release: bookworm
"""
RPM_URL = """\
name: r
kind: rpm-rebuild
arches: [ppc64le]
build:
  release: "9"
  source:
    url: https://example.com/x.src.rpm
"""


@pytest.fixture(autouse=True)
def _in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace.root)  # display paths become recipes/...


def problems(workspace: Workspace, path: Path) -> list[Problem]:
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(path)
    return info.value.problems


def only_problem(workspace: Workspace, path: Path) -> Problem:
    found = problems(workspace, path)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


# Each case has exactly one problem, printed as "recipes/case.yaml:<line>:<col>: <key.path>: <message>".
CASES = [
    pytest.param(
        GUEST + "descripton: hello\n",
        "8:1: descripton: unknown key (did you mean 'description'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        GUEST + "  pakages: [curl]\n",
        "8:3: build.pakages: unknown key (did you mean 'packages'?)",
        id="unknown-nested-key",
    ),
    pytest.param(
        PACKER + "  base: {recipe: g}\n  provisioners:\n    - shel: [ls]\n",
        "10:7: build.provisioners[0].shel: unknown key (did you mean 'shell'?)",
        id="unknown-key-in-list-item",
    ),
    pytest.param(
        GUEST + "publish:\n  glance:\n    visibility: secret\n",
        "10:5: publish.glance.visibility: must be one of public, private, shared, community (got 'secret')",
        id="bad-visibility",
    ),
    pytest.param(
        GUEST.replace("[x86_64]", "[x86_64, sparc]"),
        "3:18: arches[1]: unknown architecture 'sparc'; known: x86_64, ppc64le, aarch64"
        " (or their rpm/Debian/OCI spellings)",
        id="bad-arch-at-index-1",
    ),
    pytest.param(GUEST.replace("[x86_64]", "[]"), "3:1: arches: must not be empty", id="empty-arches"),
    pytest.param(
        GUEST.replace("[x86_64]", "[x86_64, amd64]"),
        "3:1: arches: x86_64 is listed twice",
        id="duplicate-arch",
    ),
    pytest.param(
        GUEST.replace("name: g", "name: Bad_Name"),
        "1:1: name: must be lowercase letters, digits and '-', at most 63 characters (got 'Bad_Name')",
        id="bad-name",
    ),
    pytest.param(
        GUEST.replace("kind: guest-image", "kind: guest-imag"),
        "2:1: kind: must be one of guest-image, ipa-ramdisk, rpm-rebuild, container (got 'guest-imag');"
        " did you mean 'guest-image'?",
        id="unknown-kind",
    ),
    pytest.param(
        "name: g\nkind: guest-image\narches: [x86_64]\n", "1:1: build: required key is missing", id="no-build"
    ),
    pytest.param(
        GUEST.replace("  release: bookworm\n", ""),
        "4:1: build.release: required key is missing",
        id="no-release",
    ),
    pytest.param(
        GUEST.replace("release: bookworm", "release: Bookworm"),
        "7:3: build.release: must be a release name or version: lowercase letters, digits, '.', '-'"
        " (got 'Bookworm')",
        id="bad-release",
    ),
    pytest.param(
        GUEST + "publish:\n  glance:\n    keep: three\n",
        "10:5: publish.glance.keep: must be an integer (got 'three')",
        id="keep-word",
    ),
    pytest.param(
        GUEST + "publish:\n  glance:\n    keep: 0\n",
        "10:5: publish.glance.keep: must be >= 1 (got 0)",
        id="keep-0",
    ),
    pytest.param(
        GUEST + "publish:\n  glance:\n    keep: 500\n",
        "10:5: publish.glance.keep: must be <= 100 (got 500)",
        id="keep-500",
    ),
    pytest.param(
        GUEST + "verify:\n  boot:\n    enabled: maybe\n",
        "10:5: verify.boot.enabled: must be true or false (got 'maybe')",
        id="not-bool",
    ),
    pytest.param(
        GUEST.replace("builder: dib", "builder: docker"),
        "5:3: build.builder: must be one of dib, packer (got 'docker')",
        id="builder-docker",
    ),
    pytest.param(
        PACKER + "  base: {recipe: g}\n  provisioners:\n    - shell: [ls]\n      script: run.sh\n",
        "10:7: build.provisioners[0]: needs exactly one of shell, script, file (got shell, script)",
        id="provisioner-shell-and-script",
    ),
    pytest.param(
        PACKER + "  base: {recipe: g}\n  provisioners:\n    - {}\n",
        "10:7: build.provisioners[0]: needs exactly one of shell, script, file (got none)",
        id="provisioner-empty",
    ),
    pytest.param(
        RPM_URL,
        "6:3: build.source: url needs sha256 so that the download can be checked",
        id="srpm-url-no-sha256",
    ),
    pytest.param(
        GUEST + "  env:\n    lower: x\n",
        "9:5: build.env.lower: must be an environment variable name (A-Z, 0-9, _) (got 'lower')",
        id="env-name-lowercase",
    ),
    pytest.param(
        "name: c\nkind: container\narches: [x86_64]\nbuild:\n  release: bookworm\n  cuda: 12\n",
        "6:3: build.cuda: must be a string (got 12)",
        id="cuda-number",
    ),
    pytest.param(
        GUEST + "  release: trixie\n",
        "8:3: build.release: duplicate key (the first one would be ignored)",
        id="duplicate-yaml-key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_malformed_recipe_is_reported_at_file_line_column_and_key(
    workspace: Workspace, write: Write, text, expected
):
    write("recipes/run.sh", "true\n")
    problem = only_problem(workspace, write("recipes/case.yaml", text))
    position, key, _ = expected.split(": ", 2)
    line, column = (int(n) for n in position.split(":"))
    assert problem.location == Location("recipes/case.yaml", line, column)
    assert format_key_path(problem.key_path) == key
    assert str(problem) == f"recipes/case.yaml:{expected}"


def test_python_tag_is_refused_at_its_value(workspace: Workspace, write: Write):
    # The rest of the message is PyYAML's (why it has no constructor): not asserted.
    path = write("recipes/case.yaml", GUEST + "description: !!python/name:os.system ls\n")
    problem = only_problem(workspace, path)
    assert problem.location == Location("recipes/case.yaml", 8, 14)
    assert problem.key_path == ("description",)
    assert problem.message.startswith("unsupported YAML value: ")


def test_every_problem_in_a_file_is_reported_not_only_the_first(workspace: Workspace, write: Write):
    path = write("recipes/x.yaml", GUEST + "  size_gb: 0\npublish:\n  glance:\n    visibility: nope\n")
    found = {str(p) for p in problems(workspace, path)}
    assert found == {
        "recipes/x.yaml:8:3: build.size_gb: must be >= 1 (got 0)",
        "recipes/x.yaml:11:5: publish.glance.visibility: must be one of public, private, shared, community"
        " (got 'nope')",
    }


def test_missing_kind_names_kind_and_the_choices(workspace: Workspace, write: Write):
    problem = only_problem(workspace, write("recipes/x.yaml", GUEST.replace("kind: guest-image\n", "")))
    assert str(problem) == (
        "recipes/x.yaml:1:1: kind: required key is missing (one of guest-image, ipa-ramdisk, rpm-rebuild,"
        " container)"
    )


def test_missing_kind_carries_kind_as_key_path(workspace: Workspace, write: Write):
    problem = only_problem(workspace, write("recipes/x.yaml", GUEST.replace("kind: guest-image\n", "")))
    assert problem.key_path == ("kind",)
    assert problem.as_json()["key"] == "kind"


def test_missing_builder_in_guest_image_points_at_build(workspace: Workspace, write: Write):
    problem = only_problem(workspace, write("recipes/x.yaml", GUEST.replace("  builder: dib\n", "")))
    assert problem.location is not None and (problem.location.line, problem.location.column) == (4, 1)
    assert problem.key_path == ("build", "builder")
    assert str(problem).startswith("recipes/x.yaml:4:1: build.builder: required key is missing")


def test_missing_builder_lists_the_builders(workspace: Workspace, write: Write):
    problem = only_problem(workspace, write("recipes/x.yaml", GUEST.replace("  builder: dib\n", "")))
    assert str(problem) == "recipes/x.yaml:4:1: build.builder: required key is missing (one of dib, packer)"


PACKER_SOURCES = {
    "both": PACKER
    + "  base:\n    recipe: g\n  iso:\n    url: https://example.com/d.iso\n    checksum: none\n",
    "neither": PACKER,
}


@pytest.mark.parametrize("case", sorted(PACKER_SOURCES))
def test_packer_build_needs_exactly_one_of_base_or_iso(workspace: Workspace, write: Write, case):
    problem = only_problem(workspace, write("recipes/x.yaml", PACKER_SOURCES[case]))
    assert problem.location is not None and (problem.location.line, problem.location.column) == (4, 1)
    assert problem.message == "needs exactly one of base (another recipe's image) or iso"


@pytest.mark.parametrize("case", sorted(PACKER_SOURCES))
def test_packer_source_error_key_path_is_build_not_the_union_tag(workspace: Workspace, write: Write, case):
    problem = only_problem(workspace, write("recipes/x.yaml", PACKER_SOURCES[case]))
    assert problem.key_path == ("build",)
    assert (
        str(problem) == "recipes/x.yaml:4:1: build: needs exactly one of base (another recipe's image) or iso"
    )


def test_yaml_syntax_error_reports_the_line_of_the_error(workspace: Workspace, write: Write):
    path = write("recipes/x.yaml", GUEST.replace("  distro: debian\n", "  distro: debian: x\n"))
    problem = only_problem(workspace, path)
    assert problem.location is not None
    assert (problem.location.file, problem.location.line, problem.location.column) == (
        "recipes/x.yaml",
        6,
        17,
    )
    assert problem.key_path == ()
    # What follows is libyaml's wording ("mapping values are not allowed here"): not asserted.
    assert str(problem).startswith("recipes/x.yaml:6:17: YAML syntax error: ")


def test_error_inherited_from_defaults_points_into_defaults_file(workspace: Workspace, write: Write):
    write("recipes/defaults.yaml", "guest-image:\n  publish:\n    glance:\n      visibility: secret\n")
    problem = only_problem(workspace, write("recipes/guest/x.yaml", GUEST))
    assert problem.location is not None and problem.location.file == "recipes/defaults.yaml"
    assert problem.location.line == 4
    assert str(problem) == (
        "recipes/defaults.yaml:4:7: publish.glance.visibility: must be one of public, private, shared,"
        " community (got 'secret')"
    )


def test_unknown_key_in_defaults_points_into_defaults_file_with_suggestion(
    workspace: Workspace, write: Write
):
    write("recipes/defaults.yaml", "guest-image:\n  verify:\n    boot:\n      timeot_s: 5\n")
    problem = only_problem(workspace, write("recipes/guest/x.yaml", GUEST))
    assert (
        str(problem)
        == "recipes/defaults.yaml:4:7: verify.boot.timeot_s: unknown key (did you mean 'timeout_s'?)"
    )


def test_unknown_kind_section_in_defaults_is_refused(workspace: Workspace, write: Write):
    write("recipes/defaults.yaml", "guest-image: {}\ncontainr:\n  arches: [x86_64]\n")
    problem = only_problem(workspace, write("recipes/x.yaml", GUEST))
    assert str(problem) == (
        "recipes/defaults.yaml:2:1: containr: must be one of guest-image, ipa-ramdisk, rpm-rebuild, container"
        " (got 'containr'); did you mean 'container'?"
    )


def test_error_in_extends_base_points_at_the_base_file(workspace: Workspace, write: Write):
    write("recipes/bases/_dib.yaml", GUEST.replace("name: g\n", "") + "  size_gb: 0\n")
    problem = only_problem(workspace, write("recipes/guest/x.yaml", "extends: ../bases/_dib.yaml\nname: x\n"))
    assert str(problem) == "recipes/bases/_dib.yaml:7:3: build.size_gb: must be >= 1 (got 0)"
    assert problem.key_path == ("build", "size_gb")


def test_extends_cycle_is_refused_naming_the_file_that_closes_it(workspace: Workspace, write: Write):
    write("recipes/_a.yaml", "extends: _b.yaml\nname: a\n")
    write("recipes/_b.yaml", "kind: guest-image\nextends: _a.yaml\n")
    problem = only_problem(workspace, write("recipes/x.yaml", "extends: _a.yaml\nname: x\n"))
    assert str(problem) == "recipes/_b.yaml:2:1: extends: extends itself through recipes/_a.yaml"


def test_recipe_extending_itself_is_refused(workspace: Workspace, write: Write):
    problem = only_problem(workspace, write("recipes/x.yaml", "name: x\nextends: x.yaml\n"))
    assert str(problem) == "recipes/x.yaml:2:1: extends: extends itself through recipes/x.yaml"


def test_extends_to_a_missing_file_is_refused(workspace: Workspace, write: Write):
    problem = only_problem(workspace, write("recipes/x.yaml", "extends: nope.yaml\n"))
    assert (
        str(problem)
        == "recipes/x.yaml:1:1: extends: 'nope.yaml' does not exist (looked at recipes/nope.yaml)"
    )


def test_overlong_extends_chain_is_refused(workspace: Workspace, write: Write):
    write("recipes/_0.yaml", GUEST)
    for i in range(1, 11):
        write(f"recipes/_{i}.yaml", f"extends: _{i - 1}.yaml\n")
    found = problems(workspace, workspace.root / "recipes/_10.yaml")
    assert [p.key_path for p in found] == [("extends",)]
    assert "more than 8 levels of extends" in found[0].message


GUEST_VARIANT = GUEST + "matrix:\n  variants:\n    big:\n      firmware: efi\n"


def test_variant_override_error_points_at_the_variant_key(workspace: Workspace, write: Write):
    found = problems(workspace, write("recipes/x.yaml", GUEST_VARIANT))
    assert str(found[0]) == (
        "recipes/x.yaml:11:7: matrix.variants.big.firmware: must be one of bios, uefi (got 'efi')"
    )


def test_variant_override_error_is_reported_once_without_other_builders_errors(
    workspace: Workspace, write: Write
):
    found = problems(workspace, write("recipes/x.yaml", GUEST_VARIANT))
    assert [str(p) for p in found] == [
        "recipes/x.yaml:11:7: matrix.variants.big.firmware: must be one of bios, uefi (got 'efi')"
    ]


@pytest.mark.parametrize(
    ("kind", "override", "message"),
    [
        ("container", 'cuda: "x"', "cuda: must be a version like '11.8' (got 'x')"),
        ("ipa-ramdisk", "compression: zstd", "compression: must be one of gzip, xz (got 'zstd')"),
    ],
)
def test_variant_override_error_points_at_variant_key_for_every_kind(
    workspace: Workspace, write: Write, kind, override, message
):
    text = f"name: v\nkind: {kind}\narches: [x86_64]\nbuild:\n  release: bookworm\n"
    text += f"matrix:\n  variants:\n    slim:\n      {override}\n"
    problem = only_problem(workspace, write("recipes/x.yaml", text))
    assert str(problem) == f"recipes/x.yaml:9:7: matrix.variants.slim.{message}"


# --- capability rules (after validation, when recipes expand into targets) ------------------------


def expand_problems(workspace: Workspace, path: Path) -> list[Problem]:
    targets, found = load_targets([path], workspace)
    assert targets == []
    return found


def test_cuda_newer_than_12_4_is_refused_for_ppc64le_at_build_cuda(workspace: Workspace, write: Write):
    text = textwrap.dedent("""\
        name: c
        kind: container
        arches: [x86_64, ppc64le]
        build:
          distro: ubuntu
          release: "22.04"
          cuda: "12.8"
        """)
    found = expand_problems(workspace, write("recipes/c.yaml", text))
    assert [str(p) for p in found] == [
        "recipes/c.yaml:7:3: build.cuda: cannot build for ppc64le (target c:22.04:ppc64le): NVIDIA dropped"
        " ppc64le after CUDA 12.4; use 12.4 or older for ppc64le"
    ]


def test_cuda_12_4_is_still_allowed_on_ppc64le(workspace: Workspace, write: Write):
    text = "name: c\nkind: container\narches: [ppc64le]\nbuild:\n  distro: ubuntu\n  release: '22.04'\n"
    targets, found = load_targets([write("recipes/c.yaml", text + "  cuda: '12.4'\n")], workspace)
    assert found == []
    assert [t.id for t in targets] == ["c:22.04:ppc64le"]


def test_aarch64_guest_without_uefi_is_refused_at_build_firmware(workspace: Workspace, write: Write):
    found = expand_problems(workspace, write("recipes/a.yaml", GUEST.replace("[x86_64]", "[aarch64]")))
    assert len(found) == 1
    assert found[0].key_path == ("build", "firmware")
    # firmware is not written: the nearest written ancestor (build:) is the location
    assert str(found[0]) == (
        "recipes/a.yaml:4:1: build.firmware: cannot build for aarch64 (target g:bookworm:aarch64):"
        " aarch64 guests boot with UEFI only; use firmware: uefi"
    )


def test_aarch64_guest_with_explicit_bios_points_at_the_firmware_line(workspace: Workspace, write: Write):
    text = GUEST.replace("[x86_64]", "[aarch64]") + "  firmware: bios\n"
    found = expand_problems(workspace, write("recipes/a.yaml", text))
    assert [(p.location.line, p.location.column) for p in found if p.location] == [(8, 3)]


def test_a_misspelled_dib_element_is_refused_naming_it_and_the_closest_real_ones(
    workspace: Workspace, write: Write
):
    text = textwrap.dedent("""\
        name: ipa
        kind: ipa-ramdisk
        arches: [x86_64]
        build:
          release: bookworm
          elements: [dynamic-login, dhcp-all-interface]
        """)
    found = expand_problems(workspace, write("recipes/ipa.yaml", text))
    [problem] = [str(p) for p in found]
    assert problem.startswith(
        "recipes/ipa.yaml:6:29: build.elements[1]: unknown DIB element 'dhcp-all-interface' (not in "
        "elements/, diskimage-builder or ironic-python-agent-builder); closest: dhcp-all-interfaces"
    )
