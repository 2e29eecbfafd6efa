#!/usr/bin/env bash
# Stop the cluster scripts/cluster/up.sh started and remove what it made: its
# processes (by the pids it recorded; pod processes by its cgroups; containerd's
# shims by its socket), every mount under the cluster folder, kube-proxy's and the
# kubelet's iptables chains, the bridge, the cgroups, and the folder itself
# (component logs are kept in $MEDIADRIVE_CLUSTER_DIR/logs). Safe to run twice.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/cluster/lib.sh
source "$here/lib.sh"

# stop_pids SECONDS PID...: TERM, then KILL whatever still runs after SECONDS.
stop_pids() {
    local timeout="$1" pid deadline alive
    shift
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while :; do
        alive=()
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
        done
        [ "${#alive[@]}" -gt 0 ] || return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            kill -KILL "${alive[@]}" 2>/dev/null || true
            sleep 0.2
            return 0
        fi
        sleep 0.1
    done
}

# stop_components NAME...: stop these components together, by their recorded pids.
stop_components() {
    local name pid pids=() start=$SECONDS
    for name in "$@"; do
        if pid="$(pid_of "$name")"; then pids+=("$pid"); fi
    done
    stop_pids 10 "${pids[@]}"
    for name in "$@"; do rm -f "$RUN/$name.pid"; done
    [ "${#pids[@]}" -eq 0 ] || log "stopped $* in $((SECONDS - start))s"
}

# Pod processes: everything in the kubelet's cgroupRoot.
cgroup_pids() {
    local hierarchy="/sys/fs/cgroup/pids/$CGROUP_ROOT"
    [ -d "$hierarchy" ] || hierarchy="/sys/fs/cgroup/memory/$CGROUP_ROOT"
    [ -d "$hierarchy" ] || return 0
    find "$hierarchy" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
}

# containerd's shims are started with this cluster's socket in their arguments.
shim_pids() {
    local cmdline pid
    for cmdline in /proc/[0-9]*/cmdline; do
        pid="${cmdline#/proc/}"
        pid="${pid%/cmdline}"
        if tr '\0' ' ' 2>/dev/null <"$cmdline" | grep -qF -- "-address $CONTAINERD_SOCK "; then
            echo "$pid"
        fi
    done
}

stop_all() {
    stop_components example-minio example-postgres
    stop_components cluster-dns kube-proxy kubelet kube-scheduler kube-controller-manager \
        kube-apiserver
    local pids
    mapfile -t pids < <(cgroup_pids)
    if [ "${#pids[@]}" -gt 0 ]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
    mapfile -t pids < <(shim_pids)
    stop_pids 5 "${pids[@]}"
    stop_components containerd
    stop_components etcd
}

# The kubelet's folder this cluster used (up.sh records it).
used_kubelet_dir() {
    [ -f "$CLUSTER_DIR/kubelet-dir" ] && cat "$CLUSTER_DIR/kubelet-dir"
}

unmount_all() {
    local mounts point kubelet_dir
    [ -d "$CLUSTER_DIR" ] || return 0
    kubelet_dir="$(used_kubelet_dir || true)"
    # Deepest first (the kubelet's folder's own bind last); the mount table escapes
    # spaces as \040.
    mapfile -t mounts < <(awk -v dir="$CLUSTER_DIR/" -v kubelet="${kubelet_dir:-/nonexistent}" \
        'index($5, dir) == 1 || index($5, kubelet "/") == 1 || $5 == kubelet { print $5 }' \
        /proc/self/mountinfo | sort -r -u)
    for point in "${mounts[@]}"; do
        point="$(printf '%b' "$point")"
        umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null || log "cannot unmount $point"
    done
}

clean_iptables() {
    if [ -x "$CLUSTER_BIN/kube-proxy" ] && iptables -t nat -S KUBE-SERVICES >/dev/null 2>&1; then
        "$CLUSTER_BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
    fi
    # What is left: the kubelet's canary and hint chains, and any KUBE-* rule.
    local tool table chain rule
    for tool in iptables ip6tables; do
        command -v "$tool" >/dev/null || continue
        for table in filter nat mangle; do
            while read -r rule; do
                # iptables -S quotes the words of a rule as a shell would (comments).
                eval "$tool" -t "$table" "${rule/#-A/-D}" 2>/dev/null || true
            done < <("$tool" -t "$table" -S 2>/dev/null | grep -E '^-A .*-j KUBE-' || true)
            for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }'); do
                "$tool" -t "$table" -F "$chain" 2>/dev/null || true
            done
            for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }'); do
                "$tool" -t "$table" -X "$chain" 2>/dev/null || true
            done
        done
    done
}

clean_network() {
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link delete "$BRIDGE"
    fi
    if [ -f "$RUN/ip_forward" ]; then
        cat "$RUN/ip_forward" >/proc/sys/net/ipv4/ip_forward
    fi
    # libcni's result cache for this cluster's pod sandboxes.
    local sandbox
    for sandbox in "$CLUSTER_DIR"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*; do
        [ -d "$sandbox" ] && rm -f /var/lib/cni/results/*-"${sandbox##*/}"-*
    done
    rm -f /var/lib/cni/results/mediadrive-*
}

# Every hierarchy, the unified one too (runc makes the cgroup there as well).
remove_cgroups() {
    local root
    for root in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
        [ -d "$root" ] || continue
        # Children before parents.
        find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ -d "$root" ] && log "cannot remove cgroup $root"
    done
    return 0
}

remove_state() {
    [ -d "$CLUSTER_DIR" ] || return 0
    local entry kubelet_dir
    kubelet_dir="$(used_kubelet_dir || true)"
    if [ -n "$kubelet_dir" ] && [ -d "$kubelet_dir" ]; then
        find "$kubelet_dir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
    fi
    for entry in "$CLUSTER_DIR"/* "$CLUSTER_DIR"/.[!.]*; do
        [ -e "$entry" ] || continue
        [ "$entry" = "$LOGS" ] && continue
        rm -rf --one-file-system "$entry"
    done
}

main() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    mkdir -p "$LOGS"
    step stop stop_all
    step unmount unmount_all
    step iptables clean_iptables
    step network clean_network
    step cgroups remove_cgroups
    step state remove_state
    log "down"
}

main "$@"
