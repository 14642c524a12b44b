#!/usr/bin/env bash
# The DR site's apply of the next backup against a full restore, on the same generated volume
# (1 GiB by default), in the same run. A standby holding snapshot one moves to snapshot two
# after a 1% change, by block-map difference. It is timed against lifeboat's own full restore
# of snapshot two and against restic's restore of the same data. Prints times (best of
# BENCH_REPEAT), bytes fetched and written, and the ratios. Local repositories; every target
# is in /dev/shm, as in bench.sh.
#
# Usage: benches/standby.sh   (BENCH_SIZE_MIB=1024, BENCH_REPEAT=3, BENCH_WORK=benches/work-standby)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
REPEAT=${BENCH_REPEAT:-3}
WORK=${BENCH_WORK:-benches/work-standby}
export LIFEBOAT_PASSWORD=bench RESTIC_PASSWORD=bench
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic; }
cargo build --release --quiet
LB=$PWD/target/release/lifeboat
rm -rf "$WORK"; mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
SHM=$(mktemp -d /dev/shm/lifeboat-standby.XXXXXX)
trap 'rm -rf "$SHM"' EXIT

# The primary: one namespace, one claim whose data is the generated image.
P=$WORK/primary; mkdir -p "$P/resources/db" "$P/volumes/db"
cat > "$P/resources/db/app.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: db}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
status: {phase: Bound}
YAML
VOL=$P/volumes/db/data.img
"$LB" demo-data generate "$VOL" --size-mib "$SIZE_MIB" --seed 1 > /dev/null
lb() { "$LB" --repo "$WORK/repo" --no-cache --state-dir "$SHM/state" "$@"; }
lb repo init > /dev/null
restic init --repo "$WORK/restic" -q

# Snapshot one; the DR site takes it in (not timed) and is kept as the starting point.
lb backup create one -n db --schedule s --cluster-dir "$P" > /dev/null
restic --repo "$WORK/restic" backup -q "$VOL"
lb standby --schedule s --once --cluster-dir "$SHM/dr" > /dev/null
cp -a "$SHM/dr" "$SHM/dr-one"; cp -a "$SHM/state" "$SHM/state-one"
# Snapshot two: 1% of the volume rewritten in 64 KiB extents.
"$LB" demo-data mutate "$VOL" --fraction 0.01 --extent-kib 64 --seed 2 --ranges-out "$WORK/ranges.json" > /dev/null
lb backup create two -n db --schedule s --cluster-dir "$P" > /dev/null
restic --repo "$WORK/restic" backup -q "$VOL"
SNAP=$(lb backup describe two --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volumes"][0]["snapshot_id"])')

now() { date +%s.%N; }
: > "$WORK/times.tsv"
for _ in $(seq "$REPEAT"); do
  rm -rf "$SHM/dr" "$SHM/state" "$SHM/full.img" "$SHM/restic"
  cp -a "$SHM/dr-one" "$SHM/dr"; cp -a "$SHM/state-one" "$SHM/state"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now); lb standby --schedule s --once --json --cluster-dir "$SHM/dr" > "$WORK/delta.json"; t1=$(now)
  cmp "$VOL" "$SHM/dr/volumes/db/data.img" || { echo "standby volume differs" >&2; exit 1; }
  t2=$(now); lb volume restore "$SNAP" "$SHM/full.img" > /dev/null; t3=$(now)
  t4=$(now); restic --repo "$WORK/restic" restore latest -q --target "$SHM/restic"; t5=$(now)
  printf '%s\t%s\t%s\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)" "$(echo "$t5 - $t4" | bc)" >> "$WORK/times.tsv"
done
python3 - "$WORK" "$SIZE_MIB" <<'PY'
import json, sys
work, size = sys.argv[1], int(sys.argv[2])
rows = [list(map(float, l.split())) for l in open(f"{work}/times.tsv")]
delta, full, restic = (min(r[i] for r in rows) for i in range(3))
v = json.load(open(f"{work}/delta.json"))[0]["volumes"][0]
mib = lambda b: b / 2**20
print(f"| {size} MiB volume, 1% changed | time (s) | ratio to standby |")
print("|---|---|---|")
print(f"| lifeboat standby, next backup (block-map difference) | {delta:.2f} | 1.00x |")
print(f"| lifeboat full restore of the same snapshot | {full:.2f} | {full/delta:.2f}x |")
print(f"| restic restore of the same data | {restic:.2f} | {restic/delta:.2f}x |")
print()
print(f"standby mode {v['mode']}: {v['blocks_changed']} blocks changed, fetched {mib(v['fetched_bytes']):.1f} MiB, wrote {mib(v['written_bytes']):.1f} MiB of a {size} MiB volume")
PY
