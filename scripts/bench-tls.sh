#!/usr/bin/env bash
# The cost of TLS: rotate and (linearizable) lookup against the same 3-node loopback cluster
# (scripts/cluster-up.sh) in three modes, one after the other in one run:
#   plaintext  - no TLS, no authentication (the development mode);
#   tls-key    - TLS on both listeners (peers mTLS), clients send an API key;
#   mtls       - TLS on both listeners, clients authenticate with a client certificate.
# Prints one table row per mode and workload (with the servers' CPU per operation); per-run JSON goes under $RESULTS (default
# bench-results/tls-<timestamp>). Knobs: CONCURRENCY (64), DURATION (10), WARMUP (2);
# SESSIOND_BIN runs that binary instead of building the release one.
# Stops exactly the processes cluster-up.sh started (scripts/cluster-down.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=${RESULTS:-$PWD/bench-results/tls-$stamp}
mkdir -p "$results"
if [ -z "${SESSIOND_BIN:-}" ]; then
  cargo build --release --quiet
  SESSIOND_BIN=$PWD/target/release/sessiond
fi
export SESSIOND_BIN
export SESSIOND_CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-tls-bench.XXXXXX")
trap 'scripts/cluster-down.sh --wipe >/dev/null 2>&1 || true' EXIT
bench() {
  local mode=$1 workload=$2
  shift 2
  local args=(--workload "$workload")
  [ "$workload" = lookup ] && args+=(--consistency linearizable)
  "$SESSIOND_BIN" bench "${args[@]}" --json \
    --concurrency "${CONCURRENCY:-64}" --duration "${DURATION:-10}" --warmup "${WARMUP:-2}" \
    --server-pids "$(paste -sd, "$SESSIOND_CLUSTER_DIR/pids")" "$@" >"$results/$mode-$workload.json"
  python3 - "$mode" "$workload" "$results/$mode-$workload.json" <<'PY'
import json, sys
mode, workload, path = sys.argv[1:]
r = json.load(open(path))
op = next(o for o in r["ops"] if o["op"] == workload)
errors = sum(r["errors"].values())
cpu = r.get("server_cpu_us_per_op") or 0
print(f"| {workload} | {mode} | {op['ops_per_sec']:,.0f} | {op['p50_ms']:.2f} | {op['p90_ms']:.2f} | "
      f"{op['p99_ms']:.2f} | {op['p999_ms']:.2f} | {cpu:,.0f} | {errors} |")
PY
}
echo "| workload | mode | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | server CPU µs/op | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
scripts/cluster-up.sh >/dev/null
plain=http://127.0.0.1:50061,http://127.0.0.1:50062,http://127.0.0.1:50063
for w in rotate lookup; do bench plaintext "$w" --endpoints "$plain"; done
scripts/cluster-down.sh --wipe >/dev/null
scripts/cluster-up.sh --tls >/dev/null
certs=$SESSIOND_CLUSTER_DIR/certs
secure=https://127.0.0.1:50061,https://127.0.0.1:50062,https://127.0.0.1:50063
for w in rotate lookup; do
  bench tls-key "$w" --endpoints "$secure" --ca "$certs/ca.pem" \
    --api-key "$(cat "$certs/service.api-key")"
  bench mtls "$w" --endpoints "$secure" --ca "$certs/ca.pem" \
    --cert "$certs/client-service.pem" --key "$certs/client-service.key"
done
