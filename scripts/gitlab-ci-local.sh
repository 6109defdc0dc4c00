#!/usr/bin/env bash
# Run gitlab-ci-local (npm), installing the pinned release on first use under ~/.cache/kiln.
#
#   scripts/gitlab-ci-local.sh --shell-isolation [JOB...]    # in a git repo with a .gitlab-ci.yml
#
# 4.65.0 is the last release that runs on Node 20 (later ones need Node >= 22). It also needs rsync
# and git. Exit 3 when npm or node is missing (Kiln's "missing tool" code).
set -euo pipefail
VERSION=4.65.0
dir=${KILN_CACHE_DIR:-$HOME/.cache/kiln}/gitlab-ci-local
bin=$dir/node_modules/.bin/gitlab-ci-local
say() { printf 'gitlab-ci-local.sh: %s\n' "$*" >&2; }

for tool in node npm rsync git; do
    command -v "$tool" >/dev/null || { say "needs $tool (apt-get install nodejs npm rsync git)"; exit 3; }
done
if [ ! -x "$bin" ] || [ "$(cat "$dir/version" 2>/dev/null)" != "$VERSION" ]; then
    say "installing gitlab-ci-local@$VERSION into $dir"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "gitlab-ci-local@$VERSION" >&2
    echo "$VERSION" > "$dir/version"
fi
exec "$bin" "$@"
