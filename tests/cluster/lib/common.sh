# Shared settings and helpers for tests/cluster/*.sh (sourced, not run).
# shellcheck shell=bash

K8S_VERSION="${LIFEBOAT_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${LIFEBOAT_ETCD_VERSION:-v3.6.16}"
SNAPSHOTTER_VERSION="${LIFEBOAT_SNAPSHOTTER_VERSION:-v8.7.0}"
PROVISIONER_VERSION="${LIFEBOAT_PROVISIONER_VERSION:-v6.4.0}"
SNAPSHOT_METADATA_VERSION="${LIFEBOAT_SNAPSHOT_METADATA_VERSION:-v0.2.0}"
# The k8s.io/* library version the snapshotter and provisioner are built
# against (they pin v0.37.0 and v0.36.1), so that they share compiled packages
# in the Go build cache; empty keeps each one's own.
CSI_K8S_LIBS="${LIFEBOAT_CSI_K8S_LIBS-v0.37.2}"

CLUSTER_CACHE="${LIFEBOAT_CLUSTER_CACHE:-$HOME/.cache/lifeboat/cluster}"
CLUSTER_BIN="$CLUSTER_CACHE/bin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "cluster: error: $*" >&2; exit 1; }
log() { echo "cluster: $(date -u +%H:%M:%S) $*" >&2; }

# wait_for TIMEOUT_SECONDS DESCRIPTION LOGFILE COMMAND...: run COMMAND once a
# second until it succeeds; fail naming DESCRIPTION and LOGFILE after TIMEOUT.
wait_for() {
  local timeout=$1 what=$2 logfile=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout}s waiting for $what; read $logfile"
    fi
    sleep 1
  done
}

# The kube-controller-manager controllers lifeboat needs (no scheduler: the
# pod runner binds pods itself; no node lifecycle controller).
KCM_CONTROLLERS="${LIFEBOAT_KCM_CONTROLLERS:-job-controller,deployment-controller,replicaset-controller,statefulset-controller,persistentvolume-binder-controller,persistentvolume-expander-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,garbage-collector-controller,namespace-controller,serviceaccount-token-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,resourcequota-controller}"

# The node the pod runner is (tests/cluster/pod-runner).
NODE_NAME=lifeboat-node-0
