#!/usr/bin/env bash
# Build the mediadrive container images without a Docker engine.
#
#   base   Debian bookworm (debootstrap --variant=minbase, python3), one layer,
#          cached under $MEDIADRIVE_CACHE/images (default ~/.cache/mediadrive/images)
#          keyed by release: built once per machine.
#   app    one layer per image: the workspace wheels (uv build) that image needs and
#          their dependencies from PyPI at the versions in uv.lock, for python3.11
#          manylinux, in /opt/mediadrive; entrypoint /usr/local/bin/mediadrive.
#
# Each image is a docker-archive in $MEDIADRIVE_IMAGES_OUT (default .cache/images in
# the clone), rebuilt only when its inputs (base layer, wheels, these scripts)
# changed. When the cluster from scripts/cluster/up.sh is up, the images are
# imported into its containerd. The matching Dockerfiles (storage-pod/Dockerfile,
# operator/Dockerfile, csi-node/Dockerfile) build the same images where a Docker
# engine exists.
#
# Usage: build.sh [IMAGE...]   (default: every image below)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# The cluster's settings (where its containerd listens), for the import.
# shellcheck source=scripts/cluster/lib.sh
source "$repo/scripts/cluster/lib.sh"
release="${MEDIADRIVE_IMAGES_RELEASE:-bookworm}"
mirror="${MEDIADRIVE_IMAGES_MIRROR:-http://deb.debian.org/debian}"
cache="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}/images"
out="${MEDIADRIVE_IMAGES_OUT:-$repo/.cache/images}"
python_version=3.11
# Debian bookworm's glibc.
python_platform=x86_64-manylinux_2_36
# Bump when the base recipe changes, so cached bases are rebuilt.
base_recipe=1

# name -> tag, the workspace distributions installed, and what is left out.
# mediadrive-node (FUSE agent, CSI node service) needs pyfuse3, which PyPI serves
# only as source: the node image takes the wheel scripts/build-fuse-passthrough.sh
# built on this machine (Debian bookworm, as the image) and the libfuse 3.17 it
# links against, in /opt/mediadrive/lib.
declare -A TAG=(
    [pod]=mediadrive/pod:dev
    [operator]=mediadrive/operator:dev
    [node]=mediadrive/node:dev
)
declare -A DISTS=(
    [pod]="mediadrive-pod mediadrive-cli"
    [operator]="mediadrive-operator mediadrive-cli"
    [node]="mediadrive-node mediadrive-cli"
)
declare -A WITHOUT=(
    [pod]=mediadrive-node
    [operator]=mediadrive-node
    [node]=""
)
IMAGES=(pod operator node)
# Where scripts/build-fuse-passthrough.sh puts libfuse (its version read from there).
fuse_version="$(sed -n 's/^FUSE_VERSION=//p' "$repo/scripts/build-fuse-passthrough.sh")"
fuse_lib="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}/fuse/fuse3-$fuse_version/lib"

log() {
    echo "images: $*" >&2
}

# step NAME COMMAND...: run a step and say how long it took.
step() {
    local name="$1" start
    shift
    start=$(date +%s.%N)
    "$@"
    log "$name took $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
}

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

base_dir="$cache/base-$release-r$base_recipe"
base_layer="$base_dir/layer.tar"

# Empty caches, docs and device nodes out of the base: the runtime provides /dev,
# /etc/resolv.conf and /etc/hostname.
trim_rootfs() {
    local rootfs="$1"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -type f -delete 2>/dev/null || true
    find "$rootfs/dev" -mindepth 1 -delete
    : >"$rootfs/etc/resolv.conf"
    echo localhost >"$rootfs/etc/hostname"
}

build_base() {
    [ -f "$base_layer" ] && return 0
    command -v debootstrap >/dev/null || {
        log "missing debootstrap: run scripts/install-system-deps.sh"
        return 1
    }
    local staging="$cache/build.base-$release"
    mkdir -p "$cache"
    # A finished debootstrap of an interrupted run is reused.
    if [ ! -x "$staging/usr/bin/python3" ]; then
        "${sudo_cmd[@]}" rm -rf "$staging"
        "${sudo_cmd[@]}" debootstrap --variant=minbase --include=python3 "$release" "$staging" \
            "$mirror" >"$cache/debootstrap-$release.log" 2>&1 || {
            log "debootstrap failed; see $cache/debootstrap-$release.log"
            return 1
        }
    fi
    "${sudo_cmd[@]}" bash -c "$(declare -f trim_rootfs); trim_rootfs '$staging'"
    local work="$cache/build.layer-$release"
    mkdir -p "$work"
    "${sudo_cmd[@]}" python3 "$here/oci.py" layer "$staging" "$work/layer.tar" >"$work/layer.sha256"
    "${sudo_cmd[@]}" rm -rf "$staging"
    rm -rf "$base_dir"
    mv "$work" "$base_dir"
}

# The base layer's digest, worked out once.
base_digest() {
    if [ ! -s "$base_dir/layer.sha256" ]; then
        sha256sum "$base_layer" | cut -d' ' -f1 >"$base_dir/layer.sha256"
    fi
    cat "$base_dir/layer.sha256"
}

wheels_dir="$out/wheels"

build_wheels() {
    rm -rf "$wheels_dir"
    mkdir -p "$wheels_dir"
    (cd "$repo" && uv build --quiet --all-packages --wheel -o "$wheels_dir")
    # Third-party versions as locked for the workspace.
    (cd "$repo" && uv export --quiet --frozen --no-dev --no-hashes --no-emit-workspace \
        --all-packages --no-header -o "$wheels_dir/constraints.txt")
}

# inputs_key NAME: changes when anything that goes into the image changes.
inputs_key() {
    local name="$1" plan="$out/$1.plan"
    {
        echo "${TAG[$name]} ${DISTS[$name]} without ${WITHOUT[$name]}"
        base_digest
        # shellcheck disable=SC2046 # one wheel path a line
        python3 "$here/wheels.py" hash $(cat "$plan/workspace.txt")
        cat "$plan/requirements.txt" "$wheels_dir/constraints.txt"
        if [ "$name" = node ]; then
            python3 "$here/wheels.py" hash "$(pyfuse3_wheel)"
            sha256sum "$fuse_lib/libfuse3.so.4"
        fi
        cat "$here/build.sh" "$here/oci.py" "$here/wheels.py" "$here/mediadrive"
    } | sha256sum | cut -d' ' -f1
}

# The app layer: /opt/mediadrive and the mediadrive command.
build_app_layer() {
    local name="$1" plan="$2" rootfs="$3"
    local target="$rootfs/opt/mediadrive"
    local install=(uv pip install --quiet --target "$target" --python-version "$python_version"
        --python-platform "$python_platform" --only-binary :all: --compile-bytecode)
    mkdir -p "$target" "$rootfs/usr/local/bin"
    local requirements="$plan/requirements.txt"
    if [ "$name" = node ]; then
        # pyfuse3 from the local wheel; its own dependencies from PyPI.
        grep -v '^pyfuse3' "$plan/requirements.txt" >"$plan/requirements-binary.txt"
        echo trio >>"$plan/requirements-binary.txt"
        requirements="$plan/requirements-binary.txt"
        mkdir -p "$target/lib"
        cp -L "$fuse_lib/libfuse3.so.4" "$target/lib/libfuse3.so.4"
        local wheel_copy
        wheel_copy="$plan/$(basename "$(pyfuse3_wheel)" | sed 's/linux_x86_64/manylinux_2_36_x86_64/')"
        cp "$(pyfuse3_wheel)" "$wheel_copy"
        "${install[@]}" --no-deps "$wheel_copy"
    fi
    if [ -s "$requirements" ]; then
        "${install[@]}" -r "$requirements" -c "$wheels_dir/constraints.txt"
    fi
    # shellcheck disable=SC2046 # one wheel path a line
    "${install[@]}" --no-deps $(cat "$plan/workspace.txt")
    # Console scripts uv wrote for the build machine's python; the image has its own.
    rm -rf "${target:?}/bin"
    cp "$here/mediadrive" "$rootfs/usr/local/bin/mediadrive"
    chmod 755 "$rootfs/usr/local/bin/mediadrive"
    add_user "$rootfs"
}

# The unprivileged user the chart runs the operator as (runAsUser 65532): without a
# passwd entry, libraries asking for the login name (getpass.getuser) fail.
add_user() {
    local rootfs="$1"
    mkdir -p "$rootfs/etc"
    tar -xOf "$base_layer" etc/passwd >"$rootfs/etc/passwd"
    tar -xOf "$base_layer" etc/group >"$rootfs/etc/group"
    echo "mediadrive:x:65532:65532:mediadrive:/tmp:/usr/sbin/nologin" \
        >>"$rootfs/etc/passwd"
    echo "mediadrive:x:65532:" >>"$rootfs/etc/group"
    chmod 644 "$rootfs/etc/passwd" "$rootfs/etc/group"
}

# The pyfuse3 wheel the node image installs (built with libfuse 3.17 by
# scripts/build-fuse-passthrough.sh, which `make install` runs).
pyfuse3_wheel() {
    local found
    # The wheel .venv has: uv records where it came from.
    found="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"].removeprefix("file://"))' \
        "$repo"/.venv/lib/python3.*/site-packages/pyfuse3-*.dist-info/direct_url.json 2>/dev/null || true)"
    [ -f "$found" ] && [ -e "$fuse_lib/libfuse3.so.4" ] || {
        log "no patched pyfuse3 wheel in .venv or no $fuse_lib: run scripts/build-fuse-passthrough.sh"
        return 1
    }
    echo "$found"
}

build_image() {
    local name="$1" plan="$out/$1.plan" key archive="$out/$1.tar" args=() dist
    for dist in ${DISTS[$name]}; do args+=("$dist"); done
    for dist in ${WITHOUT[$name]:-}; do args+=(--without "$dist"); done
    python3 "$here/wheels.py" plan "$wheels_dir" "$plan" "${args[@]}"
    key="$(inputs_key "$name")"
    if [ -f "$archive" ] && [ "$(cat "$out/$name.key" 2>/dev/null)" = "$key" ]; then
        log "${TAG[$name]} unchanged ($archive)"
        return 0
    fi
    local work
    work="$(mktemp -d "$out/build.$name.XXXXXX")"
    build_app_layer "$name" "$plan" "$work/rootfs"
    python3 "$here/oci.py" layer "$work/rootfs" "$work/app.tar" >/dev/null
    local env=(--env PYTHONPATH=/opt/mediadrive --env PYTHONUNBUFFERED=1)
    if [ "$name" = node ]; then
        env+=(--env LD_LIBRARY_PATH=/opt/mediadrive/lib)
    fi
    python3 "$here/oci.py" archive --tag "${TAG[$name]}" --layer "$base_layer" \
        --layer "$work/app.tar" --entrypoint /usr/local/bin/mediadrive \
        "${env[@]}" "$archive" >/dev/null
    echo "$key" >"$out/$name.key"
    rm -rf "$work"
    log "${TAG[$name]} -> $archive ($(du -h "$archive" | cut -f1))"
}

# Import into the cluster's containerd when it is up.
import_images() {
    local ctr=("$CLUSTER_BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io)
    if [ ! -S "$CONTAINERD_SOCK" ] || ! "${ctr[@]}" version >/dev/null 2>&1; then
        log "cluster not up: not imported (scripts/cluster/up.sh, then run this again)"
        return 0
    fi
    # What this cluster already holds (the folder goes with cluster-down).
    local imported="$CLUSTER_DIR/images" name
    mkdir -p "$imported"
    for name in "$@"; do
        if cmp -s "$out/$name.key" "$imported/$name.key"; then
            log "${TAG[$name]} already in the cluster"
            continue
        fi
        "${ctr[@]}" images import "$out/$name.tar" >/dev/null 2>>"$LOGS/ctr.log"
        cp "$out/$name.key" "$imported/$name.key"
        log "imported ${TAG[$name]} into the cluster"
    done
}

main() {
    local images=("$@") name
    [ "${#images[@]}" -gt 0 ] || images=("${IMAGES[@]}")
    for name in "${images[@]}"; do
        [ -n "${TAG[$name]:-}" ] || {
            log "unknown image $name (have: ${IMAGES[*]})"
            return 1
        }
    done
    mkdir -p "$out"
    step "base $release" build_base
    step wheels build_wheels
    for name in "${images[@]}"; do
        step "image $name" build_image "$name"
    done
    step import import_images "${images[@]}"
}

main "$@"
