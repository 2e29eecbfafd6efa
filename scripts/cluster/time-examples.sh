#!/usr/bin/env bash
# Time the path from nothing to the examples' storage pods Ready:
#   make cluster-up && make images && helm install md charts/mediadrive
#   && kubectl apply -f examples/   -> seconds until the StoragePod's pods are Ready.
# Prints one line per step and the total. Leaves the cluster up with the release
# `md` (namespace mediadrive-system) and the examples in `default`; remove them with
#   helm uninstall md -n mediadrive-system; kubectl delete -f examples/
# or `make cluster-down`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/cluster/lib.sh
source "$here/lib.sh"
export KUBECONFIG="$KUBECONFIG_ADMIN"
kubectl=("$CLUSTER_BIN/kubectl")
helm=("$CLUSTER_BIN/helm")

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

start=$(now)
t=$(now)
make -C "$repo" --no-print-directory cluster-up >/dev/null
echo "cluster-up: $(since "$t")s"
t=$(now)
make -C "$repo" --no-print-directory images >/dev/null 2>&1
echo "images: $(since "$t")s"
t=$(now)
"${helm[@]}" install md "$repo/charts/mediadrive" --namespace mediadrive-system \
    --create-namespace --set operator.image.pullPolicy=Never >/dev/null
echo "helm install: $(since "$t")s"
applied=$(now)
"${kubectl[@]}" apply -f "$repo/examples/" >/dev/null
echo "kubectl apply: $(since "$applied")s"
until [ "$("${kubectl[@]}" get statefulset la-pod -o jsonpath='{.status.readyReplicas}' \
    2>/dev/null)" = "1" ]; do
    sleep 0.5
done
echo "storage pods Ready: $(since "$applied")s after kubectl apply"
until [ "$("${kubectl[@]}" get storagepod la -o jsonpath='{.status.readyReplicas}')" = "1" ]; do
    sleep 0.5
done
echo "StoragePod status readyReplicas 1: $(since "$applied")s after kubectl apply"
echo "total: $(since "$start")s"
