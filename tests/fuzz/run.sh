#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 20), corpus seeded from
# fixtures/. Exit non-zero when a target crashes; the input is kept in artifacts/<target>/.
# Usage: tests/fuzz/run.sh [SECONDS]    (needs `rustup toolchain install nightly` and
# `cargo install cargo-fuzz --locked`)
set -euo pipefail
secs="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

cargo +nightly fuzz build --fuzz-dir "$here" -O
corpus="$here/corpus"
# The seeds program is a plain binary of this crate, built with the targets.
"$here/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release/seeds" "$root/fixtures" "$corpus"

failed=()
for t in $(cargo +nightly fuzz list --fuzz-dir "$here" | grep -vx seeds); do
    mkdir -p "$corpus/$t" "$here/artifacts/$t"
    echo "== $t (${secs}s)"
    if ! cargo +nightly fuzz run --fuzz-dir "$here" -O "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$here/artifacts/$t.log" 2>&1; then
        echo "   CRASH: see tests/fuzz/artifacts/$t.log and artifacts/$t/"
        tail -n 30 "$here/artifacts/$t.log"
        failed+=("$t")
    else
        grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$here/artifacts/$t.log" \
            | sed 's/^/   /'
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
echo "all targets ran ${secs}s without a crash"
