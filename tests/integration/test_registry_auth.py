"""The local registry runs with authentication on, as at a real site: credentials come only from a
docker config file, a push without them fails clearly, and the password is printed nowhere."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.arch import Arch
from builder.cli import main
from builder.errors import EnvironmentProblem
from builder.manifest import BuildManifest, artifact_for
from builder.masking import mask
from builder.publishers.registry import ArchImage, RegistryClient, RegistryPublisher
from builder.site import registry as site_registry
from tests.support import registry_auth
from tests.support.oci import make_layout

pytestmark = pytest.mark.site


def _container_manifests(tmp_path: Path, recipe: str, repository: str) -> list[Path]:
    paths = []
    for arch in (Arch.X86_64, Arch.PPC64LE):
        out = tmp_path / f"{recipe}-{arch.value}"
        layout = make_layout(out / "oci", arch, [{"hello": f"{recipe} {arch.value}".encode()}])
        manifest = BuildManifest(
            target=f"{recipe}:bookworm:{arch.value}",
            recipe=recipe,
            kind="container",
            arch=arch.value,
            release="bookworm",
            variant=None,
            digest=f"{recipe}-{arch.value}-digest",
            artifacts=(artifact_for(out, layout, "image", "oci-layout"),),
            publish={"registry": {"repository": repository, "tags": ["1.0"]}},
            build={"distro": "debian"},
            verification={"status": "passed", "cases": 1},
            base_dir=out,
        )
        manifest.write(out / "manifest.json")
        paths.append(out / "manifest.json")
    return paths


def _site_file(site_settings, tmp_path: Path, **registry: str) -> Path:
    settings = site_settings.model_dump(mode="json", exclude_none=True)
    if registry:
        settings["registry"] = {**settings.get("registry", {}), **registry}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _skopeo_inspect(site, ref: str, *auth: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *auth, "--raw", f"docker://{ref}"],
        capture_output=True,
        text=True,
    )


def test_site_credentials_are_private_files_with_a_bcrypt_entry_and_a_docker_config(local_site):
    config = registry_auth.docker_config(local_site)
    htpasswd = local_site.state / "registry" / "htpasswd"
    for path in (config, htpasswd):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user, password = registry_auth.credentials(local_site)
    entry_user, _, entry_hash = htpasswd.read_text().strip().partition(":")
    assert entry_user == user and entry_hash.startswith("$2")
    assert password not in htpasswd.read_text()
    assert "auth:\n  htpasswd:" in (local_site.state / "registry" / "config.yml").read_text()


def test_preparing_again_keeps_the_credentials_so_pushed_ones_stay_valid(tmp_path):
    state, config = tmp_path / "registry", tmp_path / "docker-config" / "config.json"
    site_registry.prepare(state, 15000, config)
    first = (config.read_text(), (state / "htpasswd").read_text())
    site_registry.prepare(state, 15000, config)
    assert (config.read_text(), (state / "htpasswd").read_text()) == first
    site_registry.prepare(state, 15001, config)  # site.yaml moved the port: same robot, new key
    auths = json.loads(config.read_text())["auths"]
    assert list(auths) == ["127.0.0.1:15001"]
    assert auths["127.0.0.1:15001"] == json.loads(first[0])["auths"]["127.0.0.1:15000"]


def test_a_push_without_credentials_fails_clearly_with_exit_3_and_creates_no_tag(
    local_site, site_settings, tmp_path, capsys
):
    empty = tmp_path / "empty-docker-config.json"
    empty.write_text('{"auths": {}}')
    site = _site_file(site_settings, tmp_path, docker_config=str(empty))
    manifests = _container_manifests(tmp_path, "noauth", "kiln/noauth")
    code = main(
        ["--site", str(site), "--ledger", str(tmp_path / "l.sqlite"), "publish", *map(str, manifests)]
    )
    err = capsys.readouterr().err
    assert code == 3
    assert f"registry {local_site.urls.registry} refused" in err and "HTTP 401" in err
    assert str(empty) in err and "holds no credentials" in err
    assert "Traceback" not in err
    authed = RegistryPublisher(registry_auth.client(local_site))
    assert authed.tag_digest("kiln/noauth", "1.0") is None


def test_wrong_credentials_are_refused_naming_the_docker_config_used(local_site, tmp_path):
    image = make_layout(tmp_path / "oci", Arch.X86_64, [{"x": b"wrong"}])
    client = RegistryClient(
        local_site.urls.registry, auth=("kiln-robot", "not-it"), auth_source="/x/config.json"
    )
    with pytest.raises(
        EnvironmentProblem, match=r"/x/config\.json \(its credentials were refused\)"
    ) as caught:
        RegistryPublisher(client).push("kiln/wrong", "1.0", [ArchImage(Arch.X86_64, image)])
    assert "not-it" not in str(caught.value)


def test_a_cli_publish_with_the_site_credentials_pushes_and_prints_no_secret(
    local_site, site_settings, tmp_path, capsys
):
    site = _site_file(site_settings, tmp_path)  # no registry settings: the local site's docker config
    manifests = _container_manifests(tmp_path, "authed", "kiln/authed")
    ledger = tmp_path / "l.sqlite"
    code = main(["--site", str(site), "--ledger", str(ledger), "publish", *map(str, manifests), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [row["publisher"] for row in json.loads(out)["published"]] == ["registry", "registry"]

    ref = f"{local_site.urls.registry}/kiln/authed:1.0"
    seen = _skopeo_inspect(local_site, ref, "--authfile", str(registry_auth.docker_config(local_site)))
    assert seen.returncode == 0, seen.stderr
    assert {m["platform"]["architecture"] for m in json.loads(seen.stdout)["manifests"]} == {
        "amd64",
        "ppc64le",
    }
    assert _skopeo_inspect(local_site, ref).returncode != 0  # anonymous readers are refused too

    user, password = registry_auth.credentials(local_site)
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    registry_log = next(iter(local_site.processes("registry"))).log_path
    places = {
        "stdout": out,
        "stderr": err,
        "registry log": registry_log.read_text(errors="replace"),
        "site.json": (local_site.state / "site.json").read_text(),
        "ledger": b"".join(p.read_bytes() for p in tmp_path.glob("l.sqlite*")).decode(errors="replace"),
    }
    for name, text in places.items():
        assert password not in text and basic not in text, f"the registry password is in {name}"
    # Had it reached a line Kiln prints, the masking layer would hide it in either form.
    assert mask(f"user {user} password {password} auth {basic}") == f"user {user} password *** auth ***"
