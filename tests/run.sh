#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
# - Garage (the S3-compatible server the S3 tests start on loopback): built with
#   `cargo install garage --locked` only when no `garage` binary is found (about 15 minutes on
#   2 cores; later runs reuse it).
# - xfsprogs (mkfs.xfs), for the group-snapshot test on a loop-mounted XFS (reflinks): from
#   Debian's packages when missing.
# Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

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

# Two test threads: the machine has 2 cores and several tests run pipelines of their own.
cargo test --all-targets "$@" -- --test-threads="${LIFEBOAT_TEST_THREADS:-2}"
