#!/usr/bin/env bash
# Disk after rotations: one node on a fresh data directory, SESSIONS sessions (default
# 100,000) created by `sessiond bench --workload rotate`'s preload, then ROTATIONS rotations
# (default 400,000) by 64 clients (each with a request id, so each leaves an idempotency
# record too). Reports the data directory's bytes per part (log, state, snapshots) right
# after the rotations, once the node has rebuilt its state database while writes are quiet
# (SETTLE_SECS at most, default 600), and after a restart (which compacts the log database).
# Runs $SESSIOND_BIN, or builds a release binary. Writes rotation-disk.json under $RESULTS
# (default bench-results/rotation-disk-<timestamp>). Uses free loopback ports and a temporary
# directory; stops exactly what it started.
set -euo pipefail
export NO_COLOR=1 # plain node logs: the rebuild is read from them
cd "$(dirname "$0")/.."
root=$PWD
sessions=${SESSIONS:-100000}
rotations=${ROTATIONS:-400000}
settle_secs=${SETTLE_SECS:-600}
results=${RESULTS:-$root/bench-results/rotation-disk-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-rotation-disk.XXXXXX")
node=
cleanup() {
  if [ -n "$node" ]; then
    kill -TERM "$node" 2>/dev/null || true
    wait "$node" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

bin=${SESSIOND_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=$root/target/release/sessiond
fi
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
peer=$(free_port)
endpoint=http://127.0.0.1:$port
start_node() {
  "$bin" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$peer" \
    --data-dir "$work/data" >>"$work/node.log" 2>&1 &
  node=$!
  for _ in $(seq 1 3000); do
    "$bin" session count --endpoint "$endpoint" --tenant bench >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "the node did not serve in time" >&2
  exit 1
}
stop_node() {
  kill -TERM "$node"
  wait "$node" || true
  node=
}
part() { du -sb "$work/data/$1" | cut -f1; }
measure() { # phase name -> one JSON object
  printf '{"phase": "%s", "log": %s, "state": %s, "snapshots": %s, "total": %s}' \
    "$1" "$(part log)" "$(part state)" "$(part snapshots)" "$(du -sb "$work/data" | cut -f1)"
}
rebuilds() { grep -c 'state database rebuilt' "$work/node.log" || true; }

start_node
echo "preloading $sessions sessions, then $rotations rotations"
"$bin" bench --endpoints "$endpoint" --workload rotate --keyspace "$sessions" \
  --ops "$rotations" --warmup 0 --concurrency 64 --json >"$results/rotate.json"
after_run=$(measure "after the rotations")
rebuilt_before=$(rebuilds)
settled=false
for _ in $(seq 1 "$settle_secs"); do
  if [ "$(rebuilds)" -gt "$rebuilt_before" ]; then
    settled=true
    break
  fi
  sleep 1
done
sleep 5 # the rebuild's old generation is removed just after the log line
after_rebuild=$(measure "after the rebuild")
stop_node
start_node
stop_node
after_restart=$(measure "after a restart")

python3 - "$results" "$sessions" "$rotations" "$settled" "$after_run" "$after_rebuild" \
  "$after_restart" <<'PY'
import json, sys
results, sessions, rotations, settled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "true"
phases = [json.loads(p) for p in sys.argv[5:]]
report = {"sessions": sessions, "rotations": rotations, "rebuilt": settled, "phases": phases}
json.dump(report, open(f"{results}/rotation-disk.json", "w"), indent=1)
print(f"{sessions} sessions, {rotations} rotations (rebuilt while quiet: {settled})")
for p in phases:
    print(f"{p['phase']:>22}: total {p['total']:>13,} bytes ({p['total'] / sessions:,.0f} per session): "
          f"log {p['log']:,}, state {p['state']:,}, snapshots {p['snapshots']:,}")
print(f"results in {results}")
PY
