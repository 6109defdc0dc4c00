#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (`make lock`): every Python dependency of Kiln,
# the `test` extra and the build backend (setuptools), pinned with ==, with the sha256 of every
# file PyPI has for that release. scripts/bootstrap.sh installs only from the lock, so a new
# release on PyPI changes nothing until someone runs this on purpose and commits the result.
#
#   scripts/lock.sh                        keep the current pins; add/drop what pyproject changed
#   scripts/lock.sh --upgrade              re-resolve everything to the newest allowed releases
#   scripts/lock.sh -P PyYAML              upgrade one package (--upgrade-package)
#
# The lock is for the CI machine: Python 3.11 on Linux x86_64 (markers are resolved for it, except
# the platform marker pyproject puts on createrepo_c). pip-tools runs from a throwaway venv (not
# .venv), and resolves from PyPI only: local pip config (find-links, extra indexes, constraints)
# is ignored so that the hashes are PyPI's.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_TOOLS=pip-tools==7.6.2
TOOLS=${KILN_LOCK_VENV:-${TMPDIR:-/tmp}/kiln-lock-tools}
python=${PYTHON:-python3}

say() { printf 'lock: %s\n' "$*" >&2; }

"$python" -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' || {
    say "the lock is for Python 3.11 on x86_64 (CI); $python is $("$python" --version 2>&1) on $(uname -m)"
    say "set PYTHON to a python3.11 on x86_64"
    exit 3
}

# PyPI only, whatever this machine's pip.conf says.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX
index=https://pypi.org/simple

if ! "$TOOLS/bin/pip-compile" --version 2>/dev/null | grep -q "version ${PIP_TOOLS#*==}\$"; then
    say "installing $PIP_TOOLS into $TOOLS"
    rm -rf "$TOOLS"
    "$python" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check --index-url "$index" "$PIP_TOOLS"
fi

CUSTOM_COMPILE_COMMAND="make lock" "$TOOLS/bin/pip-compile" --quiet \
    --index-url "$index" --no-emit-index-url --no-emit-find-links \
    --generate-hashes --allow-unsafe --strip-extras \
    --extra test --build-deps-for editable \
    --output-file requirements.lock "$@" pyproject.toml
say "wrote requirements.lock: review the diff, run the tests, commit it"
