#!/usr/bin/env bash
# How the block size trades full-backup speed against what an incremental adds: one generated
# 1 GiB image, a full backup, a 1% change in 64 KiB extents, an incremental with
# --changed-ranges, a hash-compare incremental with no change, and a restore to tmpfs, for each
# block size. Prints a table; the default block size was chosen from it (benches/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
LB=$PWD/target/release/lifeboat
W=$(mktemp -d); trap 'rm -rf "$W" /dev/shm/lifeboat-chunk-out.img' EXIT
export LIFEBOAT_PASSWORD=bench
"$LB" demo-data generate "$W/base.img" --size-mib "${BENCH_SIZE_MIB:-1024}" --seed 1
t() { /usr/bin/time -f '%e' "$@" 2>&1 >/dev/null | tail -n1; }
echo "| block KiB | full s | repo MiB | incremental s | incremental uploaded MiB | incremental read MiB | hash-compare s | restore s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for kib in 64 128 256 512 1024; do
  cp --sparse=always "$W/base.img" "$W/img"; cat "$W/img" > /dev/null; rm -rf "$W/r"
  "$LB" --repo "$W/r" repo init --chunk-size-kib "$kib" > /dev/null
  full=$(t "$LB" --repo "$W/r" --no-cache volume backup --name v "$W/img")
  size=$(du -sm "$W/r" | cut -f1)
  "$LB" demo-data mutate "$W/img" --seed 2 --ranges-out "$W/ranges.json"
  inc=$(/usr/bin/time -f '%e' -o "$W/t" "$LB" --repo "$W/r" --no-cache --json volume backup --name v --changed-ranges "$W/ranges.json" "$W/img")
  read -r up rd < <(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(round(d['uploaded_bytes']/2**20,1), round(d['read_bytes']/2**20,1))" "$inc")
  hc=$(t "$LB" --repo "$W/r" --no-cache volume backup --name v "$W/img")
  rm -f /dev/shm/lifeboat-chunk-out.img
  rs=$(t "$LB" --repo "$W/r" --no-cache volume restore v:latest /dev/shm/lifeboat-chunk-out.img)
  echo "| $kib | $full | $size | $(cat "$W/t") | $up | $rd | $hc | $rs |"
done
