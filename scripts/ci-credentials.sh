#!/usr/bin/env bash
# Install a GitLab job's credentials where Kiln's site.yaml expects them, from CI/CD variables,
# printing none of them (no `set -x`; only which ones were found). Run from a generated job's
# before_script (site.yaml: gitlab.before_script: [scripts/ci-credentials.sh]).
#
#   OS_CLOUD + OS_CLIENT_CONFIG_FILE (file)  Glance: openstacksdk reads both itself; checked here only
#   KILN_DOCKER_CONFIG (file)                -> ~/.docker/config.json (site.yaml registry.docker_config)
#   KILN_SIGNING_KEY (file, armored secret)  -> imported into $KILN_GNUPGHOME (default ~/.kiln/gnupg;
#                                               site.yaml repo.signing_key.gnupghome)
set -euo pipefail
set +x
say() { printf 'ci-credentials: %s\n' "$*" >&2; }

if [ -n "${OS_CLOUD:-}" ]; then
    [ -r "${OS_CLIENT_CONFIG_FILE:-}" ] || { say "OS_CLOUD is set but OS_CLIENT_CONFIG_FILE is not a readable file"; exit 3; }
    say "Glance: cloud from OS_CLOUD, clouds.yaml from OS_CLIENT_CONFIG_FILE"
fi
if [ -n "${KILN_DOCKER_CONFIG:-}" ]; then
    [ -r "$KILN_DOCKER_CONFIG" ] || { say "KILN_DOCKER_CONFIG must be a CI variable of type file"; exit 3; }
    install -d -m 700 "$HOME/.docker"
    install -m 600 "$KILN_DOCKER_CONFIG" "$HOME/.docker/config.json"
    say "registry: docker config installed"
fi
if [ -n "${KILN_SIGNING_KEY:-}" ]; then
    [ -r "$KILN_SIGNING_KEY" ] || { say "KILN_SIGNING_KEY must be a CI variable of type file"; exit 3; }
    home=${KILN_GNUPGHOME:-$HOME/.kiln/gnupg}
    install -d -m 700 "$home"
    # Jobs of one shell runner share $HOME: two importing at once race to start the keyring's
    # gpg-agent (one then fails with exit 2). The lock makes them take turns.
    status=0
    flock "$home/.kiln-import.lock" \
        gpg --homedir "$home" --batch --quiet --import "$KILN_SIGNING_KEY" 2>/dev/null || status=$?
    if [ "$status" -ne 0 ]; then
        say "repo: importing KILN_SIGNING_KEY into $home failed (gpg exit $status)"
        exit 3
    fi
    say "repo: signing key imported into $home"
fi
