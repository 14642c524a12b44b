#!/usr/bin/env bash
# lifeboat against restic, borg and rustic on the same generated image, in the same run:
# full backup, incremental backup after a 1% change in 64 KiB extents, restore; to a local
# repository and to Garage (S3 on loopback). Prints a markdown table with times, bytes added and
# peak memory, and each peer's figure as a ratio to lifeboat's.
#
# Usage: benches/bench.sh            (BENCH_SIZE_MIB=1024 by default; BENCH_WORK=benches/work)
# Installs what it needs: restic, borgbackup and GNU time from Debian's packages, rustic with
# `cargo install rustic-rs`, Garage with `cargo install garage` (each only when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
REPEAT=${BENCH_REPEAT:-3}   # whole runs per tool; the table shows the best time of each phase
export BENCH_REPEAT=$REPEAT
WORK=${BENCH_WORK:-benches/work}
PW=bench-password
export RESTIC_PASSWORD=$PW RUSTIC_PASSWORD=$PW BORG_PASSPHRASE=$PW LIFEBOAT_PASSWORD=$PW
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"; fi
command -v rustic >/dev/null || cargo install rustic-rs --locked
command -v garage >/dev/null || cargo install garage --locked --version '^2'
cargo build --release --quiet
LB=$PWD/target/release/lifeboat

rm -rf "$WORK"; mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
IMG=$WORK/image.img
"$LB" demo-data generate "$IMG" --size-mib "$SIZE_MIB" --seed 1
cat "$IMG" > /dev/null   # page cache warm, as the peers were measured

RESULTS=$WORK/results.tsv
: > "$RESULTS"
# measure NAME PHASE TARGET CMD...: wall seconds and peak RSS (MiB) of one command
measure() {
  local name=$1 phase=$2 target=$3; shift 3
  /usr/bin/time -f '%e %M' -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" || {
    echo "FAILED: $name $phase $target: $*" >&2; cat "$WORK/last.err" >&2; return 1; }
  read -r secs kib < "$WORK/time.out"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$phase" "$target" "$secs" "$((kib / 1024))" >> "$RESULTS"
  if [ "$target" = local ] && [ "$phase" != restore ]; then
    size_of "$name" "$target" "$phase" "$(du -sb "$WORK/repo-$name" | cut -f1)"
  fi
}
size_of() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/sizes.tsv"; }
: > "$WORK/sizes.tsv"

# ----- Garage on loopback -----------------------------------------------------------------
GDIR=$WORK/garage; mkdir -p "$GDIR"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPC=$(port); S3=$(port)
cat > "$GDIR/garage.toml" <<EOF
metadata_dir = "$GDIR/meta"
data_dir = "$GDIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC"
rpc_public_addr = "127.0.0.1:$RPC"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3"
root_domain = ".s3.garage.localhost"
EOF
G="garage -c $GDIR/garage.toml"
RUST_LOG=warn $G server > "$GDIR/log" 2>&1 &
GPID=$!
trap 'kill $GPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do NODE=$($G node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$NODE" ] && break; sleep 0.1; done
$G layout assign -z dc1 -c 100G "$NODE" >/dev/null
$G layout apply --version 1 >/dev/null
AK=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'); SK=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
$G key import --yes -n bench "$AK" "$SK" >/dev/null
$G bucket create bench >/dev/null
$G bucket allow --read --write --owner bench --key "$AK" >/dev/null
export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_REGION=garage
S3URL=http://127.0.0.1:$S3

# ----- one tool, one target: full, incremental, restore ------------------------------------
# Each tool gets its own copy of the image so that all see the same bytes in each phase.
run_tool() {
  local tool=$1 target=$2 repo
  # Restores go to tmpfs, so the figures measure the tools, not this machine's disk.
  local img=$WORK/$tool-$target.img out=/dev/shm/lifeboat-bench/out-$tool-$target
  cp --sparse=always "$IMG" "$img"; cat "$img" > /dev/null
  rm -rf "$out"; mkdir -p "$out"
  case $target in
    local) repo=$WORK/repo-$tool ;;
    s3-*) repo=$tool-$target; target=s3 ;;
  esac
  case $tool in
    lifeboat|lifeboat-hashcmp)
      # lifeboat-hashcmp: the incremental without --changed-ranges (every block read and hashed).
      local r=$repo; [ "$target" = s3 ] && r=s3://bench/$repo
      local lb=("$LB" --repo "$r" --no-cache)
      local envs=(); [ "$target" = s3 ] && envs=(env AWS_ENDPOINT_URL_S3="$S3URL")
      local ranges=(--changed-ranges "$WORK/ranges.json"); [ "$tool" = lifeboat-hashcmp ] && ranges=()
      "${envs[@]}" "${lb[@]}" repo init >/dev/null
      measure "$tool" full "$target" "${envs[@]}" "${lb[@]}" volume backup --name bench "$img"
      "$LB" demo-data mutate "$img" --fraction 0.01 --extent-kib 64 --seed 2 --ranges-out "$WORK/ranges.json"
      measure "$tool" incremental "$target" "${envs[@]}" "${lb[@]}" volume backup --name bench "${ranges[@]}" "$img"
      measure "$tool" restore "$target" "${envs[@]}" "${lb[@]}" volume restore bench:latest "$out/image.img"
      ;;
    restic)
      local r=$repo; [ "$target" = s3 ] && r=s3:$S3URL/bench/$repo
      restic -q -r "$r" init >/dev/null
      measure "$tool" full "$target" restic -q -r "$r" backup "$img"
      "$LB" demo-data mutate "$img" --fraction 0.01 --extent-kib 64 --seed 2 --ranges-out "$WORK/ranges.json"
      measure "$tool" incremental "$target" restic -q -r "$r" backup "$img"
      measure "$tool" restore "$target" restic -q -r "$r" restore latest --target "$out"
      ;;
    rustic)
      rustic -r "$repo" init >/dev/null 2>&1
      measure "$tool" full "$target" rustic --no-progress -r "$repo" backup "$img"
      "$LB" demo-data mutate "$img" --fraction 0.01 --extent-kib 64 --seed 2 --ranges-out "$WORK/ranges.json"
      measure "$tool" incremental "$target" rustic --no-progress -r "$repo" backup "$img"
      measure "$tool" restore "$target" rustic --no-progress -r "$repo" restore latest "$out"
      ;;
    borg)
      borg init -e repokey "$repo" >/dev/null
      measure "$tool" full "$target" borg create --compression zstd,3 "$repo::full" "$img"
      "$LB" demo-data mutate "$img" --fraction 0.01 --extent-kib 64 --seed 2 --ranges-out "$WORK/ranges.json"
      measure "$tool" incremental "$target" borg create --compression zstd,3 "$repo::inc" "$img"
      measure "$tool" restore "$target" sh -c "cd '$out' && borg extract '$repo::inc'"
      ;;
  esac
  # Verify the restore and record repository sizes.
  local restored; restored=$(find "$out" -type f | head -n1)
  cmp -s "$restored" "$img" || { echo "RESTORE MISMATCH: $tool $target" >&2; exit 1; }
  rm -rf "$out" "$img"
}

# Bytes an incremental adds: repository size after minus before, measured separately.
for rep in $(seq "$REPEAT"); do
  : > "$WORK/sizes.tsv"
  for tool in lifeboat lifeboat-hashcmp restic rustic borg; do
    echo "bench: run $rep/$REPEAT: $tool local" >&2
    rm -rf "$WORK/repo-$tool"
    run_tool "$tool" local
  done
  for tool in lifeboat restic; do
    echo "bench: run $rep/$REPEAT: $tool s3" >&2
    run_tool "$tool" s3-$rep
  done
done

python3 - "$RESULTS" "$WORK/sizes.tsv" "$SIZE_MIB" <<'PY'
import sys, collections
res = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    tool, phase, target, secs, mib = line.split("\t")
    best = res[(target, phase)].get(tool)
    s, m = float(secs), int(mib)
    # best time over the runs; the highest peak memory seen
    res[(target, phase)][tool] = (min(s, best[0]), max(m, best[1])) if best else (s, m)
sizes = collections.defaultdict(dict)
for line in open(sys.argv[2]):
    tool, target, phase, b = line.split("\t")
    sizes[tool][phase] = int(b)
print(f"Best of {__import__('os').environ.get('BENCH_REPEAT', '3')} runs. Image: {sys.argv[3]} MiB generated mixed content (25% holes, 15% duplicated, 20% text-like, 40% random); "
      "incremental after a 1% change in 64 KiB extents. Ratios are peer ÷ lifeboat (above 1: lifeboat is better).\n")
print("| target | phase | tool | seconds | peak RSS MiB | time ratio vs lifeboat | memory ratio |")
print("|---|---|---|---:|---:|---:|---:|")
for (target, phase), tools in sorted(res.items(), key=lambda kv: (kv[0][0], ["full","incremental","restore"].index(kv[0][1]))):
    base = tools.get("lifeboat")
    for tool, (s, m) in sorted(tools.items(), key=lambda kv: kv[1][0]):
        tr = f"{s / base[0]:.2f}×" if base and base[0] > 0 else "-"
        mr = f"{m / base[1]:.2f}×" if base and base[1] > 0 else "-"
        print(f"| {target} | {phase} | {tool} | {s:.2f} | {m} | {tr} | {mr} |")
print("\n| tool | repository after full (MiB) | ratio | bytes added by the incremental (MiB) | ratio |")
print("|---|---:|---:|---:|---:|")
base = sizes["lifeboat"]
for tool, v in sorted(sizes.items(), key=lambda kv: kv[1]["full"]):
    inc = v["incremental"] - v["full"]
    binc = base["incremental"] - base["full"]
    print(f"| {tool} | {v['full'] / 2**20:.1f} | {v['full'] / base['full']:.2f}× | {inc / 2**20:.2f} | {inc / binc:.2f}× |")
PY
