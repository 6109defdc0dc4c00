"""Recipes Kiln writes itself (``kiln rpm missing --write-recipes``, ``kiln rpm rebuild``) are data
through the YAML emitter, validated before they are written; remote text cannot add a key, names are
rpm names, URLs carry no credentials; and ``kiln validate`` refuses credentials in a recipe's URL."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder.arch import Arch
from builder.cli import main
from builder.errors import InvalidInput
from builder.recipes import RecipeLoader
from builder.rpm.credentials import credentials_for, split_userinfo, without_userinfo
from builder.rpm.missing import Missing
from builder.rpm.written import adhoc_recipe, rebuild_recipes, write_recipes
from builder.workspace import PACKAGE_ROOT, Workspace

# The sourcerpm's version part holds a newline and YAML: formatted into the written recipe's comment
# line, it became a top-level `matrix:` whose variant turns the signature check off.
INJECTED_VERSION = "1.0\nmatrix:\n  variants:\n    pwn: {verify_signature: false}\n#"
SECRET = "s3cr3t-repo-pass"

# --- a loopback repo ----------------------------------------------------------------------------------------


def _primary(packages: list[tuple[str, str, str]]) -> bytes:
    """primary.xml.gz for (name, arch, sourcerpm) binary packages, version 1.0-1."""
    from xml.sax.saxutils import escape

    entries = "".join(
        f'<package type="rpm"><name>{name}</name><arch>{arch}</arch>'
        '<version epoch="0" ver="1.0" rel="1"/>'
        f'<checksum type="sha256" pkgid="YES">{hashlib.sha256(name.encode()).hexdigest()}</checksum>'
        f'<location href="Packages/{name}-1.0-1.{arch}.rpm"/>'
        f"<format><rpm:sourcerpm>{escape(source)}</rpm:sourcerpm></format></package>"
        for name, arch, source in packages
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
        f'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{len(packages)}">{entries}</metadata>\n'
    ).encode()
    return gzip.compress(xml, mtime=0)


def _repomd(primary: bytes) -> bytes:
    opened = gzip.decompress(primary)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">'
        '<data type="primary">'
        f'<checksum type="sha256">{hashlib.sha256(primary).hexdigest()}</checksum>'
        f'<open-checksum type="sha256">{hashlib.sha256(opened).hexdigest()}</open-checksum>'
        '<location href="repodata/primary.xml.gz"/>'
        f"<size>{len(primary)}</size><open-size>{len(opened)}</open-size>"
        "</data></repomd>\n"
    ).encode()


def _repo(packages: list[tuple[str, str, str]]) -> dict[str, bytes]:
    primary = _primary(packages)
    return {"repodata/repomd.xml": _repomd(primary), "repodata/primary.xml.gz": primary}


@pytest.fixture
def repos() -> Iterator[str]:
    """http://127.0.0.1:PORT/ with x86_64/ (foo, a source whose version carries YAML, and bar) and an
    empty ppc64le/."""
    files = {
        **{
            f"x86_64/{k}": v
            for k, v in _repo(
                [
                    ("foo", "x86_64", "foo-1.0-1.src.rpm"),
                    ("evil", "x86_64", f"evil-{INJECTED_VERSION}-1.src.rpm"),
                    ("bar", "x86_64", "bar-1.0-1.src.rpm"),
                ]
            ).items()
        },
        **{f"ppc64le/{k}": v for k, v in _repo([]).items()},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _written(directory: Path, workspace: Workspace) -> dict[str, object]:
    """Every recipe written into ``directory``, loaded by Kiln's own loader."""
    loader = RecipeLoader(workspace)
    return {p.name: loader.load(p).recipe for p in sorted(directory.glob("*.yaml"))}


# --- kiln rpm missing --write-recipes -----------------------------------------------------------------------


def test_a_sourcerpm_with_yaml_in_it_adds_no_key_to_a_written_recipe(repos, workspace, capsys):
    out = workspace.root / "recipes" / "rebuilds"
    code = main(
        ["--root", str(workspace.root), "rpm", "missing", "--from", f"http://{repos}/x86_64/",
         "--to", f"http://{repos}/ppc64le/", "--write-recipes", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code in (0, 4), err  # 4: the metadata reader refuses the odd version outright
    for name, recipe in _written(out, workspace).items():
        assert recipe.matrix.variants == {}, name  # type: ignore[attr-defined]
        assert recipe.build.verify_signature is True, name  # type: ignore[attr-defined]
        text = (out / name).read_text()
        assert [line for line in text.splitlines() if "pwn" in line and not line.startswith("#")] == []
    if code == 0:
        assert {"foo.yaml", "bar.yaml"} <= set(_written(out, workspace))


def test_credentials_in_the_urls_given_never_reach_a_written_recipe_or_the_output(repos, workspace, capsys):
    out = workspace.root / "recipes" / "rebuilds"
    code = main(
        ["--root", str(workspace.root), "rpm", "missing", "--from", f"http://kiln:{SECRET}@{repos}/x86_64/",
         "--to", f"http://kiln:{SECRET}@{repos}/ppc64le/", "--write-recipes", str(out), "--json"]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code in (0, 4)
    assert SECRET not in printed.out + printed.err
    for path in out.glob("*.yaml"):
        assert SECRET not in path.read_text() and "kiln:" not in path.read_text()


def _found(*sources: str, version: str = "1.0-1") -> list[Missing]:
    return [Missing(s, version, None, (s,)) for s in sources]


def _rebuild(found: list[Missing], **changes: str) -> tuple[list, list[str]]:
    settings = {
        "from_url": "http://h/el/9/x86_64/",
        "to_url": "http://h/el/9/ppc64le/",
        "source_repo": "http://h/el/9/source/",
        **changes,
    }
    return rebuild_recipes(found, arch=Arch.PPC64LE, **settings)


def test_remote_text_stays_inside_one_comment_line():
    [recipe], warnings = _rebuild(_found("foo", version=INJECTED_VERSION + "\u2028x\x85y"))
    lines = recipe.text.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../../schemas/recipe.schema.json"
    assert lines[1].startswith("# Written by `kiln rpm missing`: foo 1.0?matrix:?")
    assert all(line.startswith("#") for line in lines[:2]) and not any(x.startswith("#") for x in lines[2:])
    data = yaml.safe_load(recipe.text)
    assert list(data) == ["name", "kind", "description", "arches", "build"]
    assert data["build"] == {
        "source": {"package": "foo", "repo": "http://h/el/9/source/"},
        "distro": "el",
        "release": "9",
    }
    assert warnings == []


@pytest.mark.parametrize(
    "source",
    ["a b", "a/b", "../x", "-x", ".x", "a\x00b", "caf\u00e9", "x:1", "a'b", "a\nb", "x" * 129, ""],
    ids=repr,
)
def test_a_source_that_is_not_an_rpm_name_is_skipped_with_a_warning(source: str):
    recipes, warnings = _rebuild(_found(source, "good"))
    assert [r.package for r in recipes] == ["good"]
    [warning] = warnings
    assert "not an rpm package name" in warning and "\n" not in warning


def test_two_sources_with_one_recipe_name_write_the_first_and_warn_about_the_second():
    recipes, warnings = _rebuild(_found("Foo", "foo", "foo+"))
    assert [r.file_name for r in recipes] == ["foo.yaml"]
    assert len(warnings) == 2 and all("recipe name foo" in w for w in warnings)


def test_a_long_source_name_gets_a_recipe_name_that_validates():
    [recipe], _ = _rebuild(_found("p" * 128))
    assert recipe.file_name == "p" * 63 + ".yaml"


def test_a_recipe_that_does_not_validate_is_refused_naming_its_package_and_nothing_is_written(tmp_path):
    with pytest.raises(InvalidInput, match=r"the recipe for foo does not validate.*build\.release"):
        write_recipes(
            _found("foo"), tmp_path / "out", from_url="http://h/a/", to_url="http://h/b/",
            source_repo="http://h/s/", arch=Arch.PPC64LE, release="9\nmatrix: {}",
        )  # fmt: skip
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_written_urls_lose_their_credentials(tmp_path):
    warned: list[str] = []
    [path] = write_recipes(
        _found("foo"), tmp_path / "out", from_url=f"http://u:{SECRET}@h/el/9/x86_64/",
        to_url=f"https://tok{SECRET}@h/el/9/ppc64le/", source_repo=f"https://u:{SECRET}@h/el/9/source/",
        arch=Arch.PPC64LE, warn=warned.append,
    )  # fmt: skip
    text = path.read_text()
    assert SECRET not in text
    assert yaml.safe_load(text)["build"]["source"]["repo"] == "https://h/el/9/source/"
    assert "in http://h/el/9/x86_64/ but nothing in https://h/el/9/ppc64le/" in text


def test_write_recipes_never_writes_through_a_planted_symlink(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (out / "foo.yaml").symlink_to(victim)
    [path] = write_recipes(
        _found("foo"), out, from_url="http://h/a/", to_url="http://h/b/", source_repo="http://h/s/",
        arch=Arch.PPC64LE,
    )  # fmt: skip
    assert victim.read_text() == "keep" and not path.is_symlink()


# --- kiln rpm rebuild ---------------------------------------------------------------------------------------


def _rebuild_cli(workspace: Workspace, tmp_path: Path, *args: str) -> int:
    argv = ["--root", str(workspace.root), "--ledger", str(tmp_path / "l.sqlite"), "rpm", "rebuild", *args]
    try:
        return main([*argv, "--arch", "ppc64le", "--dry-run"])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "repo",
    [
        "http://h/x'}\nmatrix: {variants: {pwn: {verify_signature: false}}}\n#",
        "http://h/x',verify_signature:false,y:'",
    ],
    ids=["newline", "quote"],
)
def test_rpm_rebuild_repo_text_cannot_add_a_key_to_the_ad_hoc_recipe(workspace, tmp_path, capsys, repo):
    code = _rebuild_cli(workspace, tmp_path, "foo", "--repo", repo)
    recipe = workspace.root / ".kiln" / "adhoc" / "foo" / "foo.yaml"
    if recipe.exists():
        data = yaml.safe_load(recipe.read_text())
        assert set(data) == {"name", "kind", "arches", "build"}
        assert data["build"]["verify_signature"] is True and data["build"]["source"]["repo"] == repo
    else:
        assert code == 1 and "does not validate, so it was not written" in capsys.readouterr().err


def test_rpm_rebuild_refuses_a_name_that_is_not_an_rpm_name(workspace, tmp_path, capsys):
    assert _rebuild_cli(workspace, tmp_path, "foo}: {x", "--repo", "http://h/s/") == 1
    assert "nor an rpm package name" in capsys.readouterr().err
    assert not (workspace.root / ".kiln" / "adhoc").exists()


def test_rpm_rebuild_refuses_credentials_in_repo_and_writes_nothing(workspace, tmp_path, capsys):
    assert _rebuild_cli(workspace, tmp_path, "foo", "--repo", f"https://u:{SECRET}@h/s/") == 1
    err = capsys.readouterr().err
    assert SECRET not in err and "site.yaml" in err
    assert not (workspace.root / ".kiln" / "adhoc").exists()


def test_the_ad_hoc_recipe_is_emitted_data():
    recipe = adhoc_recipe(
        "foo", arch=Arch.PPC64LE, source={"path": "foo #1: x.src.rpm"}, release="9",
        verify_signature=False, trusted_keys=["K: 1"],
    )  # fmt: skip
    assert yaml.safe_load(recipe.text)["build"] == {
        "source": {"path": "foo #1: x.src.rpm"},
        "release": "9",
        "verify_signature": False,
        "trusted_keys": ["K: 1"],
    }


# --- kiln validate: no credentials in a recipe's URL --------------------------------------------------------

RPM = "name: r\nkind: rpm-rebuild\narches: [ppc64le]\nbuild:\n  release: '9'\n  source:\n"


@pytest.mark.parametrize(
    ("source", "where"),
    [
        (
            f"    package: foo\n    repo: https://user:{SECRET}@repo.example/el/9/source/\n",
            "8:5: build.source.repo",
        ),
        (f"    url: http://tok{SECRET}@h/foo.src.rpm\n    sha256: {'a' * 64}\n", "7:5: build.source.url"),
    ],
    ids=["repo", "url"],
)
def test_validate_refuses_credentials_in_a_recipe_url_at_file_and_line(
    workspace, write, capsys, source, where
):
    write("recipes/r.yaml", RPM + source)
    assert main(["--root", str(workspace.root), "validate"]) == 1
    out = capsys.readouterr().out
    assert f"recipes/r.yaml:{where}: credentials (user:password@) are not allowed" in out
    assert "site.yaml" in out and SECRET not in out


PACKER_ISO = (
    "name: p\nkind: guest-image\narches: [x86_64]\nbuild:\n  builder: packer\n  distro: debian\n"
    f"  release: bookworm\n  iso:\n    url: https://user:{SECRET}@iso.example/d.iso\n    checksum: none\n"
)


def test_validate_refuses_credentials_in_a_packer_iso_url_that_would_be_rendered_into_its_template(
    workspace, write, capsys
):
    write("recipes/p.yaml", PACKER_ISO)
    assert main(["--root", str(workspace.root), "validate"]) == 1
    out = capsys.readouterr().out
    assert "recipes/p.yaml:9:5: build.iso.url: credentials (user:password@) are not allowed" in out
    assert "build.iso.path" in out and SECRET not in out
    write("recipes/p.yaml", PACKER_ISO.replace(f"user:{SECRET}@", ""))
    assert main(["--root", str(workspace.root), "validate"]) == 0, capsys.readouterr().out


def test_the_example_recipes_need_no_credentials(capsys):
    assert main(["--root", str(PACKAGE_ROOT), "validate"]) == 0, capsys.readouterr().out


# --- credentials from site.yaml (builder/rpm/credentials.py) ------------------------------------------------


def test_userinfo_is_split_off_as_url_parsers_read_it():
    assert split_userinfo("https://u:p%40ss@h:8443/x") == ("https://h:8443/x", ("u", "p@ss"))
    assert split_userinfo("https://u:p@ss@h/x") == ("https://h/x", ("u", "p@ss"))  # the last '@'
    assert split_userinfo("https://h/x@y") == ("https://h/x@y", None)  # an '@' in the path
    assert without_userinfo("http://token@h/") == "http://h/"


def test_a_site_url_lends_its_credentials_to_urls_below_it_on_the_same_origin():
    site = ["https://a:1@repo.example/kiln/", "https://b:2@repo.example/kiln/el/", "http://c:3@other/"]
    assert credentials_for("https://repo.example/kiln/el/9/source/", site) == (
        "https://repo.example/kiln/el/9/source/",
        ("b", "2"),  # the longest path wins
    )
    assert credentials_for("https://repo.example/kiln/x", site)[1] == ("a", "1")
    assert credentials_for("https://repo.example:443/kiln/x", site)[1] == ("a", "1")  # default port
    assert credentials_for("https://repo.example/kilnx/", site)[1] is None  # not below /kiln/
    assert credentials_for("http://repo.example/kiln/", site)[1] is None  # another scheme
    assert credentials_for("https://evil.example/kiln/", site)[1] is None
    assert credentials_for("https://x:9@repo.example/kiln/", site) == (
        "https://repo.example/kiln/",
        ("x", "9"),
    )
