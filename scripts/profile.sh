#!/usr/bin/env bash
# Profiles the three servers of a loopback sessiond cluster (scripts/cluster-up.sh) under
# `sessiond bench` workloads with perf, and writes one flamegraph per workload to
# docs/performance/<workload>.svg, with the bench report (<workload>.json) beside it (the
# folded stacks, a few MB each, stay in $KEEP if set, for inferno-diff-folded). The graph
# sums all three server processes (leader and followers run the same code under the same
# thread names, so their work is merged); the load generator is not sampled.
#
# Needs perf and inferno (`cargo install inferno`). Builds a release binary with frame
# pointers and line tables into target/profile (first run: several minutes), or runs
# $SESSIOND_BIN. Knobs: WORKLOADS (create rotate lookup), DURATION (10 s of sampling),
# CONCURRENCY (64), KEYSPACE (2000: sessions preloaded for rotate/lookup, small so that
# the preload barely shows), FREQ (perf samples per second, 499), OUT (docs/performance).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
workloads=${WORKLOADS:-create rotate lookup}
duration=${DURATION:-10}
concurrency=${CONCURRENCY:-64}
keyspace=${KEYSPACE:-2000}
freq=${FREQ:-499}
out=${OUT:-$root/docs/performance}
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "inferno is needed (cargo install inferno)" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-profile.XXXXXX")
cleanup() {
  SESSIOND_CLUSTER_DIR=$work/cluster scripts/cluster-down.sh >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bin=${SESSIOND_BIN:-}
if [ -z "$bin" ]; then
  RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --quiet --target-dir "$root/target/profile"
  bin=$root/target/profile/release/sessiond
fi
SESSIOND_CLUSTER_DIR=$work/cluster SESSIOND_BIN=$bin scripts/cluster-up.sh >"$work/up.log"
server_pids=$(paste -sd, "$work/cluster/pids")
endpoints=http://127.0.0.1:50061,http://127.0.0.1:50062,http://127.0.0.1:50063

for workload in $workloads; do
  echo "profiling $workload"
  # The bench preloads its keyspace, warms up 2 s, then measures DURATION + 2 s; perf
  # samples DURATION seconds from 2 s after the warm-up began.
  "$bin" bench --endpoints "$endpoints" --workload "$workload" --duration $((duration + 2)) \
    --warmup 2 --concurrency "$concurrency" --keyspace "$keyspace" \
    --server-pids "$server_pids" --json >"$out/$workload.json" &
  bench=$!
  # Skip the preload (about 1 s per 1,000 sessions) and the warm-up.
  sleep $((2 + keyspace / 1000))
  perf record -q -F "$freq" -g -p "$server_pids" -o "$work/$workload.data" -- sleep "$duration" \
    >/dev/null 2>&1
  wait "$bench"
  perf script -i "$work/$workload.data" 2>/dev/null | inferno-collapse-perf >"$work/$workload.folded"
  inferno-flamegraph --title "sessiond $workload: 3 servers, $concurrency clients" \
    <"$work/$workload.folded" >"$out/$workload.svg"
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work/$workload.folded" "$KEEP/"; fi
  python3 - "$out/$workload.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for op in report["ops"]:
    cpu = report.get("server_cpu_us_per_op")
    print(f'  {op["op"]}: {op["ops_per_sec"]:.0f}/s p99 {op["p99_ms"]:.2f} ms'
          + (f', server CPU {cpu:.0f} µs/op' if cpu is not None else ''))
PY
done
echo "flamegraphs in $out"
