"""`kiln history` and `kiln show` over a ledger written with the ledger's own API, and the build
matrix's states (builder/report)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from builder.cli import main
from builder.ledger import Ledger
from builder.report import matrix


def _target(target_id: str, digest: str = "d1", kind: str = "guest-image") -> SimpleNamespace:
    recipe, _, arch = target_id.split(":")
    return SimpleNamespace(
        id=target_id, recipe=recipe, kind=kind, arch=SimpleNamespace(value=arch), digest=digest
    )


@pytest.fixture
def ledger_path(tmp_path):
    path = tmp_path / "ledger.sqlite"
    log = tmp_path / "build.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    with Ledger(path) as ledger:
        one = ledger.start_build(_target("debian-12:bookworm:x86_64"), log_path=str(log))
        [image] = ledger.finish_build(
            one,
            "succeeded",
            artifacts=[("image", "/b/x.qcow2", "ab" * 32, 300 << 20)],
            tool_versions={"dib": "3"},
        )
        ledger.record_verification(one, "off", "kiln build --no-verify")
        ledger.record_publication(image, "glance", "image-1")
        two = ledger.start_build(_target("debian-12:bookworm:ppc64le"))
        ledger.finish_build(two, "failed", error="disk-image-create exited 1")
        three = ledger.start_build(_target("cuda-runtime:bookworm:x86_64", kind="container"))
        ledger.finish_build(three, "succeeded", artifacts=[("oci", "/b/oci", "cd" * 32, 1 << 20)])
    return path


def _kiln(ledger_path, *args: str) -> list[str]:
    return ["--ledger", str(ledger_path), *args]


def test_history_lists_builds_newest_first_with_status_size_and_where_they_were_published(
    ledger_path, capsys
):
    assert main(_kiln(ledger_path, "history", "--json")) == 0
    builds = json.loads(capsys.readouterr().out)["builds"]
    assert [b["target_id"] for b in builds] == [
        "cuda-runtime:bookworm:x86_64",
        "debian-12:bookworm:ppc64le",
        "debian-12:bookworm:x86_64",
    ]
    first = builds[-1]
    assert first["status"] == "succeeded" and first["size"] == 300 << 20 and first["duration_s"] is not None
    assert first["publications"][0]["location"] == "image-1"
    assert first["verification"] == {"status": "off", "detail": "kiln build --no-verify"}


def test_history_narrows_by_recipe_and_by_arch_in_any_spelling(ledger_path, capsys):
    assert main(_kiln(ledger_path, "history", "debian-12", "--arch", "ppc64el", "--json")) == 0
    assert [b["status"] for b in json.loads(capsys.readouterr().out)["builds"]] == ["failed"]
    assert main(_kiln(ledger_path, "history", "debian-12")) == 0
    text = capsys.readouterr().out
    assert "glance image-1" in text and "300 MiB" in text and "cuda-runtime" not in text
    assert main(_kiln(ledger_path, "history", "--arch", "sparc")) == 1


def test_show_prints_one_builds_log_tail_artifacts_and_verification(ledger_path, capsys, monkeypatch):
    monkeypatch.setenv("KILN_BUILD_ROOT", str(ledger_path.parent))  # logs are read from below it only
    assert main(_kiln(ledger_path, "show", "1", "--log-lines", "3")) == 0
    text = capsys.readouterr().out
    assert "build 1: debian-12:bookworm:x86_64 succeeded" in text
    assert "verification  off (kiln build --no-verify)" in text and "published   glance image-1" in text
    assert text.rstrip().endswith("line 49") and "line 46" not in text
    assert main(_kiln(ledger_path, "show", "99")) == 1
    assert "build 99: no such build" in capsys.readouterr().err


def test_the_matrix_tells_published_built_stale_failed_and_never_built_apart(ledger_path):
    with Ledger(ledger_path) as ledger:
        history = ledger.history()
    current = {
        "debian-12:bookworm:x86_64": ("debian-12", "guest-image", "d1"),
        "debian-12:bookworm:ppc64le": ("debian-12", "guest-image", "d1"),
        "cuda-runtime:bookworm:x86_64": ("cuda-runtime", "container", "d2"),  # its inputs changed
        "kiln-hello:9:ppc64le": ("kiln-hello", "rpm-rebuild", "d3"),
    }
    rows = {r.name: r for r in matrix(history, current)}
    assert rows["debian-12:bookworm"].cells["x86_64"].state == "published"
    assert rows["debian-12:bookworm"].cells["ppc64le"].state == "failed"
    assert rows["debian-12:bookworm"].cells["aarch64"].state == "n/a"
    assert rows["cuda-runtime:bookworm"].cells["x86_64"].state == "stale"
    assert rows["kiln-hello:9"].cells["ppc64le"].state == "never built"
    assert [d for _, d in rows["debian-12:bookworm"].durations] == [history[-1]["duration_s"]]
