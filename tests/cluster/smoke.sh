#!/usr/bin/env bash
# smoke.sh DIR: with kubectl only, check the cluster up.sh started in DIR:
# PVCs (Filesystem and Block) bind, a VolumeSnapshot becomes ready, a
# VolumeGroupSnapshot over a label selector becomes ready and its members carry
# status.volumeGroupSnapshotName; a Block restore of a Filesystem snapshot is
# refused until the content allows a volume mode change. Then pods (run by the
# pod runner): a Job writes a known pattern into a Filesystem claim's mount and
# a Block claim's device; snapshots of both restored into new claims are read
# back by a second Job and compared; a failing Job with FallbackToLogsOnError
# shows its log tail as its termination message; `kubectl logs job/...` works;
# a Deployment becomes Available; deleting the namespace finishes (pods gone,
# nothing of theirs left mounted). The objects seen are written to
# DIR/smoke/*.yaml. Exits non-zero naming the step that failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[[ $# -eq 1 ]] || die "usage: smoke.sh DIR"
DIR="$(cd "$1" && pwd)"
[[ -f $DIR/env ]] || die "no $DIR/env: run up.sh $DIR first"
source "$DIR/env"
OUT="$DIR/smoke"
mkdir -p "$OUT"
NS="smoke-$(date +%s)"
START=$SECONDS
step() { log "smoke: $*"; }
fail() { kubectl -n "$NS" get pvc,volumesnapshot,volumegroupsnapshot,pods,jobs,deployments -o wide >&2 || true
  kubectl -n "$NS" get events >&2 || true
  die "smoke: $*; the component logs are in $DIR/logs/"; }
# kwait TIMEOUT WHAT ARGS...: kubectl wait, failing with WHAT.
kwait() { local t=$1 what=$2; shift 2
  kubectl -n "$NS" wait --timeout="${t}s" "$@" >/dev/null 2>&1 || fail "$what did not happen within ${t}s"; }

step "namespace $NS"
kubectl create namespace "$NS" >/dev/null
kwait 60 "the default service account" --for=create serviceaccount/default

step "two PVCs (Filesystem, Block) in $NS"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-fs, labels: {app: smoke}}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Filesystem
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-block, labels: {app: smoke}}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {requests: {storage: 8Mi}}
YAML
kwait 120 "PVCs Bound" --for=jsonpath='{.status.phase}'=Bound pvc/data-fs pvc/data-block

# The plugin keeps a volume as a file (its path is in the PV): write 1 MiB at
# offset 0 before the first snapshot, so allocated-block metadata has a block.
PV_FS=$(kubectl -n "$NS" get pvc data-fs -o jsonpath='{.spec.volumeName}')
VOLFILE=$(kubectl get pv "$PV_FS" -o jsonpath='{.spec.csi.volumeAttributes.path}')
[[ -f $VOLFILE ]] || fail "the volume file of data-fs ($VOLFILE) is missing"
dd if=/dev/urandom of="$VOLFILE" bs=1M count=1 conv=notrunc status=none

step "a VolumeSnapshot of data-fs"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap-fs}
spec:
  source: {persistentVolumeClaimName: data-fs}
YAML
kwait 120 "VolumeSnapshot snap-fs readyToUse" --for=jsonpath='{.status.readyToUse}'=true volumesnapshot/snap-fs
kubectl -n "$NS" get volumesnapshot snap-fs -o yaml >"$OUT/volumesnapshot.yaml"

if [[ ${LIFEBOAT_SMOKE_METADATA:-1} == 1 ]]; then
  step "snapshot metadata (allocated, delta) through csi-snapshot-metadata"
  dd if=/dev/urandom of="$VOLFILE" bs=1M count=1 seek=4 conv=notrunc status=none
  kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap-fs-2}
spec:
  source: {persistentVolumeClaimName: data-fs}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: backup}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: snapshot-metadata-client}
rules:
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshots]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: backup-snapshot-metadata}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: snapshot-metadata-client}
subjects: [{kind: ServiceAccount, name: backup}]
YAML
  kwait 120 "VolumeSnapshot snap-fs-2 readyToUse" --for=jsonpath='{.status.readyToUse}'=true volumesnapshot/snap-fs-2
  lister() { snapshot-metadata-lister -kubeconfig "$KUBECONFIG" -service-account backup \
    -service-account-namespace "$NS" -n "$NS" -o json "$@" 2>>"$OUT/lister.log"; }
  lister -s snap-fs >"$OUT/metadata-allocated.json" || fail "listing allocated blocks failed; read $OUT/lister.log and $DIR/logs/csi-snapshot-metadata.log"
  lister -p snap-fs -s snap-fs-2 >"$OUT/metadata-delta.json" || fail "listing changed blocks failed; read $OUT/lister.log and $DIR/logs/csi-snapshot-metadata.log"
  offsets() { jq -c '[.[] | (.block_metadata // .BlockMetadata // [])[] | [(.byte_offset // .ByteOffset // 0), (.size_bytes // .SizeBytes // 0)]]' "$1"; }
  [[ $(offsets "$OUT/metadata-allocated.json") == '[[0,1048576]]' ]] ||
    fail "allocated blocks of snap-fs: expected [[0,1048576]], got $(offsets "$OUT/metadata-allocated.json") (from $OUT/metadata-allocated.json)"
  [[ $(offsets "$OUT/metadata-delta.json") == '[[4194304,1048576]]' ]] ||
    fail "changed blocks snap-fs..snap-fs-2: expected [[4194304,1048576]], got $(offsets "$OUT/metadata-delta.json") (from $OUT/metadata-delta.json)"
  kubectl -n "$NS" delete volumesnapshot snap-fs-2 --wait=false >/dev/null
fi

step "a VolumeGroupSnapshot over app=smoke"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: groupsnapshot.storage.k8s.io/v1beta2
kind: VolumeGroupSnapshot
metadata: {name: group-smoke}
spec:
  source:
    selector: {matchLabels: {app: smoke}}
YAML
kwait 180 "VolumeGroupSnapshot group-smoke readyToUse" --for=jsonpath='{.status.readyToUse}'=true volumegroupsnapshot.v1beta2.groupsnapshot.storage.k8s.io/group-smoke
kubectl -n "$NS" get volumegroupsnapshots.v1beta2.groupsnapshot.storage.k8s.io group-smoke -o yaml >"$OUT/volumegroupsnapshot-v1beta2.yaml"
kubectl -n "$NS" get volumegroupsnapshots.v1.groupsnapshot.storage.k8s.io group-smoke -o yaml >"$OUT/volumegroupsnapshot-v1.yaml" 2>/dev/null || true
GC=$(kubectl -n "$NS" get volumegroupsnapshots.v1beta2.groupsnapshot.storage.k8s.io group-smoke -o jsonpath='{.status.boundVolumeGroupSnapshotContentName}')
kubectl get volumegroupsnapshotcontents.v1beta2.groupsnapshot.storage.k8s.io "$GC" -o yaml >"$OUT/volumegroupsnapshotcontent-v1beta2.yaml"
if grep -q pvcVolumeSnapshotRefList "$OUT/volumegroupsnapshot-v1beta2.yaml"; then
  fail "the group snapshot has status.pvcVolumeSnapshotRefList (members are expected to be found by status.volumeGroupSnapshotName)"
fi
# Members: the VolumeSnapshots whose status names the group.
MEMBERS=$(kubectl -n "$NS" get volumesnapshots -o json |
  jq -r '.items[] | select(.status.volumeGroupSnapshotName == "group-smoke") | "\(.metadata.name) \(.spec.source.persistentVolumeClaimName // "")"')
echo "$MEMBERS" >"$OUT/members.txt"
[[ $(grep -c . <<<"$MEMBERS") -eq 2 ]] || fail "expected 2 member VolumeSnapshots with status.volumeGroupSnapshotName=group-smoke, found: ${MEMBERS:-none}"
for pvc in data-fs data-block; do
  grep -q " $pvc\$" <<<"$MEMBERS" || fail "no member VolumeSnapshot has spec.source.persistentVolumeClaimName=$pvc"
done
FIRST=$(head -1 <<<"$MEMBERS" | cut -d' ' -f1)
kwait 60 "member $FIRST readyToUse" --for=jsonpath='{.status.readyToUse}'=true "volumesnapshot/$FIRST"
kubectl -n "$NS" get volumesnapshot "$FIRST" -o yaml >"$OUT/member-volumesnapshot.yaml"
kubectl get volumesnapshotcontent "$(kubectl -n "$NS" get volumesnapshot "$FIRST" -o jsonpath='{.status.boundVolumeSnapshotContentName}')" -o yaml >"$OUT/member-volumesnapshotcontent.yaml"

step "a Block PVC restored from the Filesystem snapshot is refused"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restore-block}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {requests: {storage: 16Mi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap-fs}
YAML
deadline=$((SECONDS + 60)); refused=""
while ((SECONDS < deadline)); do
  [[ $(kubectl -n "$NS" get pvc restore-block -o jsonpath='{.status.phase}') == Bound ]] &&
    fail "the Block restore of a Filesystem snapshot was bound without the allow-volume-mode-change annotation"
  refused=$(kubectl -n "$NS" get events --field-selector involvedObject.name=restore-block -o json |
    jq -r '[.items[] | select(.message | test("mode"; "i")) | .message] | first // empty')
  [[ -n $refused ]] && break
  sleep 1
done
[[ -n $refused ]] || fail "no event about the volume mode on PVC restore-block within 60s"
echo "$refused" >"$OUT/volume-mode-refusal.txt"
step "refused: $refused"

step "accepted once the content carries snapshot.storage.kubernetes.io/allow-volume-mode-change"
VSC=$(kubectl -n "$NS" get volumesnapshot snap-fs -o jsonpath='{.status.boundVolumeSnapshotContentName}')
kubectl annotate volumesnapshotcontent "$VSC" snapshot.storage.kubernetes.io/allow-volume-mode-change=true >/dev/null
kwait 180 "the Block restore Bound after the annotation" --for=jsonpath='{.status.phase}'=Bound pvc/restore-block

# --- pods, run by the pod runner ------------------------------------------
# PATTERN NAME: 1 MiB of a known pattern (the same in the writer and the reader).
step "a Job (image busybox, sh -c) writes a pattern into a Filesystem mount and a Block device"
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pod-fs}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Filesystem
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pod-block}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {requests: {storage: 8Mi}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: writer}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: writer
        image: busybox
        command:
        - sh
        - -c
        - |
          set -e
          yes "lifeboat smoke fs $NS" | head -c 1048576 >/data/pattern
          yes "lifeboat smoke block $NS" | head -c 1048576 | dd of=/dev/xvda bs=65536 conv=fsync status=none
          sync
          echo "writer: fs \$(sha256sum </data/pattern | cut -c1-16) block \$(head -c 1048576 /dev/xvda | sha256sum | cut -c1-16)"
        volumeMounts: [{name: data, mountPath: /data}]
        volumeDevices: [{name: dev, devicePath: /dev/xvda}]
      volumes:
      - {name: data, persistentVolumeClaim: {claimName: pod-fs}}
      - {name: dev, persistentVolumeClaim: {claimName: pod-block}}
YAML
kwait 120 "Job writer complete" --for=condition=complete job/writer
kubectl -n "$NS" get pods -l job-name=writer -o yaml >"$OUT/writer-pods.yaml"
WLOG=$(kubectl -n "$NS" logs job/writer 2>&1) || fail "kubectl logs job/writer failed: $WLOG"
grep -q '^writer: fs [0-9a-f]\{16\} block [0-9a-f]\{16\}$' <<<"$WLOG" || fail "kubectl logs job/writer: unexpected output: $WLOG"
step "kubectl logs job/writer: $WLOG"

step "snapshots of both, restored into new claims"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap-pod-fs}
spec:
  source: {persistentVolumeClaimName: pod-fs}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap-pod-block}
spec:
  source: {persistentVolumeClaimName: pod-block}
YAML
kwait 120 "VolumeSnapshots snap-pod-fs, snap-pod-block readyToUse" --for=jsonpath='{.status.readyToUse}'=true \
  volumesnapshot/snap-pod-fs volumesnapshot/snap-pod-block
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored-fs}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Filesystem
  resources: {requests: {storage: 16Mi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap-pod-fs}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored-block}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {requests: {storage: 8Mi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap-pod-block}
---
apiVersion: batch/v1
kind: Job
metadata: {name: reader}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: reader
        image: busybox
        command:
        - sh
        - -c
        - |
          fs_want=\$(yes "lifeboat smoke fs $NS" | head -c 1048576 | sha256sum)
          fs_got=\$(sha256sum </data/pattern)
          block_want=\$(yes "lifeboat smoke block $NS" | head -c 1048576 | sha256sum)
          block_got=\$(head -c 1048576 /dev/xvda | sha256sum)
          echo "reader: fs \$fs_got block \$block_got"
          [ "\$fs_got" = "\$fs_want" ] || { echo "restored Filesystem data differs (want \$fs_want)"; exit 1; }
          [ "\$block_got" = "\$block_want" ] || { echo "restored Block data differs (want \$block_want)"; exit 1; }
          echo "reader: both restored volumes hold the pattern"
        volumeMounts: [{name: data, mountPath: /data, readOnly: true}]
        volumeDevices: [{name: dev, devicePath: /dev/xvda}]
      volumes:
      - {name: data, persistentVolumeClaim: {claimName: restored-fs}}
      - {name: dev, persistentVolumeClaim: {claimName: restored-block}}
YAML
deadline=$((SECONDS + 120))
until [[ $(kubectl -n "$NS" get job reader -o jsonpath='{.status.succeeded}{.status.failed}') =~ [1-9] ]]; do
  ((SECONDS < deadline)) || fail "Job reader did not finish within 120s"
  sleep 1
done
RLOG=$(kubectl -n "$NS" logs job/reader 2>&1 || true)
echo "$RLOG" >"$OUT/reader.log"
[[ $(kubectl -n "$NS" get job reader -o jsonpath='{.status.succeeded}') == 1 ]] ||
  fail "the restored data differ from what the writer wrote: $RLOG"
step "$(tail -1 <<<"$RLOG")"

step "a failing Job with FallbackToLogsOnError: its log tail is the termination message"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: failing
        image: busybox
        terminationMessagePolicy: FallbackToLogsOnError
        command: [sh, -c, 'i=1; while [ $i -le 100 ]; do echo "line $i"; i=$((i+1)); done; echo smoke-failure-marker >&2; exit 3']
YAML
kwait 120 "Job failing failed" --for=condition=failed job/failing
kubectl -n "$NS" get pods -l job-name=failing -o yaml >"$OUT/failing-pods.yaml"
TERM_JSON=$(kubectl -n "$NS" get pods -l job-name=failing -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated}')
[[ $(jq -r .exitCode <<<"$TERM_JSON") == 3 && $(jq -r .reason <<<"$TERM_JSON") == Error ]] ||
  fail "failing: expected exitCode 3, reason Error, got $TERM_JSON"
# kubelet: the last 80 lines of the log (at most 2048 bytes): lines 22..100 and the marker.
MSG=$(jq -r .message <<<"$TERM_JSON")
[[ $(head -1 <<<"$MSG") == "line 22" && $(tail -1 <<<"$MSG") == smoke-failure-marker && $(grep -c . <<<"$MSG") == 80 ]] ||
  fail "failing: the termination message is not the log's last 80 lines: $(head -c 200 <<<"$MSG")..."
[[ $(kubectl -n "$NS" logs job/failing --tail=1 2>&1) == smoke-failure-marker ]] || fail "kubectl logs job/failing --tail=1 is not the marker"

step "a Deployment (1 replica, sleep 3600) becomes Available"
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleeper}
spec:
  replicas: 1
  selector: {matchLabels: {app: sleeper}}
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      containers:
      - {name: sleeper, image: busybox, command: [sleep, "3600"]}
YAML
kubectl -n "$NS" rollout status deployment/sleeper --timeout=90s >/dev/null 2>&1 || fail "Deployment sleeper was not rolled out within 90s"
kwait 30 "Deployment sleeper Available" --for=condition=Available deployment/sleeper
[[ $(kubectl -n "$NS" get deployment sleeper -o jsonpath='{.status.availableReplicas}') == 1 ]] || fail "Deployment sleeper: availableReplicas is not 1"
kubectl -n "$NS" get pods -l app=sleeper -o yaml >"$OUT/sleeper-pods.yaml"

step "delete $NS (waits until its pods are gone)"
kubectl delete namespace "$NS" --timeout=120s >/dev/null 2>&1 || fail "deleting namespace $NS did not finish within 120s"
kubectl get namespace "$NS" >/dev/null 2>&1 && fail "namespace $NS still exists"
deadline=$((SECONDS + 30))
while awk -v d="$DIR/pods/" 'index($5, d) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; do
  ((SECONDS < deadline)) || die "smoke: mounts left under $DIR/pods after the namespace was deleted"
  sleep 1
done
log "smoke: passed in $((SECONDS - START))s (objects in $OUT)"
echo "smoke: 1 passed, 0 failed"
