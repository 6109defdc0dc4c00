"""``build.env`` reaches a build tool only with the names its kind lists (``DIB_*`` and a few), never
the ones that make a shell, the loader or an interpreter run code; and ``kiln build --dry-run`` shows
the whole environment each command gets, secrets masked, in its text and its JSON."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from builder.cli import main
from builder.errors import InvalidInput
from builder.recipe import tool_env
from builder.recipes import RecipeLoader
from builder.workspace import Workspace
from tests.support.recipes import MINIMAL_GUEST, Write

IPA = "name: i\nkind: ipa-ramdisk\narches: [x86_64]\nbuild:\n  release: bookworm\n"
DANGEROUS = [
    "BASH_ENV", "ENV", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONSTARTUP", "PYTHONPATH", "GIT_SSH_COMMAND",
    "GIT_CONFIG_GLOBAL", "PATH", "HOME", "IFS", "SHELLOPTS", "PS4", "PROMPT_COMMAND", "BASH_FUNC_X",
]  # fmt: skip


def _problems(workspace: Workspace, write: Write, text: str) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        RecipeLoader(workspace).load(write("recipes/x.yaml", text))
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("name", DANGEROUS)
@pytest.mark.parametrize("recipe", [MINIMAL_GUEST, IPA], ids=["dib-guest", "ipa"])
def test_a_dangerous_name_in_build_env_is_refused_at_its_key(workspace, write, monkeypatch, recipe, name):
    monkeypatch.chdir(workspace.root)
    [problem] = _problems(workspace, write, recipe + f"  env:\n    DIB_OK: x\n    {name}: /tmp/x\n")
    line = recipe.count("\n") + 3
    assert problem.startswith(
        f"recipes/x.yaml:{line}:5: build.env.{name}: {name} is never passed to a build tool"
    )
    assert "build.env takes DIB_*" in problem


def test_bash_env_in_a_guest_recipe_fails_kiln_validate(workspace, write, capsys):
    write("recipes/g.yaml", MINIMAL_GUEST + "  env:\n    BASH_ENV: /tmp/payload.sh\n")
    assert main(["--root", str(workspace.root), "validate"]) == 1
    assert "recipes/g.yaml:9:5: build.env.BASH_ENV: BASH_ENV is never passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("recipe", "tool"),
    [(MINIMAL_GUEST, "disk-image-create"), (IPA, "ironic-python-agent-builder")],
    ids=["dib-guest", "ipa"],
)
def test_a_name_off_the_kinds_list_is_refused_naming_what_it_takes(
    workspace, write, monkeypatch, recipe, tool
):
    monkeypatch.chdir(workspace.root)
    [problem] = _problems(workspace, write, recipe + "  env:\n    http_proxy_X: x\n    FOO: y\n")[-1:]
    assert f"build.env.FOO: FOO is not passed to {tool}: build.env takes DIB_*" in problem


def test_dib_settings_that_name_a_host_program_are_refused(workspace, write, monkeypatch):
    monkeypatch.chdir(workspace.root)
    for name in ("DIB_PYTHON_EXEC", "DIB_GZIP_BIN", "DIB_PYTHON_LOGGING_CONFIG_FILE"):
        [problem] = _problems(workspace, write, MINIMAL_GUEST + f"  env:\n    {name}: /tmp/x\n")
        assert f"{name} is never passed to a build tool" in problem


def test_what_each_kind_lists_is_accepted(workspace, write):
    guest = RecipeLoader(workspace).load(write("recipes/g.yaml", MINIMAL_GUEST + "  env:\n    DIB_X: '1'\n"))
    assert guest.recipe.build.env == {"DIB_X": "1"}  # type: ignore[attr-defined]
    ipa = IPA + "  env:\n    DIB_X: '1'\n    IPA_REMOVE_FIRMWARE: amdgpu\n"
    loaded = RecipeLoader(workspace).load(write("recipes/i.yaml", ipa))
    assert loaded.recipe.build.env == {"DIB_X": "1", "IPA_REMOVE_FIRMWARE": "amdgpu"}  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="IPA_REMOVE_FIRMWARE is not passed to disk-image-create"):
        RecipeLoader(workspace).load(
            write("recipes/g.yaml", MINIMAL_GUEST + "  env:\n    IPA_REMOVE_FIRMWARE: x\n")
        )


def test_the_dangerous_names_are_refused_even_when_a_kind_lists_them():
    class Build(BaseModel):
        env: tool_env("a-tool", ("BASH_ENV", "LD_PRELOAD", "GIT_*", "X"))  # type: ignore[valid-type]

    assert Build(env={"X": "1"}).env == {"X": "1"}
    for name in ("BASH_ENV", "LD_PRELOAD", "GIT_DIR"):
        with pytest.raises(ValidationError, match=f"{name} is never passed to a build tool"):
            Build(env={name: "1"})


def test_a_variant_cannot_bring_a_refused_name_either(workspace, write, monkeypatch):
    monkeypatch.chdir(workspace.root)
    text = MINIMAL_GUEST.replace("build:", "matrix:\n  variants:\n    v: {env: {LD_PRELOAD: /x.so}}\nbuild:")
    [problem] = _problems(workspace, write, text)
    assert "matrix.variants.v.env.LD_PRELOAD: LD_PRELOAD is never passed" in problem


# --- the dry run shows the whole environment ----------------------------------------------------------------


def test_the_dry_run_shows_the_whole_environment_a_command_gets_with_secrets_masked(
    workspace, write, tmp_path, monkeypatch, capsys
):
    write("recipes/g.yaml", MINIMAL_GUEST + "  env:\n    DIB_FROM_RECIPE: mine\n")
    monkeypatch.setenv("KILN_TEST_INHERITED", "from-the-caller")
    monkeypatch.setenv("OS_PASSWORD", "pw")  # shorter than the masking layer's minimum: masked by name
    monkeypatch.setenv("MIRROR_URL", "http://user:hunter2-pass@mirror/x")
    argv = ["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite"), "build", "g", "--dry-run"]
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    [command] = json.loads(out)["targets"][0]["plan"]["commands"]
    env = command["env"]
    assert env["KILN_TEST_INHERITED"] == "from-the-caller"  # inherited, not only Kiln's own part
    assert env["PATH"] and env["DIB_FROM_RECIPE"] == "mine" and env["DIB_RELEASE"] == "bookworm"
    assert env["OS_PASSWORD"] == "***" and env["MIRROR_URL"] == "http://***@mirror/x"
    assert {"DIB_FROM_RECIPE", "DIB_RELEASE", "ELEMENTS_PATH"} <= set(command["env_set_by_kiln"])
    assert "KILN_TEST_INHERITED" not in command["env_set_by_kiln"]
    assert "hunter2-pass" not in out

    assert main(argv) == 0
    text = capsys.readouterr().out
    assert " env -i \\\n" in text
    assert "    KILN_TEST_INHERITED=from-the-caller \\\n" in text and "    DIB_FROM_RECIPE=mine \\\n" in text
    assert "'OS_PASSWORD=***'" in text and "hunter2-pass" not in text
    assert "\n    disk-image-create -a amd64" in text
