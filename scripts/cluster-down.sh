#!/usr/bin/env bash
# Stops the nodes scripts/cluster-up.sh started (by the PIDs it recorded), gracefully.
# With --wipe, also deletes their data and logs.
set -euo pipefail
dir=${SESSIOND_CLUSTER_DIR:-${TMPDIR:-/tmp}/sessiond-cluster}
if [ -f "$dir/pids" ]; then
  while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done <"$dir/pids"
  while read -r pid; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done <"$dir/pids"
  rm -f "$dir/pids"
  echo "stopped"
fi
if [ "${1:-}" = "--wipe" ]; then
  rm -rf "$dir"
  echo "wiped $dir"
fi
