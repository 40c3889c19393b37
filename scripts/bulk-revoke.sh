#!/usr/bin/env bash
# Bulk revocation at scale: loads SESSIONS (default 1,000,000) sessions into tenant `bench`
# of a fresh single node (`sessiond bench --workload create`), then revokes the whole tenant
# while 64 clients keep creating sessions at RATE per second (default 500: below the
# node's capacity, so a create's latency is its wait, not queueing), and reports how long the revocation took to be
# acknowledged and the creates' latency during that window (max and p99.9) next to a
# baseline window without a revocation. Writes bulk-revoke.json under $RESULTS (default
# bench-results/bulk-revoke-<timestamp>). SESSIOND_BIN runs that binary instead of building
# the release one. The node's log (snapshot builds with their worst apply wait) is kept in
# $RESULTS. Free loopback ports, temporary directory; stops exactly what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sessions=${SESSIONS:-1000000}
concurrency=${CONCURRENCY:-64}
rate=${RATE:-500}
results=${RESULTS:-$root/bench-results/bulk-revoke-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-bulk.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  cp "$work/node.log" "$results/node.log" 2>/dev/null || true
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
peer_port=$(free_port)
ep=http://127.0.0.1:$port
NO_COLOR=1 "$bin" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$peer_port" \
  --data-dir "$work/node" >>"$work/node.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 600); do
  "$bin" session count --endpoint "$ep" --tenant bench >/dev/null 2>&1 && break
  sleep 0.1
done

echo "loading $sessions sessions into tenant bench with $concurrency clients"
"$bin" bench --endpoints "$ep" --workload create --ops "$sessions" --warmup 0 \
  --concurrency "$concurrency" --json >"$results/load.json"
live=$("$bin" session count --endpoint "$ep" --tenant bench)
echo "loaded; tenant count: $live"

writes() { # $1: output file; 8 s of creates measured after 1 s of warm-up
  "$bin" bench --endpoints "$ep" --workload create --duration 8 --warmup 1 \
    --keyspace 0 --concurrency "$concurrency" --rate "$rate" --json >"$1"
}
echo "baseline: creates without a revocation"
writes "$results/baseline.json"

echo "revoking the tenant while creates run"
writes "$results/during.json" &
writer=$!
sleep 4
started=$(date +%s%N)
"$bin" session revoke --endpoint "$ep" --tenant bench --scope tenant --reason admin \
  >"$results/revoke.txt"
acked=$(date +%s%N)
wait "$writer"
ack_ms=$(( (acked - started) / 1000000 ))
after=$("$bin" session count --endpoint "$ep" --tenant bench)

python3 - "$results" "$sessions" "$ack_ms" "$after" <<'PY'
import json, sys
results, sessions, ack_ms, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def row(name):
    report = json.load(open(f"{results}/{name}.json"))
    op = report["ops"][0] if "ops" in report else report
    return {k: op.get(k) for k in ("ops_per_sec", "p99_ms", "p999_ms", "max_ms")}
out = {
    "sessions_revoked": sessions,
    "revoke_ack_ms": ack_ms,
    "tenant_count_after": after.strip(),
    "creates_baseline": row("baseline"),
    "creates_during_revoke": row("during"),
    "revoke_output": open(f"{results}/revoke.txt").read().strip(),
}
json.dump(out, open(f"{results}/bulk-revoke.json", "w"), indent=2)
print(json.dumps(out, indent=2))
PY
