#!/usr/bin/env bash
# A namespace of many objects (issue #15 point 4, the part off a cluster): generates a cluster
# directory of N ConfigMaps (default 100,000) in namespace `big`, then backs it up twice into a
# local repository, measuring each backup's wall time and peak RSS (/usr/bin/time). The second
# backup finds every object stored already.
#
#   benches/big-namespace.sh [N]
#
# LIFEBOAT_BIN picks the binary (default: target/release/lifeboat, built if missing).
# Prints one table row per backup and the ratios the issue asks for.
set -euo pipefail
n=${1:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${LIFEBOAT_BIN:-$root/target/release/lifeboat}
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --locked)
fi
work=$(mktemp -d /tmp/lifeboat-big-XXXXXX)
trap 'rm -rf "$work"' EXIT
dir=$work/cluster
mkdir -p "$dir/resources/big"
# 1,000 objects a file; each ConfigMap about 600 bytes, with a little data of its own.
python3 - "$dir/resources/big" "$n" <<'EOF'
import sys
out, n = sys.argv[1], int(sys.argv[2])
with open(f"{out}/namespace.yaml", "w") as f:
    f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: big, uid: 0b0b0b0b-0000-4000-8000-000000000000, resourceVersion: \"1\"}\n")
per = 1000
for start in range(0, n, per):
    with open(f"{out}/configmaps-{start // per:04d}.yaml", "w") as f:
        for i in range(start, min(n, start + per)):
            f.write(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                f"  name: cm-{i:06d}\n  namespace: big\n"
                f"  uid: 0b0b0b0b-0000-4000-8000-{i:012d}\n"
                f"  resourceVersion: \"{1000 + i}\"\n"
                "  creationTimestamp: \"2026-09-01T10:00:00Z\"\n"
                f"  labels: {{app: big, shard: \"s{i % 64}\"}}\n"
                f"data:\n  key: value-{i}\n  settings.conf: |\n    id={i}\n    peers=cm-{(i + 1) % n:06d},cm-{(i + 7) % n:06d}\n    threshold={i % 97}\n"
            )
EOF
export LIFEBOAT_PASSWORD=bench LIFEBOAT_LOG=warn
repo=$work/repo
"$bin" --repo "$repo" --no-cache repo init --insecure-fast-kdf >/dev/null

run() { # name → "seconds rss_kib new_objects objects"
  local name=$1 out=$work/$1.json tv=$work/$1.time
  /usr/bin/time -f '%e %M' -o "$tv" "$bin" --repo "$repo" --no-cache --json \
    backup create "$name" -n big --cluster-dir "$dir" >"$out"
  python3 - "$out" "$tv" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))
secs, rss = open(sys.argv[2]).read().split()
print(secs, rss, b["new_objects"], b["objects"])
EOF
}
read -r s1 r1 new1 obj1 < <(run first)
read -r s2 r2 new2 obj2 < <(run second)
printf '| backup | objects | new objects | wall s | peak RSS MiB |\n|---|---|---|---|---|\n'
printf '| first | %s | %s | %s | %d |\n' "$obj1" "$new1" "$s1" $((r1 / 1024))
printf '| second | %s | %s | %s | %d |\n' "$obj2" "$new2" "$s2" $((r2 / 1024))
python3 -c "import sys; s1,s2=map(float,sys.argv[1:3]); print(f'second/first wall: {s2/s1:.2f} (target <= 0.33)')" "$s1" "$s2"
echo "peak RSS target: <= 256 MiB; N=$n; $(nproc) cores; $("$bin" version | head -1)"
