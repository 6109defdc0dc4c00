"""Empty or odd arguments where the CLI takes a path (or an id): invalid input (1) naming the argument,
or argparse's usage error (2), never exit 70 (`kiln verify ''` was `PosixPath('.') has an empty name`)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from builder.cli import main

ODD = {"empty": "", "newline": "\n", "long": "a" * 5000}
# Each command line with P where a path (or an id, a name) goes; run from a scratch directory.
COMMANDS = [
    "validate P",
    "plan P",
    "render P -o out",
    "render -o P",
    "build P --dry-run",
    "pipeline -o P",
    "publish P",
    "schema -o P",
    "verify P",
    "verify artifact --provenance P",
    "verify artifact --key P",
    "sbom diff P new.json",
    "sbom diff old.json P",
    "history P",  # a recipe name, not a path: "no builds recorded" (0) is an answer too
    "show P",
    "report --html P",
    "rpm missing --from http://127.0.0.1:9/a/ --to http://127.0.0.1:9/b/ --write-recipes P",
    "rpm rebuild P --dry-run",
    "rpm rebuild foo.src.rpm --trusted-key P --dry-run",
    "--root P validate",
    "--ledger P plan",
    "--site P build --dry-run",
]


def _kiln(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return code, err.getvalue()


@pytest.mark.parametrize("value", list(ODD.values()), ids=list(ODD))
@pytest.mark.parametrize("command", COMMANDS)
def test_an_odd_path_argument_is_exit_1_or_2_never_70(workspace, tmp_path, monkeypatch, command, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILN_SITE", raising=False)
    monkeypatch.setenv("KILN_BUILD_ROOT", str(tmp_path / "build"))
    (tmp_path / "artifact").write_text("x")
    words = command.split()
    argv = [value if w == "P" else w for w in words]
    if "--root" not in words:
        argv = ["--root", str(workspace.root), *argv]
    if "--ledger" not in words:
        argv = ["--ledger", str(tmp_path / "ledger.sqlite"), *argv]
    code, err = _kiln(argv)
    allowed = (0, 1, 2) if words[0] == "history" else (1, 2)
    assert code in allowed, f"kiln {command!r} with {value[:20]!r}: exit {code}: {err[-400:]}"
    assert "internal error" not in err and "Traceback" not in err
    assert len(err) < 2000  # the message quotes a long value shortened


def test_kiln_verify_with_an_empty_argument_is_a_usage_error_naming_it(capsys):
    code, err = _kiln(["verify", ""])
    assert code == 1 and "kiln: error: ARTIFACT: an empty path" in err


@pytest.mark.parametrize("given", [".", "/", "./"])
def test_kiln_verify_of_a_path_without_a_name_is_invalid_input(tmp_path, monkeypatch, given):
    monkeypatch.chdir("/" if given == "/" else tmp_path)
    code, err = _kiln(["--root", str(tmp_path), "verify", given, "--key", str(tmp_path / "k")])
    assert code in (1, 4), err  # "." is the directory it stands for: checked, and it has no statement
    assert "internal error" not in err


@pytest.mark.parametrize("build", ["1" * 30, "\u00b2", "\u0663", "-1", "1.0"])
def test_a_build_id_that_is_not_a_small_number_is_invalid_input(tmp_path, build):
    for argv in (["show", build], ["sbom", "diff", build, build]):
        code, err = _kiln(["--root", str(tmp_path), "--ledger", str(tmp_path / "l.sqlite"), *argv])
        assert code == 1, err
        assert "internal error" not in err


def test_a_huge_history_limit_is_invalid_input(tmp_path: Path):
    code, err = _kiln(["--ledger", str(tmp_path / "l.sqlite"), "history", "--limit", "9" * 30])
    assert code == 1 and "--limit" in err
