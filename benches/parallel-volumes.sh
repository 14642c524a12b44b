#!/usr/bin/env bash
# Claims in parallel (issue #15 point 1), on the real test cluster of tests/cluster: a namespace
# of one Block claim and a namespace of N (default 20), each claim 16 MiB of random data, backed
# up (a snapshot per claim, then a mover Job per claim) and restored into a new namespace (a
# restore Job per claim). Each is timed with --parallel-volumes 1 (one claim at a time) and with
# the default, in the same run on the same cluster.
#
#   benches/parallel-volumes.sh [N]
#
# LIFEBOAT_BIN picks the binary (default: target/release/lifeboat, built if missing); the
# mover Jobs run it too. The cluster is built (cached) and started in a temporary directory,
# and stopped at the end.
set -euo pipefail
n=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${LIFEBOAT_BIN:-$root/target/release/lifeboat}
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --locked)
fi
work=$(mktemp -d /tmp/lifeboat-parallel-XXXXXX)
cleanup() { "$root/tests/cluster/down.sh" "$work/cluster" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
"$root/tests/cluster/up.sh" "$work/cluster" >"$work/up.log" 2>&1 || { tail -20 "$work/up.log"; exit 1; }
# shellcheck disable=SC1091
source "$work/cluster/env"
echo "ghcr.io/lifeboat-dr/lifeboat $bin" >>"$work/cluster/images"

export LIFEBOAT_PASSWORD=bench LIFEBOAT_LOG=warn
repo=$work/repo
"$bin" --repo "$repo" --no-cache repo init --insecure-fast-kdf >/dev/null
lb() { "$bin" --repo "$repo" --no-cache "$@"; }

# namespace NS COUNT: COUNT Block claims of 16 MiB, bound, filled with random data.
namespace() {
  local ns=$1 count=$2 i
  kubectl create namespace "$ns" >/dev/null
  kubectl -n "$ns" create secret generic lifeboat-repository \
    --from-literal=LIFEBOAT_REPOSITORY="$repo" --from-literal=LIFEBOAT_PASSWORD="$LIFEBOAT_PASSWORD" >/dev/null
  for ((i = 0; i < count; i++)); do
    printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data-%02d, namespace: %s}\nspec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: Block\n  resources: {requests: {storage: 16Mi}}\n---\n' "$i" "$ns"
  done | kubectl apply -f - >/dev/null
  kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Bound pvc --all --timeout=120s >/dev/null
  for ((i = 0; i < count; i++)); do
    local pv path
    pv=$(kubectl -n "$ns" get pvc "$(printf 'data-%02d' "$i")" -o jsonpath='{.spec.volumeName}')
    path=$(kubectl get pv "$pv" -o jsonpath='{.spec.csi.volumeAttributes.path}')
    head -c $((16 << 20)) /dev/urandom | dd of="$path" conv=notrunc status=none
  done
}

# timed SECONDS_VAR CMD...: runs CMD, keeps its wall time in SECONDS_VAR.
timed() {
  local var=$1 start end
  shift
  start=$(date +%s.%N)
  "$@" >"$work/last.out" 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
  end=$(date +%s.%N)
  printf -v "$var" '%.1f' "$(echo "$end - $start" | bc)"
}

ctx=$(kubectl config current-context)
namespace one 1
namespace many "$n"
printf '| claims | --parallel-volumes | backup s | restore s |\n|---|---|---|---|\n'
declare -A back rest
for p in 1 default; do
  flag=()
  [ "$p" = default ] || flag=(--parallel-volumes "$p")
  for ns in one many; do
    name=$ns-$p
    timed b lb backup create "$name" -n "$ns" "${flag[@]}"
    timed r lb restore create --from-backup "$name" --namespace-mapping "$ns:$ns-$p-r" --context "$ctx" "${flag[@]}"
    count=$([ $ns = one ] && echo 1 || echo "$n")
    back[$ns-$p]=$b rest[$ns-$p]=$r
    printf '| %s | %s | %s | %s |\n' "$count" "$p" "$b" "$r"
    kubectl delete namespace "$ns-$p-r" --wait=false >/dev/null
  done
done
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
echo "$n claims / 1 claim, default parallelism: backup $(ratio "${back[many-default]}" "${back[one-default]}"), restore $(ratio "${rest[many-default]}" "${rest[one-default]}") (target <= 3)"
echo "$n claims, one at a time / default: backup $(ratio "${back[many-1]}" "${back[many-default]}"), restore $(ratio "${rest[many-1]}" "${rest[many-default]}")"
echo "$(nproc) cores; $("$bin" version | head -1)"
