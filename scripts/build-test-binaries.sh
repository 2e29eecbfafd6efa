#!/usr/bin/env bash
# Build the Go programs the tests start (MinIO) from the Go module proxy.
#
# Everything goes under $MEDIADRIVE_CACHE (default ~/.cache/mediadrive), outside
# the clone, so a fresh clone and CI on the same machine rebuild nothing. Each
# binary is kept as bin/<name>-<version>; a version already built is not rebuilt.
# Prints how long each step took.
set -euo pipefail

cache="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}"
bin_dir="$cache/bin"

# MinIO publishes no semver tags, so the module proxy only knows
# pseudo-versions; this one is the commit of 2026-02-12.
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

export GOPATH="$cache/go"
export GOCACHE="$cache/go/cache"
export GOMODCACHE="$cache/go/pkg/mod"
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

# go_install NAME MODULE/PACKAGE VERSION
go_install() {
    local name="$1" package="$2" version="$3"
    local target="$bin_dir/$name-$version"
    if [ -x "$target" ]; then
        echo "build-test-binaries: $name $version cached (0s)"
        return 0
    fi
    echo "build-test-binaries: building $package@$version (several minutes the first time)"
    local start=$SECONDS staging
    staging="$(mktemp -d "$cache/build.XXXXXX")"
    GOBIN="$staging" go install "$package@$version"
    if [ ! -x "$staging/$name" ]; then
        echo "build-test-binaries: go install $package@$version produced no $name" >&2
        rm -rf "$staging"
        exit 1
    fi
    # Rename into place: an interrupted build never leaves a half binary behind.
    mv "$staging/$name" "$target"
    rm -rf "$staging"
    echo "build-test-binaries: built $name $version in $((SECONDS - start))s"
}

go_install minio github.com/minio/minio "$MINIO_VERSION"
ln -sfn "minio-$MINIO_VERSION" "$bin_dir/minio"
