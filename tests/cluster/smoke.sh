#!/usr/bin/env bash
# smoke.sh DIR: with kubectl only, check the cluster up.sh started in DIR:
# PVCs (Filesystem and Block) bind, a VolumeSnapshot becomes ready, a
# VolumeGroupSnapshot over a label selector becomes ready and its members carry
# status.volumeGroupSnapshotName; a Block restore of a Filesystem snapshot is
# refused until the content allows a volume mode change. The objects seen are
# written to DIR/smoke/*.yaml. Exits non-zero naming the step that failed.
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
fail() { kubectl -n "$NS" get pvc,volumesnapshot,volumegroupsnapshot -o wide >&2 || true
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

step "clean up $NS"
kubectl delete namespace "$NS" --wait=false >/dev/null
log "smoke: passed in $((SECONDS - START))s (objects in $OUT)"
echo "smoke: 1 passed, 0 failed"
