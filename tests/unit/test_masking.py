"""The one masking layer: credentials never reach stdout, stderr or a build log."""

from __future__ import annotations

import io
import json

from builder import masking
from builder.cli import main
from builder.host.run import Runner

GOOD = (
    "name: g\nkind: guest-image\narches: [x86_64]\nbuild: {builder: dib, distro: debian, release: bookworm}\n"
)
SECRET = "s3cr3t-mirror-pass"


def test_a_mirror_password_is_not_printed_by_a_dry_run_nor_in_its_json(capsys, workspace, write, tmp_path):
    write("recipes/g.yaml", GOOD)
    site = tmp_path / "site.yaml"
    site.write_text(f"mirrors:\n  debian: http://kiln:{SECRET}@127.0.0.1:9/debian\n")
    for extra in ([], ["--json"]):
        argv = ["--root", str(workspace.root), "--site", str(site), "build", "g", "--dry-run", *extra]
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert SECRET not in out + err
        shown = json.loads(out)["targets"][0]["plan"]["commands"][0]["env"] if extra else {}
        assert "http://***@127.0.0.1:9/debian" in (shown.get("DIB_DISTRIBUTION_MIRROR", "") if extra else out)


def test_an_invalid_site_value_with_credentials_is_not_echoed(capsys, workspace, write, tmp_path):
    write("recipes/g.yaml", GOOD)
    site = tmp_path / "site.yaml"
    site.write_text(f"registry:\n  url: 'user:{SECRET}@registry example'\n")
    assert main(["--root", str(workspace.root), "--site", str(site), "build", "g", "--dry-run"]) == 1
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "registry.url" in err


def test_secrets_from_the_environment_and_site_are_masked_in_build_logs(tmp_path, monkeypatch):
    masker = masking.Masker(masking.environment_secrets({"OS_PASSWORD": "env-pass-1234", "HOME": "/root"}))
    masker.register("site-token-5678")
    monkeypatch.setattr(masking, "MASKER", masker)
    log = tmp_path / "build.log"
    Runner().run(["echo", "env-pass-1234 site-token-5678 https://u:p4ss@h/x /root"], log_path=log)
    text = log.read_text()
    assert "env-pass-1234" not in text and "site-token-5678" not in text and "p4ss" not in text
    assert "*** *** https://***@h/x /root" in text  # HOME is not a secret


def test_a_secret_written_in_two_pieces_is_still_masked():
    inner = io.StringIO()
    stream = masking.MaskingStream(inner, masking.Masker(["hunter2-long"]))
    stream.write("password: hunt")
    stream.write("er2-long\n")
    stream.write("tail without newline hunter2-long")
    stream.flush()
    assert inner.getvalue() == "password: ***\ntail without newline ***"
