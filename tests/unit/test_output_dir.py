"""Kiln writes only below the output directory it was given: planted symlinks are refused, not
followed; files are replaced atomically; an unusable -o is a clear error, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main
from builder.outdir import write_below

GOOD = (
    "name: g\nkind: guest-image\narches: [x86_64]\nbuild: {builder: dib, distro: debian, release: bookworm}\n"
)


def _render(capsys, workspace, out: Path) -> tuple[int, str, str]:
    code = main(["--root", str(workspace.root), "render", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_symlink_planted_for_a_target_directory_is_refused_and_nothing_lands_outside(
    capsys, workspace, write, tmp_path
):
    write("recipes/g.yaml", GOOD)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "g_bookworm_x86_64").symlink_to(elsewhere)
    code, _, err = _render(capsys, workspace, out)
    assert code == 1
    assert "g_bookworm_x86_64: a symlink inside the output directory" in err
    assert list(elsewhere.iterdir()) == []


def test_a_planted_temporary_file_link_does_not_redirect_the_write(capsys, workspace, write, tmp_path):
    write("recipes/g.yaml", GOOD)
    out = tmp_path / "out"
    assert _render(capsys, workspace, out)[0] == 0
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target_dir = out / "g_bookworm_x86_64"
    for name in (".dib.env.tmp", "dib.env"):
        (target_dir / name).unlink(missing_ok=True)
        (target_dir / name).symlink_to(victim)
    assert _render(capsys, workspace, out)[0] == 0
    assert victim.read_text() == "precious\n"
    assert not (target_dir / "dib.env").is_symlink()  # replaced by the rendered file, not followed
    assert (target_dir / "dib.env").read_text().startswith("# Rendered by Kiln")


@pytest.mark.parametrize("given", ["a-file", "/proc/kiln-x"])
def test_an_output_that_cannot_be_a_directory_is_a_clear_error(capsys, workspace, write, tmp_path, given):
    write("recipes/g.yaml", GOOD)
    path = tmp_path / given if not given.startswith("/") else Path(given)
    if given == "a-file":
        path.write_text("not a directory\n")
    code, out, err = _render(capsys, workspace, path)
    assert code == 1, err
    assert str(path) in err and "Traceback" not in err
    assert out == "" or json.loads(out)["ok"] is False


def test_schema_into_a_missing_directory_is_a_clear_error(capsys, tmp_path):
    code = main(["schema", "-o", str(tmp_path / "missing" / "dir" / "x.json")])
    err = capsys.readouterr().err
    assert code == 1 and "missing/dir: no such directory" in err


def test_paths_that_climb_out_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="not a plain relative path"):
        write_below(tmp_path / "out", [("../escape", b"x", 0o644)])
    assert not (tmp_path / "escape").exists()
