#!/usr/bin/env bash
# Idempotent set-up for `make test` and `make demo` on a fresh Debian machine, as root:
#   1. the Debian packages Kiln's tests and demo run (apt-get, only what is missing);
#   2. a virtual environment in .venv with Kiln and its test tools, exactly as requirements.lock pins
#      them (pip, only when pyproject.toml or the lock changed).
# A second run does nothing but check. Set KILN_SKIP_APT=1 to skip step 1 (non-Debian hosts).
set -euo pipefail
cd "$(dirname "$0")/.."

# packer: `packer validate` of rendered templates; openssh-client: ssh-keygen for Packer's
# communicator; rpm: rpmbuild/rpmsign; python3-venv: Debian's python3 needs it.
# python3-rpm: rpm's own Python bindings (labelCompare: builder/rpm/versions.py), which PyPI's `rpm`
# shim in the lock loads into the venv; named here, not left to arrive with dnf.
# The local site: keystone (python3-keystone, its WSGI script), glance-api, docker-registry, createrepo-c,
# gnupg, the swift S3 stack + memcached.
# Clients that check Kiln's work from outside: python3-openstackclient, skopeo, dnf, docker.io.
# IPA ISOs: grub-mkrescue (grub-common, the BIOS and EFI modules, xorriso, mtools: no loop mount).
APT_PACKAGES=(
    packer openssh-client rpm python3-rpm python3-venv rsync curl
    python3-keystone glance-api docker-registry createrepo-c gnupg
    swift swift-proxy swift-object swift-container swift-account memcached
    python3-openstackclient skopeo dnf docker.io
    qemu-system-x86 qemu-system-ppc qemu-utils qemu-user-static cloud-image-utils ovmf
    sudo gdisk dosfstools parted fdisk squashfs-tools genisoimage cpio xz-utils procps file
    debootstrap kpartx
    grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools
    chromium
)
VENV=.venv
STAMP=$VENV/.kiln-bootstrap
LOCK=requirements.lock

say() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ "${KILN_SKIP_APT:-0}" != 1 ] && command -v dpkg-query >/dev/null; then
    missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { say "need root to install: ${missing[*]}"; exit 3; }
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

# ppc64le (and aarch64) chroots on an x86_64 host run under qemu-user: binfmt_misc must be mounted
# and the qemu-user-static handlers registered (with the F flag, so chroots find the interpreter).
if [ "$(id -u)" = 0 ] && [ "$(uname -m)" = x86_64 ]; then
    binfmt=/proc/sys/fs/binfmt_misc
    [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
    for arch in ppc64le aarch64; do
        conf=/usr/lib/binfmt.d/qemu-$arch.conf
        if [ -e "$binfmt/register" ] && [ -f "$conf" ] && [ ! -e "$binfmt/qemu-$arch" ]; then
            say "registering binfmt handler for $arch"
            grep -v '^#' "$conf" > "$binfmt/register" || say "could not register $arch (emulated builds will say why)"
        fi
    done
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    say "Kiln needs Python >= 3.11 ($python is $("$python" --version 2>&1))"; exit 3; }

# Python packages come only from requirements.lock (exact versions, sha256 of every file; refresh
# it on purpose with `make lock`), then Kiln itself, editable, with nothing more resolved.
want=$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/kiln" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$python" -m venv "$VENV"; }
say "installing Kiln and its test tools into $VENV from $LOCK"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --require-hashes --only-binary :all: -r "$LOCK"
"${pip[@]}" --no-deps --no-build-isolation -e .
echo "$want" > "$STAMP"
