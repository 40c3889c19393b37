#!/usr/bin/env bash
# Runs the same workloads, at the same concurrency, from the same load generator
# (`sessiond bench`, built with --features compare) against:
#   - a 3-node sessiond cluster (scripts/cluster-up.sh, loopback),
#   - a 3-member etcd cluster (Debian's etcd-server, default fsync on every commit),
#   - Redis with appendfsync always (the like-for-like durable row) and appendfsync everysec,
# all on loopback, one after the other on this machine. The CPU time of every server process
# during each measured phase (from /proc, by `sessiond bench --server-pids`) is reported per
# operation beside throughput and latency. Writes per-run JSON, results.md (a
# markdown table with the machine it ran on) and chart.png under $RESULTS (default
# bench-results/<timestamp>). Stops exactly the processes it started.
#
# Also one sessiond node alone (`sessiond-single`, rotate only: the row compared with Redis,
# which neither replicates nor keeps a log), and the 3-node cluster again with lease reads on
# (`sessiond-lease`, lookup-linearizable only: `raft.lease_reads` is opt-in, README "Lease
# reads").
#
# Knobs (environment): CONCURRENCY (64), DURATION (10 s), WARMUP (2 s), KEYSPACE (10000),
# SUBSCRIBERS (1000), FANOUT_CONCURRENCY (16), FANOUT_RATE (200 revocations/s), WORKLOADS
# (create rotate lookup-linearizable lookup-local mixed), SINGLE_WORKLOADS (rotate),
# LEASE_WORKLOADS (lookup-linearizable), TARGETS (sessiond sessiond-lease sessiond-single etcd
# redis-always redis-everysec).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=${RESULTS:-$root/bench-results/$stamp}
concurrency=${CONCURRENCY:-64}
duration=${DURATION:-10}
warmup=${WARMUP:-2}
keyspace=${KEYSPACE:-10000}
subscribers=${SUBSCRIBERS:-1000}
# Each revoker creates a session and then revokes it, two Raft writes in a row (20-40 ms on
# a loaded machine), so 4 revokers could not ask for 200 revocations/s (79 reached on
# 2026-12-05); with 16 the revokers no longer limit it (184 of 200 reached in a profile run,
# 135-150 in two bench-compare runs where the 2 cores ran out).
fanout_concurrency=${FANOUT_CONCURRENCY:-16}
fanout_rate=${FANOUT_RATE:-200}
workloads=${WORKLOADS:-create rotate lookup-linearizable lookup-local mixed}
single_workloads=${SINGLE_WORKLOADS:-rotate}
lease_workloads=${LEASE_WORKLOADS:-lookup-linearizable}
targets=${TARGETS:-sessiond sessiond-lease sessiond-single etcd redis-always redis-everysec}
mkdir -p "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-bench.XXXXXX")
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  SESSIOND_CLUSTER_DIR=$work/sessiond scripts/cluster-down.sh >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cargo build --release --quiet --features compare
bin=$root/target/release/sessiond

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # command... : retries for 20 s
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $*" >&2
  return 1
}

start_sessiond() { # [--lease-reads]
  SESSIOND_CLUSTER_DIR=$work/sessiond SESSIOND_BIN=$bin scripts/cluster-up.sh "$@" >"$work/sessiond-up.log"
  endpoints=http://127.0.0.1:50061,http://127.0.0.1:50062,http://127.0.0.1:50063
  server_pids=$(paste -sd, "$work/sessiond/pids")
}

start_sessiond_single() {
  local port peer
  port=$(free_port)
  peer=$(free_port)
  "$bin" serve --listen "127.0.0.1:$port" --peer-listen "127.0.0.1:$peer" \
    --data-dir "$work/sessiond-single" >"$work/sessiond-single.log" 2>&1 &
  pids+=($!)
  server_pids=$!
  endpoints="http://127.0.0.1:$port"
  wait_for "$bin" session count --endpoint "$endpoints" --tenant bench
}

start_etcd() {
  local cluster="" clients=() peers=() started=()
  for i in 1 2 3; do
    clients[$i]=$(free_port)
    peers[$i]=$(free_port)
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${peers[$i]}"
  done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/etcd$i" \
      --listen-client-urls "http://127.0.0.1:${clients[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${clients[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peers[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-token sessiond-bench \
      --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
    pids+=($!)
    started+=($!)
  done
  server_pids=$(IFS=,; echo "${started[*]}")
  endpoints="http://127.0.0.1:${clients[1]},http://127.0.0.1:${clients[2]},http://127.0.0.1:${clients[3]}"
  wait_for env ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health
}

start_redis() { # appendfsync policy
  local port
  port=$(free_port)
  mkdir -p "$work/redis-$1"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis-$1" --save '' \
    --appendonly yes --appendfsync "$1" >"$work/redis-$1.log" 2>&1 &
  pids+=($!)
  server_pids=$!
  endpoints="redis://127.0.0.1:$port"
  wait_for redis-cli -p "$port" ping
}

run_workload() { # target-label bench-target workload
  local label=$1 target=$2 workload=$3 args=()
  case $workload in
    lookup-linearizable) args=(--workload lookup --consistency linearizable) ;;
    lookup-local) args=(--workload lookup --consistency local) ;;
    revoke-fanout) args=(--workload revoke-fanout --subscribers "$subscribers" --rate "$fanout_rate") ;;
    *) args=(--workload "$workload") ;;
  esac
  local clients=$concurrency
  [ "$workload" = revoke-fanout ] && clients=$fanout_concurrency
  echo "== $label $workload (concurrency $clients)"
  "$bin" bench --target "$target" --endpoints "$endpoints" "${args[@]}" \
    --concurrency "$clients" --duration "$duration" --warmup "$warmup" --keyspace "$keyspace" \
    --server-pids "$server_pids" --json >"$results/$label-$workload.json"
  python3 scripts/bench_report.py summary "$results/$label-$workload.json"
}

for label in $targets; do
  case $label in
    sessiond) start_sessiond; target=sessiond ;;
    sessiond-lease) start_sessiond --lease-reads; target=sessiond ;;
    sessiond-single) start_sessiond_single; target=sessiond ;;
    etcd) start_etcd; target=etcd ;;
    redis-always) start_redis always; target=redis ;;
    redis-everysec) start_redis everysec; target=redis ;;
    *) echo "unknown target $label" >&2; exit 2 ;;
  esac
  list=$workloads
  [ "$label" = sessiond-single ] && list=$single_workloads
  [ "$label" = sessiond-lease ] && list=$lease_workloads
  for workload in $list; do run_workload "$label" "$target" "$workload"; done
  if [ "$label" = sessiond ]; then
    run_workload sessiond sessiond revoke-fanout
  fi
  if [ "$label" = sessiond ] || [ "$label" = sessiond-lease ]; then
    SESSIOND_CLUSTER_DIR=$work/sessiond scripts/cluster-down.sh >/dev/null
  fi
  if [ "$label" = sessiond-single ]; then kill -TERM "$server_pids"; wait "$server_pids" || true; fi
done

python3 scripts/bench_report.py machine "$work" >"$results/machine.json"
python3 scripts/bench_report.py table "$results" >"$results/results.md"
if python3 -c 'import matplotlib' 2>/dev/null; then
  python3 scripts/bench_report.py chart "$results"
else
  venv=$root/target/bench-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q matplotlib
  "$venv/bin/python" scripts/bench_report.py chart "$results"
fi
cat "$results/results.md"
echo "results in $results"
