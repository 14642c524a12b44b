#!/usr/bin/env bash
# build.sh: build (once, cached) what up.sh starts, and nothing else. up.sh builds too; this
# lets a CI job start the long first build early, beside other work (a second build into the
# same cache waits for the first: lib/build.sh holds a lock). See README.md beside this file.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$HERE/lib/build.sh"
START=$SECONDS
build_all
log "binaries ready in $CLUSTER_BIN ($((SECONDS - START))s)"
