# shellcheck shell=bash
# shellcheck disable=SC2034 # the settings are used by the scripts that source this
# Settings and helpers shared by up.sh and down.sh (sourced, not run).
#
# Everything the cluster writes lives under $MEDIADRIVE_CLUSTER_DIR; the names it
# gives to shared kernel objects (bridge, cgroups) are its own, so down.sh removes
# exactly what up.sh made.

CLUSTER_DIR="${MEDIADRIVE_CLUSTER_DIR:-/var/tmp/mediadrive-cluster}"
CACHE="${MEDIADRIVE_CACHE:-$HOME/.cache/mediadrive}"
CLUSTER_BIN="${MEDIADRIVE_CLUSTER_BIN:-$CACHE/cluster/bin}"
# Kernel objects shared with the rest of the machine, named for this cluster.
BRIDGE="${MEDIADRIVE_CLUSTER_BRIDGE:-mdcni0}"
CGROUP_ROOT="${MEDIADRIVE_CLUSTER_CGROUP:-mediadrive-cluster}"
# Pods get addresses from POD_CIDR on the bridge, whose own address (POD_GATEWAY)
# is also where the apiserver is advertised to pods; Services from SERVICE_CIDR.
POD_CIDR="${MEDIADRIVE_CLUSTER_POD_CIDR:-10.250.0.0/24}"
POD_GATEWAY="${MEDIADRIVE_CLUSTER_POD_GATEWAY:-10.250.0.1}"
SERVICE_CIDR="${MEDIADRIVE_CLUSTER_SERVICE_CIDR:-10.251.0.0/24}"
SERVICE_FIRST_IP="${MEDIADRIVE_CLUSTER_SERVICE_FIRST_IP:-10.251.0.1}"
APISERVER_PORT="${MEDIADRIVE_CLUSTER_APISERVER_PORT:-6443}"
ETCD_PORT="${MEDIADRIVE_CLUSTER_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${MEDIADRIVE_CLUSTER_ETCD_PEER_PORT:-12380}"
NODE_NAME=localhost
PAUSE_IMAGE="docker.io/mediadrive/pause:dev"

# The kubelet's --root-dir: the usual path, so that charts' defaults (the CSI node
# plugin's hostPath mounts) hold on this cluster as on any other.
KUBELET_DIR="${MEDIADRIVE_CLUSTER_KUBELET_DIR:-/var/lib/kubelet}"
PKI="$CLUSTER_DIR/pki"
RUN="$CLUSTER_DIR/run"
LOGS="$CLUSTER_DIR/logs"
KUBECONFIG_ADMIN="$CLUSTER_DIR/kubeconfig"
CONTAINERD_SOCK="$CLUSTER_DIR/containerd/containerd.sock"
# The studio's stores the examples use (examples/drivevolume.yaml): a PostgreSQL and
# an S3 server (MinIO) on this machine, reached by pods at the Services
# postgres.storage and minio.storage, and from this machine at POD_GATEWAY.
STORES="$CLUSTER_DIR/stores"
STORES_PG_PORT="${MEDIADRIVE_CLUSTER_PG_PORT:-15432}"
STORES_S3_PORT="${MEDIADRIVE_CLUSTER_S3_PORT:-19000}"
STORES_BUCKET=studio-media
# Components in start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy
    cluster-dns example-postgres example-minio)
# The cgroup v1 hierarchies the kubelet needs its cgroupRoot in.
CGROUP_HIERARCHIES=(cpu cpuacct cpuset memory devices freezer blkio pids systemd)

log() {
    echo "cluster: $*" >&2
}

die() {
    log "$*"
    exit 1
}

# step NAME COMMAND...: run a step and say how long it took.
step() {
    local name="$1" start
    shift
    start=$(date +%s.%N)
    "$@"
    log "$name took $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
}

# pid_of NAME: the recorded pid of a component, if that process still runs.
pid_of() {
    local file="$RUN/$1.pid" pid
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

kubectl_admin() {
    "$CLUSTER_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.2 s until it succeeds.
wait_for() {
    local timeout="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}
