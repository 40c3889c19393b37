#!/usr/bin/env bash
# At-rest memory benchmark on three nodes, the case that peaked highest at 1M sessions
# (README "A build and rebuild at rest"): loads SESSIONS (default 1,000,000) sessions into a
# fresh three-node cluster through `sessiond bench --workload create`, restarts the three
# nodes with the page cache dropped (when run as root), runs `mixed` for MIXED_SECS (120),
# then leaves the cluster idle until every node has rebuilt its state database at rest (the
# load's idempotency records collected, then a build and a rebuild; SETTLE_SECS at most,
# default 1800). Reports per node: peak RSS (VmHWM) of the load and of everything after the
# restart, against issue 9's 1 GiB bound, and the disk at rest per session. The nodes keep
# idempotency records for DEDUP_RETENTION_MS (60000, so that the rebuild comes within
# minutes). Writes rest.json and rest.md under $RESULTS (default
# bench-results/rest-<timestamp>). Uses free loopback ports and a temporary directory; stops
# exactly what it started.
set -euo pipefail
export NO_COLOR=1
cd "$(dirname "$0")/.."
root=$PWD
sessions=${SESSIONS:-1000000}
concurrency=${CONCURRENCY:-64}
mixed_secs=${MIXED_SECS:-120}
settle_secs=${SETTLE_SECS:-1800}
dedup_retention_ms=${DEDUP_RETENTION_MS:-60000}
results=${RESULTS:-$root/bench-results/rest-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-rest.XXXXXX")
declare -A pid
cleanup() {
  local rc=$?
  for id in "${!pid[@]}"; do kill -TERM "${pid[$id]}" 2>/dev/null || true; done
  for id in "${!pid[@]}"; do wait "${pid[$id]}" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    cp "$work"/*.log "$results"/ 2>/dev/null || true
    echo "failed (exit $rc); node logs in $results" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "bench-rest.sh: command failed at line $LINENO" >&2' ERR

cargo build --release --quiet
bin=$root/target/release/sessiond
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
status() { "$bin" cluster status --endpoint "$1" --json 2>/dev/null; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/${pid[$1]}/status"; }

cat >"$work/sessiond.toml" <<EOF
[sessions]
dedup_retention_ms = $dedup_retention_ms
EOF
declare -A port peer
for id in 1 2 3; do
  port[$id]=$(free_port)
  peer[$id]=$(free_port)
done
endpoint() { echo "http://127.0.0.1:${port[$1]}"; }
endpoints=$(endpoint 1),$(endpoint 2),$(endpoint 3)
start_node() { # id [--join]
  local id=$1
  shift
  "$bin" serve --config "$work/sessiond.toml" --node-id "$id" --listen "127.0.0.1:${port[$id]}" \
    --peer-listen "127.0.0.1:${peer[$id]}" --data-dir "$work/node$id" "$@" \
    >>"$work/node$id.log" 2>&1 &
  pid[$id]=$!
}
wait_serving() { # endpoint: a linearizable read answers
  for _ in $(seq 1 3000); do
    "$bin" session count --endpoint "$1" --tenant bench >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "node at $1 did not serve in time" >&2
  exit 1
}

start_node 1
start_node 2 --join
start_node 3 --join
wait_serving "$(endpoint 1)"
for id in 2 3; do
  for _ in $(seq 1 200); do status "$(endpoint "$id")" >/dev/null && break; sleep 0.05; done
  "$bin" cluster add-learner --endpoint "$(endpoint 1)" "$id" "127.0.0.1:${peer[$id]}" >/dev/null
  "$bin" cluster promote --endpoint "$(endpoint 1)" "$id" >/dev/null
done

echo "loading $sessions sessions with $concurrency clients"
"$bin" bench --endpoints "$endpoints" --workload create --ops "$sessions" --warmup 0 \
  --concurrency "$concurrency" --json >"$results/load.json"
declare -A load_hwm
for id in 1 2 3; do load_hwm[$id]=$(hwm_kb "$id"); done
echo "load peak RSS (KiB): ${load_hwm[1]} / ${load_hwm[2]} / ${load_hwm[3]}"

echo "restarting the three nodes"
for id in 1 2 3; do kill -TERM "${pid[$id]}"; done
for id in 1 2 3; do wait "${pid[$id]}" 2>/dev/null || true; done
cache_dropped=false
if sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then cache_dropped=true; fi
for id in 1 2 3; do start_node "$id"; done
for id in 1 2 3; do wait_serving "$(endpoint "$id")"; done
declare -A rebuilt_before
for id in 1 2 3; do
  rebuilt_before[$id]=$(grep -c 'state database rebuilt' "$work/node$id.log" || true)
done

if [ "$mixed_secs" -gt 0 ]; then
  echo "mixed for ${mixed_secs}s"
  "$bin" bench --endpoints "$endpoints" --workload mixed --duration "$mixed_secs" \
    --concurrency "$concurrency" --json >"$results/mixed.json"
fi

echo "idle until every node has rebuilt its state database (at most ${settle_secs}s)"
settle_started=$(date +%s)
declare -A rebuilt
for _ in $(seq 1 "$settle_secs"); do
  pending=0
  for id in 1 2 3; do
    if [ -z "${rebuilt[$id]:-}" ]; then
      if [ "$(grep -c 'state database rebuilt' "$work/node$id.log" || true)" -gt "${rebuilt_before[$id]}" ]; then
        rebuilt[$id]=$(($(date +%s) - settle_started))
      else
        pending=$((pending + 1))
      fi
    fi
  done
  [ "$pending" -eq 0 ] && break
  sleep 1
done

python3 - "$results" "$sessions" "$cache_dropped" <<PY
import json, sys
results, sessions, cache_dropped = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "true"
load = json.load(open(results + "/load.json"))
create = next(r for r in load["ops"] if r["op"] == "create")
nodes = {}
for id, load_kb, rest_kb, rebuilt, disk in [
    (1, ${load_hwm[1]}, $(hwm_kb 1), "${rebuilt[1]:-}", $(du -sb "$work/node1" | cut -f1)),
    (2, ${load_hwm[2]}, $(hwm_kb 2), "${rebuilt[2]:-}", $(du -sb "$work/node2" | cut -f1)),
    (3, ${load_hwm[3]}, $(hwm_kb 3), "${rebuilt[3]:-}", $(du -sb "$work/node3" | cut -f1)),
]:
    nodes[id] = {
        "peak_rss_load_mib": load_kb / 1024,
        "peak_rss_after_restart_mib": rest_kb / 1024,
        "rebuilt_after_secs": int(rebuilt) if rebuilt else None,
        "disk_at_end_bytes_per_session": disk / sessions,
    }
out = {
    "sessions": sessions,
    "load_ops_per_sec": create["ops_per_sec"],
    "page_cache_dropped_at_restart": cache_dropped,
    "nodes": nodes,
    "bound_mib": 1024,
    "within_bound": all(max(n["peak_rss_load_mib"], n["peak_rss_after_restart_mib"]) <= 1024
                        for n in nodes.values()),
    "all_rebuilt": all(n["rebuilt_after_secs"] is not None for n in nodes.values()),
}
json.dump(out, open(results + "/rest.json", "w"), indent=2)
with open(results + "/rest.md", "w") as f:
    f.write(f"{sessions:,} sessions loaded at {out['load_ops_per_sec']:,.0f} creates/s; page cache "
            f"dropped at the restart: {'yes' if cache_dropped else 'no'}\n\n")
    f.write("| node | peak RSS, load | peak RSS, restart + mixed + build and rebuild at rest | "
            "rebuilt at rest after | disk at the end |\n|---|---:|---:|---:|---:|\n")
    for id, n in nodes.items():
        rebuilt = f"{n['rebuilt_after_secs']} s" if n["rebuilt_after_secs"] is not None else "not yet"
        f.write(f"| {id} | {n['peak_rss_load_mib']:,.0f} MiB | {n['peak_rss_after_restart_mib']:,.0f} MiB | "
                f"{rebuilt} | {n['disk_at_end_bytes_per_session']:,.0f} bytes/session |\n")
    f.write(f"\nEvery peak within 1 GiB: {'yes' if out['within_bound'] else '**no**'}; "
            f"every node rebuilt at rest: {'yes' if out['all_rebuilt'] else '**no**'}\n")
print(open(results + "/rest.md").read())
PY
echo "results in $results"
