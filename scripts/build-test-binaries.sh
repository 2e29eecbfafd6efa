#!/usr/bin/env bash
# Build the Go programs the tests start (MinIO) from the Go module proxy.
# Everything goes under .cache/ in the repository; a binary that already
# exists is not rebuilt. Remove .cache/bin/<name> to force a rebuild.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo_root/.cache"
bin_dir="$cache/bin"

# MinIO publishes no semver tags, so the module proxy only knows
# pseudo-versions; this one is the commit of 2026-02-12.
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

export GOPATH="$cache/go"
export GOCACHE="$cache/go/cache"
export GOMODCACHE="$cache/go/pkg/mod"
export GOBIN="$bin_dir"
export GOFLAGS="${GOFLAGS:-} -modcacherw"

mkdir -p "$bin_dir" "$GOCACHE" "$GOMODCACHE"

if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
        export PATH="/usr/local/go/bin:$PATH"
    else
        echo "build-test-binaries: the go toolchain is not installed" >&2
        exit 1
    fi
fi

# go_install NAME PACKAGE@VERSION
go_install() {
    local name="$1" target="$2"
    if [ -x "$bin_dir/$name" ]; then
        return 0
    fi
    echo "build-test-binaries: building $target (this takes several minutes the first time)"
    local start=$SECONDS
    go install "$target"
    if [ ! -x "$bin_dir/$name" ]; then
        echo "build-test-binaries: go install $target produced no $bin_dir/$name" >&2
        exit 1
    fi
    echo "build-test-binaries: built $name in $((SECONDS - start))s"
}

go_install minio "github.com/minio/minio@$MINIO_VERSION"
