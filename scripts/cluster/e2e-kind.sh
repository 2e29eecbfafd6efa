#!/usr/bin/env bash
# Run tests/e2e in a kind cluster, where a Docker engine runs: create the cluster,
# load the mediadrive images (built by scripts/images/build.sh, as docker-archives)
# and run pytest with its kubeconfig. Where no Docker engine runs (as on the
# project's own test machines, which use scripts/cluster/up.sh), say so and exit 0.
#
# KIND_CLUSTER names the kind cluster (default mediadrive-e2e); KEEP_KIND=1 keeps
# it afterwards. Extra pytest arguments: PYTEST_ARGS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
name="${KIND_CLUSTER:-mediadrive-e2e}"
out="${MEDIADRIVE_IMAGES_OUT:-$repo/.cache/images}"

if ! command -v docker >/dev/null 2>&1 || ! command -v kind >/dev/null 2>&1 ||
    ! docker info >/dev/null 2>&1; then
    echo "e2e-kind: no Docker engine (or no kind) on this machine: nothing run." \
        "Here the e2e suite runs on the local cluster: make cluster-up, then pytest tests/e2e." >&2
    exit 0
fi

kubeconfig="$(mktemp)"
created=0
cleanup() {
    if [ "$created" -eq 1 ] && [ "${KEEP_KIND:-0}" != 1 ]; then
        kind delete cluster --name "$name" >/dev/null 2>&1 || true
    fi
    rm -f "$kubeconfig"
}
trap cleanup EXIT

if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
    kind create cluster --name "$name" --wait 120s
    created=1
fi
kind get kubeconfig --name "$name" >"$kubeconfig"

"$repo/scripts/images/build.sh"
for archive in "$out"/*.tar; do
    kind load image-archive "$archive" --name "$name"
done

# shellcheck disable=SC2086 # PYTEST_ARGS is a word list
MEDIADRIVE_E2E_KUBECONFIG="$kubeconfig" "$repo/.venv/bin/pytest" -q "$repo/tests/e2e" ${PYTEST_ARGS:-}
