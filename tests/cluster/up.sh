#!/usr/bin/env bash
# up.sh DIR: build (once, cached) and start a Kubernetes control plane with
# the CSI snapshot stack on loopback, everything kept in DIR. Writes
# DIR/kubeconfig and DIR/env (source it: KUBECONFIG and kubectl on PATH).
# Stop it with down.sh DIR. See README.md beside this file.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$HERE/lib/build.sh"

[[ $# -eq 1 ]] || die "usage: up.sh DIR"
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
# ours PID: the process runs and is one of DIR's (its command line names DIR).
ours() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$DIR/"; }
if [[ -f $DIR/pids/kube-apiserver.pid ]] && ours "$(cat "$DIR/pids/kube-apiserver.pid")"; then
  die "a cluster already runs in $DIR (stop it with down.sh $DIR)"
fi
START=$SECONDS
# A failed start stops what it started (LIFEBOAT_CLUSTER_KEEP_ON_FAILURE=1 keeps
# it for a look), so that a failing CI step leaves no process behind.
on_exit() {
  local rc=$?
  if ((rc != 0)) && [[ ${LIFEBOAT_CLUSTER_KEEP_ON_FAILURE:-0} != 1 && -d $DIR/pids ]]; then
    log "up.sh failed (exit $rc): stopping what it started in $DIR (logs stay in $DIR/logs)"
    "$HERE/down.sh" "$DIR" || true
  fi
}
trap on_exit EXIT

build_all
log "binaries ready in $CLUSTER_BIN ($((SECONDS - START))s)"

mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/pki" "$DIR/etcd" "$DIR/csi"
LOGS="$DIR/logs"
export PATH="$CLUSTER_BIN:$PATH"

# --- ports: free ones, picked once per DIR and kept in DIR/ports -------------
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
touch "$DIR/ports"
for p in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SNAPSHOT_METADATA_PORT KUBELET_PORT; do
  grep -q "^$p=" "$DIR/ports" || echo "$p=$(free_port)" >>"$DIR/ports"
done
source "$DIR/ports"
for p in $ETCD_PORT $ETCD_PEER_PORT $APISERVER_PORT $KCM_PORT $SNAPSHOT_METADATA_PORT $KUBELET_PORT; do
  if (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
    die "port $p (from $DIR/ports) is taken; stop what uses it or remove $DIR/ports"
  fi
done

# --- certificates (openssl), made once per DIR --------------------------------
PKI="$DIR/pki"
ossl() { openssl "$@" >>"$LOGS/pki.log" 2>&1 || die "openssl $1 failed; read $LOGS/pki.log"; }
# cert NAME SUBJECT EXT: a key and a certificate signed by the DIR's CA.
cert() {
  local name=$1 subj=$2 ext=$3
  [[ -f $PKI/$name.crt ]] && return 0
  ossl genrsa -out "$PKI/$name.key" 2048
  ossl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt"
}
if [[ ! -f $PKI/ca.crt ]]; then
  ossl genrsa -out "$PKI/ca.key" 2048
  ossl req -x509 -new -key "$PKI/ca.key" -subj "/CN=lifeboat-test-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$PKI/ca.crt"
fi
CLIENT_EXT=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
SERVER_EXT=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
cert apiserver "/CN=kube-apiserver" "$SERVER_EXT"$'\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local'
cert admin "/O=system:masters/CN=lifeboat-admin" "$CLIENT_EXT"
cert kube-controller-manager "/CN=system:kube-controller-manager" "$CLIENT_EXT"
# The pod runner's kubelet API (logs): its serving cert, and the client cert
# the apiserver shows it.
cert kubelet "/CN=$NODE_NAME" "$SERVER_EXT"$'\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:'"$NODE_NAME"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$CLIENT_EXT"
cert snapshot-metadata "/CN=csi-snapshot-metadata" "$SERVER_EXT"$'\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:csi-snapshot-metadata.default'
if [[ ! -f $PKI/sa.key ]]; then
  ossl genrsa -out "$PKI/sa.key" 2048
  ossl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
fi

# kubeconfig FILE USER: a kubeconfig for USER's client cert.
kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: lifeboat
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$user.crt")
    client-key-data: $(base64 -w0 <"$PKI/$user.key")
contexts:
- name: lifeboat
  context: {cluster: lifeboat, user: $user}
current-context: lifeboat
KC
}
kubeconfig "$DIR/kubeconfig" admin
kubeconfig "$PKI/kube-controller-manager.kubeconfig" kube-controller-manager
cat >"$DIR/env" <<ENV
export KUBECONFIG='$DIR/kubeconfig'
export PATH='$CLUSTER_BIN':"\$PATH"
ENV
export KUBECONFIG="$DIR/kubeconfig"

# --- processes -----------------------------------------------------------------
# start NAME COMMAND...: run COMMAND detached, log in DIR/logs/NAME.log, pid in
# DIR/pids/NAME.pid.
start() {
  local name=$1; shift
  if [[ -f $DIR/pids/$name.pid ]] && ours "$(cat "$DIR/pids/$name.pid")"; then
    die "$name already runs (pid $(cat "$DIR/pids/$name.pid")); run down.sh $DIR first"
  fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}
# alive NAME: NAME (started by this run: its pid cannot have been reused yet).
alive() { kill -0 "$(cat "$DIR/pids/$1.pid")" 2>/dev/null || die "$1 exited; read $LOGS/$1.log"; }
# wait_up TIMEOUT NAME COMMAND...: wait for COMMAND, failing early if NAME died.
wait_up() {
  local timeout=$1 name=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    alive "$name"
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $name; read $LOGS/$name.log"
    sleep 1
  done
}

start etcd etcd --name lifeboat --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "lifeboat=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "" --quota-backend-bytes 2147483648 --log-level warn
wait_up 60 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver kube-apiserver \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --endpoint-reconciler-type none \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
  --allow-privileged=true \
  --profiling=false
wait_up 120 kube-apiserver kubectl get --raw /readyz

start kube-controller-manager kube-controller-manager \
  --kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file "$PKI/sa.key" \
  --root-ca-file "$PKI/ca.crt" \
  --controllers "$KCM_CONTROLLERS"
wait_up 120 kube-controller-manager kubectl -n default get serviceaccount default

# --- CSI: CRDs from the external-snapshotter module source in the module cache
SNAP_CLIENT=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" | jq -r .Dir)
SMS_CLIENT=$(go mod download -json "github.com/kubernetes-csi/external-snapshot-metadata/client@v0.1.0" | jq -r .Dir)
[[ -d $SNAP_CLIENT/config/crd && -d $SMS_CLIENT/config/crd ]] || die "CRD sources not found in the Go module cache"
kubectl apply --server-side $(printf -- '-f %s ' "$SNAP_CLIENT"/config/crd/*storage.k8s.io_*.yaml) >>"$LOGS/setup.log" 2>&1 ||
  die "applying the snapshot CRDs failed; read $LOGS/setup.log"
kubectl apply --server-side -f "$SMS_CLIENT/config/crd/cbt.storage.k8s.io_snapshotmetadataservices.yaml" >>"$LOGS/setup.log" 2>&1 ||
  die "applying the SnapshotMetadataService CRD failed; read $LOGS/setup.log"
kubectl wait --for condition=established --timeout=60s \
  crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io crd/volumegroupsnapshots.groupsnapshot.storage.k8s.io \
  crd/volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io crd/volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io \
  crd/snapshotmetadataservices.cbt.storage.k8s.io >>"$LOGS/setup.log" 2>&1 ||
  die "the snapshot CRDs were not established; read $LOGS/setup.log"

kubectl apply -f - >>"$LOGS/setup.log" 2>&1 <<YAML || die "applying the storage classes failed; read $LOGS/setup.log"
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: hostpath.csi.k8s.io
spec:
  attachRequired: false
  podInfoOnMount: false
  volumeLifecycleModes: [Persistent]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: csi-hostpath-sc
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: hostpath.csi.k8s.io
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: csi-hostpath-snapclass
  annotations: {snapshot.storage.kubernetes.io/is-default-class: "true"}
driver: hostpath.csi.k8s.io
deletionPolicy: Delete
---
apiVersion: groupsnapshot.storage.k8s.io/v1beta2
kind: VolumeGroupSnapshotClass
metadata:
  name: csi-hostpath-groupsnapclass
  annotations: {groupsnapshot.storage.kubernetes.io/is-default-class: "true"}
driver: hostpath.csi.k8s.io
deletionPolicy: Delete
---
apiVersion: cbt.storage.k8s.io/v1alpha1
kind: SnapshotMetadataService
metadata:
  name: hostpath.csi.k8s.io
spec:
  address: 127.0.0.1:$SNAPSHOT_METADATA_PORT
  caCert: $(base64 -w0 <"$PKI/ca.crt")
  audience: lifeboat-snapshot-metadata
YAML

CSI_SOCK="$DIR/csi/csi.sock"
start csi-hostpath csi-hostpath -endpoint "unix://$CSI_SOCK" -datadir "$DIR/csi/data" \
  -drivername hostpath.csi.k8s.io -nodeid lifeboat-node-0
wait_up 30 csi-hostpath test -S "$CSI_SOCK"

# The node: the pod runner (our minimal kubelet) registers lifeboat-node-0,
# binds and runs pods. Images are mapped to host binaries by DIR/images.
if [[ ! -f $DIR/images ]]; then
  cat >"$DIR/images" <<'IMAGES'
# The pod runner's image map (re-read for every container start): lines
# IMAGE-PREFIX /host/path/to/binary. A container whose image starts with a
# prefix runs that binary (its entrypoint) with the container's args, or its
# command if set; any other image runs command+args as written, on the host.
# e.g.: ghcr.io/lifeboat-dr/lifeboat /path/to/target/debug/lifeboat
IMAGES
fi
mkdir -p "$DIR/pods"
start pod-runner pod-runner -kubeconfig "$DIR/kubeconfig" -node "$NODE_NAME" -dir "$DIR" \
  -csi-endpoint "unix://$CSI_SOCK" -csi-driver hostpath.csi.k8s.io -port "$KUBELET_PORT" \
  -tls-cert "$PKI/kubelet.crt" -tls-key "$PKI/kubelet.key" -client-ca "$PKI/ca.crt" \
  -apiserver-port "$APISERVER_PORT" -kubelet-version "$K8S_VERSION"
wait_up 30 pod-runner bash -c "[[ \$(kubectl get node $NODE_NAME -o jsonpath='{.status.daemonEndpoints.kubeletEndpoint.Port}') == $KUBELET_PORT ]]"

start snapshot-controller snapshot-controller --kubeconfig "$DIR/kubeconfig" \
  --leader-election=false --feature-gates=CSIVolumeGroupSnapshot=true --v=3
start csi-provisioner csi-provisioner --kubeconfig "$DIR/kubeconfig" --csi-address "$CSI_SOCK" \
  --leader-election=false --extra-create-metadata --v=3
start csi-snapshotter csi-snapshotter --kubeconfig "$DIR/kubeconfig" --csi-address "$CSI_SOCK" \
  --leader-election=false --extra-create-metadata --feature-gates=CSIVolumeGroupSnapshot=true --v=3
start csi-snapshot-metadata csi-snapshot-metadata --kubeconfig "$DIR/kubeconfig" --csi-address "$CSI_SOCK" \
  --port "$SNAPSHOT_METADATA_PORT" --tls-cert "$PKI/snapshot-metadata.crt" --tls-key "$PKI/snapshot-metadata.key" \
  --audience lifeboat-snapshot-metadata --v=3
wait_up 60 csi-snapshot-metadata bash -c "(: </dev/tcp/127.0.0.1/$SNAPSHOT_METADATA_PORT)"
for p in snapshot-controller csi-provisioner csi-snapshotter; do alive "$p"; done

log "cluster up in $DIR in $((SECONDS - START))s: source $DIR/env"
