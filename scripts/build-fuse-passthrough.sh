#!/usr/bin/env bash
# Build libfuse 3.17 and pyfuse3 with FUSE passthrough support
# (csi-node/patches/pyfuse3-3.5.0-passthrough.patch) under
# $MEDIADRIVE_CACHE/fuse (default ~/.cache/mediadrive/fuse, outside the clone,
# so every clone on the machine shares them) and install that pyfuse3 into
# .venv. Passthrough needs libfuse >= 3.16 and Linux >= 6.9; Debian bookworm
# ships libfuse 3.14 and the pyfuse3 from PyPI lacks the API, so the node
# agent feature-detects it (pyfuse3.session_fd).
#
# Each step is skipped when its result is there already (libfuse keyed by its
# version, the wheel by the patch and the pins), so a second run takes well
# under a second. Remove the fuse3-* or wheels folders there to force a rebuild.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}/fuse"
venv_python="$repo_root/.venv/bin/python"
patch_file="$repo_root/csi-node/patches/pyfuse3-3.5.0-passthrough.patch"

FUSE_VERSION=3.17.2
src_dir="$cache/src"
build_root="$cache/build"
build_venv="$cache/build-venv"
prefix="$cache/fuse3-$FUSE_VERSION"
FUSE_URL="https://deb.debian.org/debian/pool/main/f/fuse3/fuse3_${FUSE_VERSION}.orig.tar.gz"
FUSE_SHA256=3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f

PYFUSE3_VERSION=3.5.0
PYFUSE3_URL="https://files.pythonhosted.org/packages/b9/a9/ce2c0513e9611ee2ffeeb482a33d23a210326801d48866df30a989562d43/pyfuse3-${PYFUSE3_VERSION}.tar.gz"
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24

MESON_VERSION=1.12.1
NINJA_VERSION=1.13.2

# Build requirements of the pyfuse3 sdist, pinned for a reproducible wheel.
PYFUSE3_BUILD_CONSTRAINTS=(
    cython==3.3.1
    setuptools==84.2.1
    setuptools-scm==10.3.4
    vcs-versioning==2.6.0
    packaging==26.4
)

log() { echo "build-fuse-passthrough: $*"; }
die() {
    echo "build-fuse-passthrough: $*" >&2
    exit 1
}

# run_logged LOGFILE DESCRIPTION COMMAND...: keep the noise in LOGFILE and
# show its tail only when the command fails.
run_logged() {
    local logfile="$1" what="$2"
    shift 2
    if ! "$@" >>"$logfile" 2>&1; then
        tail -n 25 "$logfile" >&2
        die "$what failed (full log: $logfile)"
    fi
}

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "$tool is not installed (scripts/install-system-deps.sh installs it)"
    done
}

# fetch NAME URL SHA256: download into $src_dir unless it is there already.
fetch() {
    local name="$1" url="$2" sha256="$3" dest="$src_dir/$1"
    if [ -f "$dest" ]; then
        return 0
    fi
    need_tools curl sha256sum
    mkdir -p "$src_dir"
    log "downloading $name"
    curl -fsSL --retry 3 -o "$dest.part" "$url" || die "download of $url failed"
    local actual
    actual="$(sha256sum "$dest.part" | cut -d' ' -f1)"
    if [ "$actual" != "$sha256" ]; then
        rm -f "$dest.part"
        die "checksum mismatch for $name: expected $sha256, got $actual"
    fi
    mv "$dest.part" "$dest"
}

# A changed patch or pin gets a wheel of its own (and so a reinstall).
[ -f "$patch_file" ] || die "missing $patch_file"
build_id="$(
    {
        cat "$patch_file"
        echo "$FUSE_VERSION $PYFUSE3_VERSION ${PYFUSE3_BUILD_CONSTRAINTS[*]}"
    } | sha256sum | cut -c1-12
)"
wheel_dir="$cache/wheels/pyfuse3-$PYFUSE3_VERSION-passthrough-$build_id"

[ -x "$venv_python" ] || die "no $venv_python: run 'uv sync --all-packages' first"

# 1. libfuse into $prefix (meson and ninja from a small build venv).
if [ ! -f "$prefix/lib/libfuse3.so.$FUSE_VERSION" ] || [ ! -f "$prefix/lib/pkgconfig/fuse3.pc" ]; then
    start=$SECONDS
    need_tools uv cc pkg-config
    fetch "fuse3_$FUSE_VERSION.orig.tar.gz" "$FUSE_URL" "$FUSE_SHA256"
    mkdir -p "$build_root"
    : >"$build_root/venv.log"
    if [ ! -x "$build_venv/bin/python" ]; then
        log "creating $build_venv"
        run_logged "$build_root/venv.log" "uv venv" uv venv -q --python "$venv_python" "$build_venv"
    fi
    run_logged "$build_root/venv.log" "installing meson and ninja" \
        uv pip install -q --python "$build_venv/bin/python" "meson==$MESON_VERSION" "ninja==$NINJA_VERSION"
    log "building libfuse $FUSE_VERSION into $prefix"
    rm -rf "$build_root/fuse-$FUSE_VERSION" "$prefix"
    tar -xzf "$src_dir/fuse3_$FUSE_VERSION.orig.tar.gz" -C "$build_root"
    fuse_log="$build_root/libfuse.log"
    : >"$fuse_log"
    (
        cd "$build_root/fuse-$FUSE_VERSION"
        export PATH="$build_venv/bin:$PATH"
        run_logged "$fuse_log" "meson setup of libfuse" \
            meson setup build --prefix="$prefix" --libdir=lib --buildtype=release \
            -Dexamples=false -Dutils=false -Dtests=false
        run_logged "$fuse_log" "libfuse build" ninja -C build
        run_logged "$fuse_log" "libfuse install" ninja -C build install
    )
    [ -f "$prefix/lib/libfuse3.so.$FUSE_VERSION" ] ||
        die "libfuse install produced no $prefix/lib/libfuse3.so.$FUSE_VERSION"
    rm -rf "$build_root/fuse-$FUSE_VERSION"
    log "built libfuse $FUSE_VERSION in $((SECONDS - start))s"
fi

# 2. The patched pyfuse3 wheel, linked against $prefix with an rpath
# so that no LD_LIBRARY_PATH is needed at run time.
wheel="$(compgen -G "$wheel_dir/pyfuse3-$PYFUSE3_VERSION-*.whl" | head -n 1 || true)"
if [ -z "$wheel" ]; then
    start=$SECONDS
    need_tools uv cc pkg-config patch
    fetch "pyfuse3-$PYFUSE3_VERSION.tar.gz" "$PYFUSE3_URL" "$PYFUSE3_SHA256"
    log "building pyfuse3 $PYFUSE3_VERSION with passthrough against libfuse $FUSE_VERSION"
    mkdir -p "$build_root"
    pyfuse3_src="$build_root/pyfuse3-$PYFUSE3_VERSION"
    rm -rf "$pyfuse3_src" "$wheel_dir"
    tar -xzf "$src_dir/pyfuse3-$PYFUSE3_VERSION.tar.gz" -C "$build_root"
    patch -s -p1 -N -d "$pyfuse3_src" <"$patch_file" || die "$patch_file does not apply to pyfuse3 $PYFUSE3_VERSION"
    # The sdist ships C code generated from the unpatched .pyx.
    rm -f "$pyfuse3_src/src/pyfuse3/__init__.c"
    printf '%s\n' "${PYFUSE3_BUILD_CONSTRAINTS[@]}" >"$build_root/pyfuse3-build-constraints.txt"
    pyfuse3_log="$build_root/pyfuse3.log"
    : >"$pyfuse3_log"
    run_logged "$pyfuse3_log" "pyfuse3 wheel build" \
        env PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LDFLAGS="${LDFLAGS:-} -Wl,-rpath,$prefix/lib" \
        uv build --wheel --python "$venv_python" \
        --build-constraints "$build_root/pyfuse3-build-constraints.txt" \
        --out-dir "$wheel_dir" "$pyfuse3_src"
    wheel="$(compgen -G "$wheel_dir/pyfuse3-$PYFUSE3_VERSION-*.whl" | head -n 1 || true)"
    [ -n "$wheel" ] || die "uv build produced no wheel in $wheel_dir"
    rm -rf "$pyfuse3_src"
    log "built $(basename "$wheel") in $((SECONDS - start))s"
fi

# 3. Install it into .venv unless the installed pyfuse3 is that wheel already.
# uv.lock names the PyPI pyfuse3, so every `uv sync` puts that one back and
# this step swaps the patched one in again.
if ! "$venv_python" - "$wheel" 2>/dev/null <<'EOF'; then
import json
import pathlib
import sys
from importlib import metadata

import pyfuse3

try:
    url = json.loads(metadata.distribution("pyfuse3").read_text("direct_url.json") or "{}").get("url")
except metadata.PackageNotFoundError:
    url = None
wanted = pathlib.Path(sys.argv[1]).resolve().as_uri()
sys.exit(0 if hasattr(pyfuse3, "session_fd") and url == wanted else 1)
EOF
    log "installing $(basename "$wheel") into .venv"
    mkdir -p "$build_root"
    : >"$build_root/install.log"
    run_logged "$build_root/install.log" "installing pyfuse3" \
        uv pip install -q --python "$venv_python" --no-deps --reinstall "$wheel"
fi
