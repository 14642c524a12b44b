#!/usr/bin/env bash
# What the release profile costs and gives: the README's first command timed from a fresh clone
# (`cargo run --release -- demo`, every dependency compiled), the binary's size, and its backup
# and restore throughput beside restic's in the same run, so that a profile change can be
# judged by the ratio to a peer rather than by a figure from another day.
#
# Usage: benches/release-profile.sh [BIN...]
#   With no BIN: clones this checkout into $BENCH_WORK/clone, times the first command there
#   (about 15 minutes on 2 cores), then measures the binary it built. With BINs: measures
#   those (e.g. builds of two profiles) in one run, without building.
# Each phase is best of $BENCH_REPEAT (3) on a $BENCH_SIZE_MIB (1024) MiB generated image, page
# cache warm, to a local repository; restores write to $BENCH_WORK (put it on tmpfs to leave the
# disk out). Installs restic and GNU time from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
REPEAT=${BENCH_REPEAT:-3}
WORK=${BENCH_WORK:-benches/work-profile}
export RESTIC_PASSWORD=bench-password LIFEBOAT_PASSWORD=bench-password

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"; fi

rm -rf "$WORK"; mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
  git clone -q "$PWD" "$WORK/clone"
  start=$(date +%s)
  (cd "$WORK/clone" && cargo run --release -- demo > "$WORK/demo.out" 2>&1)
  echo "fresh clone, \`cargo run --release -- demo\`: $(( $(date +%s) - start )) s" >&2
  BINS=("$WORK/clone/target/release/lifeboat")
fi
for b in "${BINS[@]}"; do echo "$b: $(stat -c %s "$b") bytes" >&2; done

IMG=$WORK/image.img
"${BINS[0]}" demo-data generate "$IMG" --size-mib "$SIZE_MIB" --seed 1 >/dev/null
best() { sort -n | head -1; }
# seconds of one run of CMD..., output discarded
secs() {
  /usr/bin/time -f '%e' -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; return 1; }
  cat "$WORK/t"
}

printf '| tool | full s | incremental s | restore s |\n|---|---:|---:|---:|\n'
row() {
  local name=$1 full=$2 inc=$3 rest=$4
  printf '| %s | %s | %s | %s |\n' "$name" "$(best < "$full")" "$(best < "$inc")" "$(best < "$rest")"
}
n=0
for b in "${BINS[@]}" restic; do
  n=$((n + 1))
  : > "$WORK/full" ; : > "$WORK/inc" ; : > "$WORK/rest"
  for _ in $(seq "$REPEAT"); do
    repo=$WORK/repo; rm -rf "$repo" "$WORK/restored"; cp --sparse=always "$IMG" "$WORK/v.img"
    cat "$WORK/v.img" > /dev/null
    if [ "$b" = restic ]; then
      restic init -q -r "$repo"
      secs restic -q -r "$repo" backup "$WORK/v.img" >> "$WORK/full"
      "${BINS[0]}" demo-data mutate "$WORK/v.img" --fraction 0.01 --extent-kib 64 --seed 2 \
        --ranges-out "$WORK/ranges.json" >/dev/null
      secs restic -q -r "$repo" backup "$WORK/v.img" >> "$WORK/inc"
      secs restic -q -r "$repo" restore latest --target "$WORK/restored" >> "$WORK/rest"
    else
      "$b" --repo "$repo" --no-cache repo init >/dev/null
      secs "$b" --repo "$repo" --no-cache volume backup --name v "$WORK/v.img" >> "$WORK/full"
      "$b" demo-data mutate "$WORK/v.img" --fraction 0.01 --extent-kib 64 --seed 2 \
        --ranges-out "$WORK/ranges.json" >/dev/null
      secs "$b" --repo "$repo" --no-cache volume backup --name v --changed-ranges "$WORK/ranges.json" \
        "$WORK/v.img" >> "$WORK/inc"
      secs "$b" --repo "$repo" --no-cache volume restore v:latest "$WORK/restored" >> "$WORK/rest"
    fi
  done
  if [ "$b" = restic ]; then row restic "$WORK/full" "$WORK/inc" "$WORK/rest"
  else row "lifeboat $n (\`$b\`)" "$WORK/full" "$WORK/inc" "$WORK/rest"; fi
done
