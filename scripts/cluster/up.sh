#!/usr/bin/env bash
# Start a real one-node Kubernetes cluster on this machine, as root, without Docker:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (runc,
# CNI bridge), kubelet and kube-proxy (iptables), all on loopback, all state under
# $MEDIADRIVE_CLUSTER_DIR (default /var/tmp/mediadrive-cluster), one log per
# component under its logs/. The binaries come from scripts/build-cluster-binaries.sh.
#
# Idempotent: when the cluster is already up it says so and exits 0. When a run
# left parts behind, they are stopped first (scripts/cluster/down.sh).
# Prints `export KUBECONFIG=...` on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/cluster/lib.sh
source "$here/lib.sh"

preflight() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it starts a kubelet and containerd)"
    local name
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy \
        kubectl containerd containerd-shim-runc-v2 ctr; do
        [ -x "$CLUSTER_BIN/$name" ] || die "missing $CLUSTER_BIN/$name: run scripts/build-cluster-binaries.sh"
    done
    for name in runc iptables openssl gcc curl ip; do
        command -v "$name" >/dev/null || die "missing $name: run scripts/install-system-deps.sh"
    done
    [ -x /usr/lib/cni/bridge ] || die "missing CNI plugins (/usr/lib/cni): install containernetworking-plugins"
}

# One cluster a machine: its ports, bridge and iptables chains are the machine's.
ports_free() {
    local port busy=()
    for port in "$APISERVER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" 10248 10249 10250 10256 10257 10259; do
        if [ -n "$(ss -Hltn "sport = :$port")" ]; then busy+=("$port"); fi
    done
    [ "${#busy[@]}" -eq 0 ] || die "ports in use: ${busy[*]} (another cluster running? scripts/cluster/down.sh)"
}

node_ready() {
    local status
    status="$(kubectl_admin get node "$NODE_NAME" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" || return 1
    [ "$status" = True ]
}

already_up() {
    local name
    for name in "${COMPONENTS[@]}"; do
        pid_of "$name" >/dev/null || return 1
    done
    node_ready
}

any_running() {
    local name
    for name in "${COMPONENTS[@]}"; do
        pid_of "$name" >/dev/null && return 0
    done
    return 1
}

# --- certificates ------------------------------------------------------------

# cert NAME SUBJECT [SANS]: a key and a certificate signed by the cluster CA.
cert() {
    local name="$1" subject="$2" sans="${3:-}"
    [ -f "$PKI/$name.crt" ] && return 0
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
    } >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_pki() {
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    if [ ! -f "$PKI/ca.crt" ]; then
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$PKI/ca.key" -subj "/CN=mediadrive-cluster-ca" -days 3650 \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign" \
            -out "$PKI/ca.crt" 2>/dev/null
    fi
    local api_sans="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    api_sans+=",DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
    api_sans+=",IP:127.0.0.1,IP:$SERVICE_FIRST_IP,IP:$POD_GATEWAY"
    cert apiserver "/CN=kube-apiserver" "$api_sans"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    cert admin "/O=system:masters/CN=mediadrive-admin"
    cert controller-manager "/CN=system:kube-controller-manager"
    cert scheduler "/CN=system:kube-scheduler"
    cert kube-proxy "/CN=system:kube-proxy"
    cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
    cert kubelet-serving "/CN=$NODE_NAME" "DNS:$NODE_NAME,IP:127.0.0.1"
    if [ ! -f "$PKI/sa.key" ]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
        openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    fi
}

# kubeconfig FILE CERT_NAME: certificates embedded, so the file works on its own.
kubeconfig() {
    local file="$1" name="$2"
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mediadrive
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: mediadrive
  context:
    cluster: mediadrive
    user: $name
current-context: mediadrive
EOF
    chmod 600 "$file"
}

make_kubeconfigs() {
    mkdir -p "$CLUSTER_DIR/kubeconfigs"
    kubeconfig "$KUBECONFIG_ADMIN" admin
    local name
    for name in controller-manager scheduler kubelet kube-proxy; do
        kubeconfig "$CLUSTER_DIR/kubeconfigs/$name" "$name"
    done
}

# --- host set-up -----------------------------------------------------------

# The kubelet's own cgroupRoot, in every cgroup v1 hierarchy it uses.
make_cgroups() {
    local hierarchy dir
    for hierarchy in "${CGROUP_HIERARCHIES[@]}"; do
        [ -d "/sys/fs/cgroup/$hierarchy" ] || continue
        dir="/sys/fs/cgroup/$hierarchy/$CGROUP_ROOT"
        mkdir -p "$dir"
        if [ "$hierarchy" = cpuset ]; then
            cat "/sys/fs/cgroup/cpuset/cpuset.cpus" >"$dir/cpuset.cpus"
            cat "/sys/fs/cgroup/cpuset/cpuset.mems" >"$dir/cpuset.mems"
        fi
    done
}

# The bridge exists before the first pod so the apiserver can be advertised on it;
# forwarding is on while the cluster runs (down.sh puts back what it was).
make_network() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    local prefix="${POD_CIDR#*/}"
    if ! ip -4 addr show dev "$BRIDGE" | grep -q "inet $POD_GATEWAY/"; then
        ip addr add "$POD_GATEWAY/$prefix" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    [ -f "$RUN/ip_forward" ] || cat /proc/sys/net/ipv4/ip_forward >"$RUN/ip_forward"
    echo 1 >/proc/sys/net/ipv4/ip_forward
}

# The pause image: a static C program, built and packed once per source version.
pause_image() {
    local source="$here/pause.c" sum out
    sum="$(sha256sum "$source" | cut -c1-16)"
    out="$CACHE/cluster/pause-$sum.tar"
    if [ ! -f "$out" ]; then
        local work
        work="$(mktemp -d)"
        mkdir -p "$work/rootfs"
        gcc -static -Os -s -o "$work/rootfs/pause" "$source"
        python3 "$here/../images/oci.py" layer "$work/rootfs" "$work/layer.tar" >/dev/null
        python3 "$here/../images/oci.py" archive --tag "$PAUSE_IMAGE" --layer "$work/layer.tar" \
            --entrypoint /pause "$out" >/dev/null
        rm -rf "$work"
    fi
    echo "$out"
}

# --- components ----------------------------------------------------------------

# start NAME COMMAND...: run a component in its own session, log to logs/NAME.log.
start() {
    local name="$1"
    shift
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

start_etcd() {
    start etcd "$CLUSTER_BIN/etcd" --name mediadrive --data-dir "$CLUSTER_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "mediadrive=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --log-level warn --quota-backend-bytes 2147483648
    wait_for 30 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
    pid_of etcd >/dev/null || die "etcd exited"
}

start_apiserver() {
    start kube-apiserver "$CLUSTER_BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$POD_GATEWAY" \
        --client-ca-file "$PKI/ca.crt" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$PKI/ca.crt" \
        --kubelet-preferred-address-types Hostname,InternalIP \
        --service-account-key-file "$PKI/sa.pub" \
        --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --authorization-mode Node,RBAC --allow-privileged=true \
        --profiling=false --v 1
}

wait_apiserver() {
    wait_for 60 kube-apiserver curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" \
        --key "$PKI/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz"
    pid_of kube-apiserver >/dev/null || die "kube-apiserver exited"
}

containerd_config() {
    local cd="$CLUSTER_DIR/containerd"
    mkdir -p "$cd" "$CLUSTER_DIR/cni/net.d"
    cat >"$cd/config.toml" <<EOF
version = 3
root = "$cd/root"
state = "$cd/state"

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[debug]
  address = "$CONTAINERD_SOCK.debug"

[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins.'io.containerd.cri.v1.runtime']
  # Nothing here may lower oom_score_adj (no CAP_SYS_RESOURCE in this sandbox).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$CLUSTER_DIR/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
    cat >"$CLUSTER_DIR/cni/net.d/10-mediadrive.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "mediadrive",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

start_containerd() {
    containerd_config
    # The runc shim must be on PATH.
    start containerd env PATH="$CLUSTER_BIN:$PATH" "$CLUSTER_BIN/containerd" \
        --config "$CLUSTER_DIR/containerd/config.toml"
}

import_pause() {
    local archive
    archive="$(pause_image)"
    wait_for 30 containerd "$CLUSTER_BIN/ctr" --address "$CONTAINERD_SOCK" version
    "$CLUSTER_BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" \
        >/dev/null 2>>"$LOGS/ctr.log"
}

start_controllers() {
    local kc="$CLUSTER_DIR/kubeconfigs"
    start kube-controller-manager "$CLUSTER_BIN/kube-controller-manager" \
        --kubeconfig "$kc/controller-manager" \
        --authentication-kubeconfig "$kc/controller-manager" \
        --authorization-kubeconfig "$kc/controller-manager" \
        --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false --v 1
    start kube-scheduler "$CLUSTER_BIN/kube-scheduler" \
        --kubeconfig "$kc/scheduler" \
        --authentication-kubeconfig "$kc/scheduler" --authorization-kubeconfig "$kc/scheduler" \
        --bind-address 127.0.0.1 --leader-elect=false --v 1
}

kubelet_config() {
    local dir="$CLUSTER_DIR/kubelet-config"
    mkdir -p "$dir"
    # Pods get the host's resolvers, without loopback ones they cannot reach.
    grep -E '^(nameserver|search|options)' /etc/resolv.conf | grep -v -E 'nameserver (127\.|::1)' \
        >"$dir/resolv.conf" || true
    cat >"$dir/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
resolvConf: $dir/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$POD_GATEWAY]
podLogsDir: $CLUSTER_DIR/pod-logs
volumePluginDir: $KUBELET_DIR/volume-plugins
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 24h
maxPods: 60
serializeImagePulls: false
EOF
}

start_kubelet() {
    kubelet_config
    mkdir -p "$KUBELET_DIR" "$CLUSTER_DIR/pod-logs"
    # down.sh unmounts and empties it.
    echo "$KUBELET_DIR" >"$CLUSTER_DIR/kubelet-dir"
    # Bidirectional mount propagation (the CSI node plugin's FUSE and bind mounts
    # reaching kubelet and the pods) needs the kubelet's folder on a shared mount.
    if ! awk -v dir="$KUBELET_DIR" '$5 == dir && / shared:/ { found = 1 } END { exit !found }' \
        /proc/self/mountinfo; then
        mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
        mount --make-rshared "$KUBELET_DIR"
    fi
    start kubelet env PATH="$CLUSTER_BIN:$PATH" "$CLUSTER_BIN/kubelet" \
        --config "$CLUSTER_DIR/kubelet-config/config.yaml" \
        --kubeconfig "$CLUSTER_DIR/kubeconfigs/kubelet" \
        --root-dir "$KUBELET_DIR" --hostname-override "$NODE_NAME" --v 1
}

start_kube_proxy() {
    local config="$CLUSTER_DIR/kube-proxy.yaml"
    cat >"$config" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $CLUSTER_DIR/kubeconfigs/kube-proxy
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  # Pod -> Service -> pod on the same bridge needs the reply to come back here.
  masqueradeAll: true
  localhostNodePorts: false
# Leave the machine's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
    start kube-proxy "$CLUSTER_BIN/kube-proxy" --config "$config" --v 1
}

# A minimal cluster DNS (dns.py) on the bridge address, reading Services and
# EndpointSlices with kube-proxy's identity (which may list both).
start_dns() {
    start cluster-dns python3 "$here/dns.py" --listen "$POD_GATEWAY" --port 53 \
        --apiserver "https://127.0.0.1:$APISERVER_PORT" --ca "$PKI/ca.crt" \
        --cert "$PKI/kube-proxy.crt" --key "$PKI/kube-proxy.key"
    wait_for 10 "cluster DNS" dns_listening
}

# --- the examples' stores ----------------------------------------------------

start_example_stores() {
    local pg_bin minio="$CACHE/bin/minio" password s3_secret
    pg_bin="$(dirname "$(find /usr/lib/postgresql -path '*/bin/postgres' | sort -V | tail -n 1)")"
    [ -x "$minio" ] || die "no MinIO at $minio: run scripts/build-test-binaries.sh"
    password="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    s3_secret="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    # PostgreSQL runs as its Debian user; password logins over TCP only.
    mkdir -p "$STORES"
    chmod 711 "$STORES"
    install -d -o postgres -g postgres -m 700 "$STORES/postgres" "$STORES/postgres-socket"
    install -o postgres -m 600 /dev/null "$STORES/postgres/password"
    printf '%s\n' "$password" >"$STORES/postgres/password"
    runuser -u postgres -- "$pg_bin/initdb" --pgdata "$STORES/postgres/data" --username postgres \
        --pwfile "$STORES/postgres/password" --auth-local trust --auth-host scram-sha-256 \
        --encoding UTF8 --no-locale --no-sync >"$LOGS/example-postgres-init.log" 2>&1
    rm -f "$STORES/postgres/password"
    echo "host all all samenet scram-sha-256" >>"$STORES/postgres/data/pg_hba.conf"
    start example-postgres runuser -u postgres -- "$pg_bin/postgres" -D "$STORES/postgres/data" \
        -k "$STORES/postgres-socket" -p "$STORES_PG_PORT" -c "listen_addresses=$POD_GATEWAY" \
        -c max_connections=200
    wait_for 30 "example PostgreSQL" "$pg_bin/pg_isready" -q -h "$POD_GATEWAY" -p "$STORES_PG_PORT"
    mkdir -p "$STORES/minio"
    chmod 700 "$STORES/minio"
    start example-minio env MINIO_ROOT_USER=mediadrive MINIO_ROOT_PASSWORD="$s3_secret" \
        MINIO_UPDATE=off MINIO_CI_CD=1 HOME="$STORES/minio" "$minio" server "$STORES/minio/data" \
        --address "$POD_GATEWAY:$STORES_S3_PORT" --console-address "127.0.0.1:$((STORES_S3_PORT + 1))" --quiet
    wait_for 30 "example MinIO" curl -fsS "http://$POD_GATEWAY:$STORES_S3_PORT/minio/health/ready"
    curl -fsS --aws-sigv4 "aws:amz:us-east-1:s3" --user "mediadrive:$s3_secret" \
        -X PUT "http://$POD_GATEWAY:$STORES_S3_PORT/$STORES_BUCKET" >/dev/null
    (
        umask 077
        cat >"$STORES/env" <<EOF
# The examples' stores, as this machine reaches them (scripts/cluster/up.sh).
export MEDIADRIVE_EXAMPLE_META_URL='postgresql://postgres:$password@$POD_GATEWAY:$STORES_PG_PORT/postgres'
export MEDIADRIVE_EXAMPLE_STORE_URL='s3://$STORES_BUCKET/show?endpoint=http://$POD_GATEWAY:$STORES_S3_PORT'
export AWS_ACCESS_KEY_ID=mediadrive
export AWS_SECRET_ACCESS_KEY='$s3_secret'
EOF
    )
    # Pods reach them by name; the Secrets the examples name hold the credentials.
    {
        printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: storage}\n'
        host_service postgres 5432 "$STORES_PG_PORT"
        host_service minio 9000 "$STORES_S3_PORT"
        cat <<EOF
---
apiVersion: v1
kind: Secret
metadata: {name: show-metadata, namespace: default}
stringData:
  url: postgresql://postgres:$password@postgres.storage.svc:5432/postgres
---
apiVersion: v1
kind: Secret
metadata: {name: show-s3, namespace: default}
stringData: {accessKeyId: mediadrive, secretAccessKey: "$s3_secret"}
EOF
    } | kubectl_admin apply -f - >/dev/null
}

# host_service NAME PORT HOST_PORT: a Service NAME.storage whose PORT reaches this
# machine's HOST_PORT on the bridge address (no selector: one EndpointSlice).
host_service() {
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: storage}
spec:
  ports: [{name: main, port: $2, targetPort: $3}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $1-host
  namespace: storage
  labels: {kubernetes.io/service-name: $1}
addressType: IPv4
ports: [{name: main, port: $3}]
endpoints: [{addresses: ["$POD_GATEWAY"]}]
EOF
}

dns_listening() {
    pid_of cluster-dns >/dev/null && [ -n "$(ss -Hlun "src $POD_GATEWAY and sport = :53")" ]
}

wait_node() {
    wait_for 120 "node $NODE_NAME Ready" node_ready
    # Pods in the default namespace need its service account.
    wait_for 60 "default service account" kubectl_admin -n default get serviceaccount default
}

# On failure: what the components that died last said, and how to clean up.
report_failure() {
    local status=$? name
    [ "$status" -ne 0 ] || return 0
    for name in "${COMPONENTS[@]}"; do
        if [ -f "$RUN/$name.pid" ] && ! pid_of "$name" >/dev/null; then
            log "$name exited; the end of $LOGS/$name.log:"
            tail -n 5 "$LOGS/$name.log" >&2 || true
        fi
    done
    log "failed (exit $status); logs in $LOGS; scripts/cluster/down.sh stops what started"
}

main() {
    preflight
    if already_up; then
        log "already up ($CLUSTER_DIR)"
        echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
        return 0
    fi
    if any_running || [ -d "$RUN" ]; then
        # Parts of an earlier run (processes, mounts, a stale etcd): start clean.
        log "an earlier cluster left parts behind: removing them first"
        "$here/down.sh"
    fi
    ports_free
    mkdir -p "$CLUSTER_DIR" "$RUN" "$LOGS"
    # The logs are those of this run (down.sh keeps them for a look afterwards).
    rm -f "$LOGS"/*.log
    trap report_failure EXIT
    step certificates make_pki
    step kubeconfigs make_kubeconfigs
    step cgroups make_cgroups
    step network make_network
    step etcd start_etcd
    start_apiserver
    step containerd start_containerd
    step pause-image import_pause
    step kube-apiserver wait_apiserver
    step controllers start_controllers
    step kubelet start_kubelet
    step kube-proxy start_kube_proxy
    step cluster-dns start_dns
    step node-ready wait_node
    step example-stores start_example_stores
    log "up; logs in $LOGS; the examples' stores: source $STORES/env"
    echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}

main "$@"
