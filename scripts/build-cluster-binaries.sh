#!/usr/bin/env bash
# Build what a real one-node Kubernetes cluster needs, from the Go module proxy:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# kubectl, containerd (with ctr and the runc shim), helm and csi-sanity.
#
# Everything is cached under $MEDIADRIVE_CACHE (default ~/.cache/mediadrive),
# outside the clone, one folder per version: a second run, or CI on the same
# machine, rebuilds nothing. A binary appears only once it is complete. Each step
# says how long it took. Built from nothing on 2 busy cores this takes about half
# an hour (most of it the Kubernetes binaries); the Go build cache makes a rebuild
# of a changed version much quicker.
#
# Prints the folder holding the binaries on its last line.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CSI_TEST_VERSION="${CSI_TEST_VERSION:-v5.6.0}"

cache="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}"
export GOPATH="$cache/go"
export GOCACHE="$cache/go/cache"
export GOMODCACHE="$cache/go/pkg/mod"
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export CGO_ENABLED=0
if ! command -v go >/dev/null 2>&1; then
    export PATH="/usr/local/go/bin:$PATH"
fi

# Kubernetes' staging modules are published as v0.MINOR.PATCH.
staging_version="v0.${K8S_VERSION#v1.}"
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
# One folder per tool and version; bin/ links to the versions asked for now.
tools="$cache/tools"
bin="$cache/cluster/bin"
mkdir -p "$tools" "$bin" "$GOCACHE" "$GOMODCACHE"

step() {
    local name="$1" start=$SECONDS
    shift
    "$@"
    echo "build-cluster-binaries: $name took $((SECONDS - start))s" >&2
}

# have TOOL-VERSION NAME...: every named binary of that tool version is built.
have() {
    local folder="$tools/$1" name
    shift
    for name in "$@"; do
        [ -x "$folder/$name" ] || return 1
    done
}

# finish TOOL-VERSION STAGING: move a finished build into place in one rename, so
# an interrupted build never leaves a half-made tool behind.
finish() {
    rm -rf "$tools/$1"
    mv "$2" "$tools/$1"
}

# go_build WRAPPER_DIR STAGING LDFLAGS PACKAGE...
go_build() {
    local dir="$1" staging="$2" ldflags="$3"
    shift 3
    (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$staging/" "$@")
}

# go_install STAGING ARGS...
go_install() {
    local staging="$1"
    shift
    GOBIN="$staging" go install -trimpath "$@"
}

new_staging() {
    mktemp -d "$cache/build.XXXXXX"
}

# Kubernetes: k8s.io/kubernetes replaces its staging modules with local folders, so
# `go install` refuses it; a wrapper module pins each one to its published version.
build_kubernetes() {
    local dir="$cache/src/kubernetes-$K8S_VERSION"
    local modfile="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    mkdir -p "$dir"
    (cd "$dir" && go mod download "k8s.io/kubernetes@$K8S_VERSION")
    # Every staging module but the two samples, which nothing needs and the proxy lacks.
    local staging_modules
    staging_modules="$(grep -E '^\s+k8s.io/[a-z-]+ => ./staging' "$modfile" | awk '{print $1}' |
        grep -v -e sample-cli-plugin -e sample-controller)"
    {
        echo "module mediadrive.test/kubernetes"
        echo
        echo "go 1.26"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "require ("
        for module in $staging_modules; do echo "	$module $staging_version"; done
        echo ")"
        echo
        echo "replace ("
        for module in $staging_modules; do echo "	$module => $module $staging_version"; done
        echo ")"
        echo
        echo "tool ("
        for command in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
            echo "	k8s.io/kubernetes/cmd/$command"
        done
        echo ")"
    } >"$dir/go.mod"
    (cd "$dir" && go mod tidy)
    local stamp="" package
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        stamp+=" -X $package.gitVersion=$K8S_VERSION -X $package.gitMajor=1"
        stamp+=" -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
    done
    local staging
    staging="$(new_staging)"
    go_build "$dir" "$staging" "$stamp" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
    finish "kubernetes-$K8S_VERSION" "$staging"
}

# etcd's server module also replaces its siblings with local folders: the same
# wrapper, without replacements (every sibling is published at the same version).
build_etcd() {
    local dir="$cache/src/etcd-$ETCD_VERSION"
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module mediadrive.test/etcd

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

tool go.etcd.io/etcd/server/v3
EOF
    (cd "$dir" && go mod tidy)
    local staging
    staging="$(new_staging)"
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3)
    finish "etcd-$ETCD_VERSION" "$staging"
}

build_containerd() {
    local base="github.com/containerd/containerd/v2/cmd" staging
    staging="$(new_staging)"
    go_install "$staging" "$base/containerd@$CONTAINERD_VERSION" "$base/ctr@$CONTAINERD_VERSION" \
        "$base/containerd-shim-runc-v2@$CONTAINERD_VERSION"
    finish "containerd-$CONTAINERD_VERSION" "$staging"
}

build_helm() {
    # Without these stamps a `go install`ed helm assumes Kubernetes v1.20.
    local flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    local package
    for package in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        flags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$minor"
    done
    local staging
    staging="$(new_staging)"
    go_install "$staging" -ldflags "$flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    finish "helm-$HELM_VERSION" "$staging"
}

build_csi_sanity() {
    local staging
    staging="$(new_staging)"
    go_install "$staging" "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_TEST_VERSION"
    finish "csi-test-$CSI_TEST_VERSION" "$staging"
}

kubernetes=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
have "etcd-$ETCD_VERSION" etcd || step "etcd $ETCD_VERSION" build_etcd
have "containerd-$CONTAINERD_VERSION" containerd ctr containerd-shim-runc-v2 ||
    step "containerd $CONTAINERD_VERSION" build_containerd
have "helm-$HELM_VERSION" helm || step "helm $HELM_VERSION" build_helm
have "csi-test-$CSI_TEST_VERSION" csi-sanity || step "csi-sanity $CSI_TEST_VERSION" build_csi_sanity
have "kubernetes-$K8S_VERSION" "${kubernetes[@]}" ||
    step "kubernetes $K8S_VERSION" build_kubernetes

link() {
    local folder="$1" name
    shift
    for name in "$@"; do
        ln -sfn "../../tools/$folder/$name" "$bin/$name"
    done
}
link "etcd-$ETCD_VERSION" etcd
link "containerd-$CONTAINERD_VERSION" containerd ctr containerd-shim-runc-v2
link "helm-$HELM_VERSION" helm
link "csi-test-$CSI_TEST_VERSION" csi-sanity
link "kubernetes-$K8S_VERSION" "${kubernetes[@]}"
echo "$bin"
