#!/usr/bin/env bash
# down.sh DIR: stop every process up.sh started for DIR (from DIR/pids), last
# started first. Idempotent: a missing DIR, pid file or process is no error.
# Keeps DIR's data; remove DIR to start afresh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[[ $# -eq 1 ]] || die "usage: down.sh DIR"
[[ -d $1/pids ]] || exit 0
DIR="$(cd "$1" && pwd)"

# ours PID: the process still runs and is one of DIR's (its command line names
# DIR), not an unrelated process that got the pid later.
ours() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$DIR/"; }

ORDER=(pod-runner csi-snapshot-metadata csi-snapshotter csi-provisioner snapshot-controller csi-hostpath
  kube-controller-manager kube-apiserver etcd)
for name in "${ORDER[@]}"; do
  f="$DIR/pids/$name.pid"
  [[ -f $f ]] || continue
  pid=$(cat "$f")
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while ours "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if ours "$pid"; then
      log "$name (pid $pid) ignored SIGTERM for 20s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
done

# What a pod runner that did not stop cleanly may have left: container
# processes (DIR/pods/*/containers/NAME.pid holds "pid starttime"), mounts
# under DIR, loop devices of DIR's volume files.
for f in "$DIR"/pods/*/containers/*.pid; do
  [[ -f $f ]] || continue
  read -r pid start <"$f" || continue
  if [[ -r /proc/$pid/stat ]] && [[ $(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20) == "$start" ]]; then
    log "killing container process group $pid ($f)"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
for _ in 1 2 3 4 5; do
  mps=$(awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  [[ -n $mps ]] || break
  while read -r mp; do
    log "unmounting $mp"
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  done <<<"$mps"
  sleep 0.2
done
if command -v losetup >/dev/null; then
  losetup --noheadings --output NAME,BACK-FILE 2>/dev/null | while read -r dev file; do
    if [[ $file == "$DIR/"* ]]; then
      log "detaching $dev ($file)"
      losetup --detach "$dev" 2>/dev/null || true
    fi
  done
fi
log "stopped the cluster in $DIR"
