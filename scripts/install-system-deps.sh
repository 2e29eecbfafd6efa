#!/usr/bin/env bash
# Install the Debian packages and tools the build and the tests need, and the extra
# Debian packages named as arguments (the benchmark's peers, scripts/bench/peers.sh).
# Idempotent: checks first and only touches apt when something is missing.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

packages=(postgresql fuse3 libfuse3-dev pkg-config attr gcc libc6-dev patch curl ca-certificates
    # The one-node cluster (scripts/cluster) and the images (scripts/images).
    runc containernetworking-plugins iptables conntrack ebtables ethtool socat openssl debootstrap)
packages+=("$@")

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-system-deps: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}"
fi

if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    echo "install-system-deps: no PostgreSQL server under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi

if ! command -v uv >/dev/null 2>&1; then
    echo "install-system-deps: installing uv"
    python3 -m pip install --quiet uv || python3 -m pip install --quiet --break-system-packages uv
    hash -r
    if ! command -v uv >/dev/null 2>&1; then
        echo "install-system-deps: uv installed but not on PATH" >&2
        exit 1
    fi
fi
