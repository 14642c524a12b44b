#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
# - Garage (the S3-compatible server the S3 tests start on loopback): built with
#   `cargo install garage --locked` only when no `garage` binary is found (about 15 minutes on
#   2 cores; later runs reuse it).
# - xfsprogs (mkfs.xfs), for the group-snapshot test on a loop-mounted XFS (reflinks): from
#   Debian's packages when missing.
# - The two test clusters of tests/cluster/ (a primary and a DR site, each a Kubernetes control
#   plane with the CSI snapshot stack and a pod runner on loopback): built from the Go module
#   proxy on first use (about 30 minutes on 2 cores, cached in ~/.cache/lifeboat/cluster; the
#   build runs while Garage and the tests compile), started in a scratch directory, stopped at
#   the end. LIFEBOAT_SKIP_CLUSTER=1 leaves them and their tests out; LIFEBOAT_TEST_CLUSTER and
#   LIFEBOAT_TEST_CLUSTER_DR name clusters already running instead.
# Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

CLUSTERS=""
stop_clusters() {
  if [ -n "$CLUSTERS" ]; then
    tests/cluster/down.sh "$CLUSTERS/primary" >/dev/null 2>&1 || true
    tests/cluster/down.sh "$CLUSTERS/dr" >/dev/null 2>&1 || true
    if [ "${LIFEBOAT_KEEP_CLUSTERS:-0}" = 1 ]; then
      echo "tests/run.sh: the clusters' files stay in $CLUSTERS" >&2
    else
      rm -rf "$CLUSTERS"
    fi
  fi
}
trap stop_clusters EXIT
if [ "${LIFEBOAT_SKIP_CLUSTER:-0}" != 1 ] && [ -z "${LIFEBOAT_TEST_CLUSTER:-}" ]; then
  CLUSTERS=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-clusters.XXXXXX")
  # The primary's start builds what is missing; it runs beside Garage's install and the
  # compilation of the tests, and is waited for before they run.
  tests/cluster/up.sh "$CLUSTERS/primary" >"$CLUSTERS/up-primary.log" 2>&1 &
  UP_PID=$!
  echo "tests/run.sh: starting the test clusters in $CLUSTERS (log: $CLUSTERS/up-primary.log)" >&2
fi

if ! command -v garage >/dev/null 2>&1 && [ -z "${LIFEBOAT_GARAGE_BIN:-}" ]; then
  echo "tests/run.sh: Garage not found; installing it (cargo install garage --locked, ~15 min)" >&2
  cargo install garage --locked --version '^2' >&2
fi
garage --version 2>/dev/null | head -n1 >&2 || true

if ! command -v mkfs.xfs >/dev/null 2>&1 && ! [ -x /usr/sbin/mkfs.xfs ]; then
  echo "tests/run.sh: mkfs.xfs not found; installing xfsprogs" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 && apt-get install -y -qq xfsprogs >&2
  else sudo apt-get update -qq >&2 && sudo apt-get install -y -qq xfsprogs >&2; fi
fi

cargo test --all-targets --no-run "$@" >&2

if [ -n "$CLUSTERS" ]; then
  if ! wait "$UP_PID"; then
    tail -n 30 "$CLUSTERS/up-primary.log" >&2
    echo "tests/run.sh: the primary test cluster did not start (log above: $CLUSTERS/up-primary.log)" >&2
    exit 1
  fi
  if ! tests/cluster/up.sh "$CLUSTERS/dr" >"$CLUSTERS/up-dr.log" 2>&1; then
    tail -n 30 "$CLUSTERS/up-dr.log" >&2
    echo "tests/run.sh: the DR test cluster did not start (log: $CLUSTERS/up-dr.log)" >&2
    exit 1
  fi
  export LIFEBOAT_TEST_CLUSTER="$CLUSTERS/primary" LIFEBOAT_TEST_CLUSTER_DR="$CLUSTERS/dr"
  echo "tests/run.sh: test clusters up: $LIFEBOAT_TEST_CLUSTER, $LIFEBOAT_TEST_CLUSTER_DR" >&2
fi

# Two test threads: the machine has 2 cores and several tests run pipelines of their own.
cargo test --all-targets "$@" -- --test-threads="${LIFEBOAT_TEST_THREADS:-2}"
