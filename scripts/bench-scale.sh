#!/usr/bin/env bash
# Scale benchmark: loads SESSIONS (default 1,000,000) sessions into a fresh node through
# `sessiond bench --workload create`, then reports disk bytes per session (every file of the
# data directory, and per part: log, state, snapshots), peak RSS (VmHWM) per phase (load,
# restart, building and sending a snapshot, the learner receiving and installing it), how
# long a restart takes until the node serves linearizable reads again, how long a new
# learner takes to catch up (by snapshot: the log behind it is purged), the disk at rest
# (the load's idempotency records collected and the state database rebuilt, SETTLE_SECS at
# most; then once more after a restart, which compacts the log database), and the worst
# wait of an apply for the commit lock while a snapshot was built (from the node's log).
# Writes
# scale.json and scale.md under $RESULTS (default bench-results/scale-<timestamp>).
# Uses free loopback ports and a temporary directory; stops exactly what it started.
set -euo pipefail
export NO_COLOR=1 # plain node logs: the worst apply wait is read from them
cd "$(dirname "$0")/.."
root=$PWD
sessions=${SESSIONS:-1000000}
concurrency=${CONCURRENCY:-64}
results=${RESULTS:-$root/bench-results/scale-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-scale.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" -eq 0 ]; then
    rm -rf "$work"
  else
    cp "$work"/*.log "$results"/ 2>/dev/null || true
    rm -rf "$work"/node*
    echo "failed (exit $rc); node logs in $results" >&2
  fi
}
trap cleanup EXIT
trap 'echo "bench-scale.sh: command failed at line $LINENO" >&2' ERR

cargo build --release --quiet
bin=$root/target/release/sessiond
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
since() { python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 3))" "$1"; }
status() { "$bin" cluster status --endpoint "$1" --json 2>/dev/null; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

port1=$(free_port)
port2=$(free_port)
peer1=$(free_port)
peer2=$(free_port)
ep1=http://127.0.0.1:$port1
start_node1() {
  "$bin" serve --node-id 1 --listen "127.0.0.1:$port1" --peer-listen "127.0.0.1:$peer1" --data-dir "$work/node1" \
    >>"$work/node1.log" 2>&1 &
  node1=$!
  pids+=("$node1")
}
serving() { # endpoint: a linearizable read answers
  "$bin" session count --endpoint "$1" --tenant bench >/dev/null 2>&1
}
wait_serving() {
  for _ in $(seq 1 3000); do serving "$1" && return 0; sleep 0.05; done
  echo "node at $1 did not serve in time; logs in $work" >&2
  exit 1
}

start_node1
wait_serving "$ep1"
echo "loading $sessions sessions with $concurrency clients"
load_started=$(now)
"$bin" bench --endpoints "$ep1" --workload create --ops "$sessions" --warmup 0 \
  --concurrency "$concurrency" --json >"$results/load.json"
load_secs=$(since "$load_started")
sleep 2 # let the periodic snapshot and log purge settle
disk_bytes=$(du -sb "$work/node1" | cut -f1)
part_bytes() { du -sb "$work/${2:-node1}/$1" 2>/dev/null | cut -f1 || echo 0; }
log_bytes=$(part_bytes log)
state_bytes=$(part_bytes state)
snapshot_bytes=$(part_bytes snapshots)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$node1/status")
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
load_hwm_kb=$(hwm "$node1")
echo "loaded in ${load_secs}s; disk $disk_bytes bytes (log $log_bytes, state $state_bytes, snapshots $snapshot_bytes); RSS $rss_kb KiB, peak $load_hwm_kb KiB"

echo "restarting node 1"
kill -TERM "$node1"
wait "$node1" 2>/dev/null || true
restart_started=$(now)
start_node1
wait_serving "$ep1"
restart_secs=$(since "$restart_started")
rss_after_restart_kb=$(awk '/VmRSS/ {print $2}' "/proc/$node1/status")
restart_hwm_kb=$(hwm "$node1")
echo "restarted in ${restart_secs}s; RSS $rss_after_restart_kb KiB, peak $restart_hwm_kb KiB"
echo 5 >"/proc/$node1/clear_refs" # the peak from here on: building and sending a snapshot

# A learner catches up by snapshot only if the log it needs is gone: build a snapshot of
# everything applied, then purge the log up to it.
snapshot_before=$(status "$ep1" | json_field "['snapshot_index']")
"$bin" cluster snapshot --endpoint "$ep1" >/dev/null
# The build may end with a rebuild of the state database (minutes at 1M sessions): the
# snapshot counts once both are done.
for _ in $(seq 1 36000); do
  [ "$(status "$ep1" | json_field "['snapshot_index']")" -gt "$snapshot_before" ] && break
  sleep 0.05
done
snapshot_index=$(status "$ep1" | json_field "['snapshot_index']")
if [ "$snapshot_index" -le "$snapshot_before" ]; then
  echo "node 1 did not build a new snapshot; logs in $work" >&2
  exit 1
fi
# Wait for the purge point the node answers (the snapshot's index).
purge_point=$("$bin" cluster purge-log --endpoint "$ep1" --json "$snapshot_index" | json_field "['purging_up_to']")
for _ in $(seq 1 1200); do
  [ "$(status "$ep1" | json_field "['purged_index']")" -ge "$purge_point" ] && break
  sleep 0.05
done
sleep 2 # the purge reaches the log database's files
purged_disk_bytes=$(du -sb "$work/node1" | cut -f1)
purged_log_bytes=$(part_bytes log)
purged_state_bytes=$(part_bytes state)
purged_snapshot_bytes=$(part_bytes snapshots)
echo "after a snapshot at $snapshot_index and a purge: disk $purged_disk_bytes bytes (log $purged_log_bytes, state $purged_state_bytes, snapshots $purged_snapshot_bytes)"

echo "adding a learner"
"$bin" serve --node-id 2 --listen "127.0.0.1:$port2" --peer-listen "127.0.0.1:$peer2" --data-dir "$work/node2" --join \
  >"$work/node2.log" 2>&1 &
node2=$!
pids+=("$node2")
for _ in $(seq 1 200); do status "http://127.0.0.1:$port2" >/dev/null && break; sleep 0.05; done
target_index=$(status "$ep1" | json_field "['last_log_index']")
purged_index=$(status "$ep1" | json_field "['purged_index']")
learner_started=$(now)
"$bin" cluster add-learner --endpoint "$ep1" 2 "127.0.0.1:$peer2" >/dev/null
for _ in $(seq 1 12000); do
  if ! kill -0 "$node2" 2>/dev/null; then
    echo "the learner died while catching up (see dmesg for the OOM killer); logs in $work" >&2
    exit 1
  fi
  applied=$(status "http://127.0.0.1:$port2" | json_field "['applied_index']" || echo 0)
  [ "${applied:-0}" -ge "$target_index" ] && break
  sleep 0.05
done
learner_secs=$(since "$learner_started")
learner_snapshot=$(status "http://127.0.0.1:$port2" | json_field "['snapshot_index']")
send_hwm_kb=$(hwm "$node1")
learner_hwm_kb=$(hwm "$node2")
echo "learner caught up in ${learner_secs}s; peak RSS leader $send_hwm_kb KiB, learner $learner_hwm_kb KiB"
learner_disk_bytes=$(du -sb "$work/node2" | cut -f1)
learner_log_bytes=$(part_bytes log node2)
learner_state_bytes=$(part_bytes state node2)
learner_snapshot_bytes=$(part_bytes snapshots node2)
echo "learner disk $learner_disk_bytes bytes (log $learner_log_bytes, state $learner_state_bytes, snapshots $learner_snapshot_bytes)"

# At rest: the idempotency records of the load expire (sessions.dedup_retention_ms) and are
# collected; once writes are quiet the node asks for a build and rebuilds its state database
# (the files a full-speed load left). Wait for that rebuild (at most SETTLE_SECS), then for
# the log database to stop shrinking (sled frees the segments of the entries purged behind
# the last build over minutes: no change for LOG_STILL_SECS, default 120, at most
# LOG_SETTLE_SECS, default 900), then count the disk again.
settle_secs=${SETTLE_SECS:-1800}
rebuilt_before=$(grep -c 'state database rebuilt' "$work/node1.log" || true)
settle_started=$(now)
settled=false
for _ in $(seq 1 "$settle_secs"); do
  if [ "$(grep -c 'state database rebuilt' "$work/node1.log" || true)" -gt "$rebuilt_before" ]; then
    settled=true
    break
  fi
  sleep 1
done
log_still_secs=${LOG_STILL_SECS:-120}
smallest_log=$(part_bytes log)
still=0
for _ in $(seq 1 $((${LOG_SETTLE_SECS:-900} / 5))); do
  [ "$still" -ge "$log_still_secs" ] && break
  sleep 5
  log_now=$(part_bytes log)
  if [ "$log_now" -lt "$smallest_log" ]; then
    smallest_log=$log_now
    still=0
  else
    still=$((still + 5))
  fi
done
settle_took=$(since "$settle_started")
rest_disk_bytes=$(du -sb "$work/node1" | cut -f1)
rest_log_bytes=$(part_bytes log)
rest_state_bytes=$(part_bytes state)
rest_snapshot_bytes=$(part_bytes snapshots)
rest_hwm_kb=$(hwm "$node1")
echo "at rest (rebuilt: $settled, after ${settle_took}s): disk $rest_disk_bytes bytes (log $rest_log_bytes, state $rest_state_bytes, snapshots $rest_snapshot_bytes)"

# The same after a restart: sled never shrinks the log database, which keeps the size the
# log reached under the load; a node compacts it at start once it outgrew what it holds.
kill -TERM "$node1"
wait "$node1" 2>/dev/null || true
start_node1
wait_serving "$ep1"
restarted_disk_bytes=$(du -sb "$work/node1" | cut -f1)
restarted_log_bytes=$(part_bytes log)
restarted_state_bytes=$(part_bytes state)
restarted_snapshot_bytes=$(part_bytes snapshots)
echo "at rest after a restart: disk $restarted_disk_bytes bytes (log $restarted_log_bytes, state $restarted_state_bytes, snapshots $restarted_snapshot_bytes)"

worst_apply_wait_ms=$( (grep -ho 'worst_apply_wait_ms=[0-9.]*' "$work"/node1.log || true) | cut -d= -f2 | sort -g | tail -1)
rebuilds=$(grep -c 'state database rebuilt' "$work/node1.log" || true)
postponed=$(grep -c 'state database rebuild postponed' "$work/node1.log" || true)
builds=$(grep -c 'snapshot built' "$work/node1.log" || true)

python3 - "$results" <<PY
import json, sys
load = json.load(open("$results/load.json"))
create = next(r for r in load["ops"] if r["op"] == "create")
out = {
  "sessions": $sessions,
  "load_secs": $load_secs,
  "load_ops_per_sec": create["ops_per_sec"],
  "load_p99_ms": create["p99_ms"],
  "disk_bytes": $disk_bytes,
  "disk_bytes_per_session": $disk_bytes / $sessions,
  "log_bytes": $log_bytes,
  "state_bytes": $state_bytes,
  "snapshot_bytes": $snapshot_bytes,
  "after_purge_disk_bytes": $purged_disk_bytes,
  "after_purge_disk_bytes_per_session": $purged_disk_bytes / $sessions,
  "after_purge_log_bytes": $purged_log_bytes,
  "after_purge_state_bytes": $purged_state_bytes,
  "after_purge_snapshot_bytes": $purged_snapshot_bytes,
  "learner_disk_bytes": $learner_disk_bytes,
  "learner_disk_bytes_per_session": $learner_disk_bytes / $sessions,
  "learner_log_bytes": $learner_log_bytes,
  "learner_state_bytes": $learner_state_bytes,
  "learner_snapshot_bytes": $learner_snapshot_bytes,
  "rest_rebuilt": "$settled" == "true",
  "rest_after_secs": $settle_took,
  "rest_disk_bytes": $rest_disk_bytes,
  "rest_disk_bytes_per_session": $rest_disk_bytes / $sessions,
  "rest_log_bytes": $rest_log_bytes,
  "rest_state_bytes": $rest_state_bytes,
  "rest_snapshot_bytes": $rest_snapshot_bytes,
  "rest_restarted_disk_bytes": $restarted_disk_bytes,
  "rest_restarted_disk_bytes_per_session": $restarted_disk_bytes / $sessions,
  "rest_restarted_log_bytes": $restarted_log_bytes,
  "rest_restarted_state_bytes": $restarted_state_bytes,
  "rest_restarted_snapshot_bytes": $restarted_snapshot_bytes,
  "peak_rss_after_learner_mib": $rest_hwm_kb / 1024,
  "rss_mib": $rss_kb / 1024,
  "rss_after_restart_mib": $rss_after_restart_kb / 1024,
  "peak_rss_load_mib": $load_hwm_kb / 1024,
  "peak_rss_restart_mib": $restart_hwm_kb / 1024,
  "peak_rss_build_and_send_mib": $send_hwm_kb / 1024,
  "peak_rss_learner_receive_and_install_mib": $learner_hwm_kb / 1024,
  "snapshot_builds": ${builds:-0},
  "state_rebuilds": ${rebuilds:-0},
  "state_rebuilds_postponed": ${postponed:-0},
  "worst_apply_wait_during_build_ms": ${worst_apply_wait_ms:-0},
  "restart_secs": $restart_secs,
  "leader_purged_index_when_learner_added": $purged_index,
  "learner_catch_up_secs": $learner_secs,
  "learner_snapshot_index": $learner_snapshot,
  "log_index_caught_up_to": $target_index,
}
json.dump(out, open(sys.argv[1] + "/scale.json", "w"), indent=2)
rows = [
  ("sessions loaded", f"{out['sessions']:,} in {out['load_secs']:.0f} s ({out['load_ops_per_sec']:,.0f} creates/s, p99 {out['load_p99_ms']:.1f} ms)"),
  ("disk (data dir, log + state + snapshot)", f"{out['disk_bytes']/2**20:,.0f} MiB = {out['disk_bytes_per_session']:,.0f} bytes/session (log {out['log_bytes']/2**20:,.0f}, state {out['state_bytes']/2**20:,.0f}, snapshots {out['snapshot_bytes']/2**20:,.0f} MiB)"),
  ("disk after a snapshot and a log purge", f"{out['after_purge_disk_bytes']/2**20:,.0f} MiB = {out['after_purge_disk_bytes_per_session']:,.0f} bytes/session (log {out['after_purge_log_bytes']/2**20:,.0f}, state {out['after_purge_state_bytes']/2**20:,.0f}, snapshots {out['after_purge_snapshot_bytes']/2**20:,.0f} MiB)"),
  ("disk of the learner after its install", f"{out['learner_disk_bytes']/2**20:,.0f} MiB = {out['learner_disk_bytes_per_session']:,.0f} bytes/session (log {out['learner_log_bytes']/2**20:,.0f}, state {out['learner_state_bytes']/2**20:,.0f}, snapshots {out['learner_snapshot_bytes']/2**20:,.0f} MiB)"),
  ("disk at rest: idempotency records collected, state rebuilt ({}), log settled; {:.0f} s after the learner".format("yes" if out['rest_rebuilt'] else "no", out['rest_after_secs']), f"{out['rest_disk_bytes']/2**20:,.0f} MiB = {out['rest_disk_bytes_per_session']:,.0f} bytes/session (log {out['rest_log_bytes']/2**20:,.0f}, state {out['rest_state_bytes']/2**20:,.0f}, snapshots {out['rest_snapshot_bytes']/2**20:,.0f} MiB)"),
  ("disk at rest after a restart (the log database compacted at start)", f"{out['rest_restarted_disk_bytes']/2**20:,.0f} MiB = {out['rest_restarted_disk_bytes_per_session']:,.0f} bytes/session (log {out['rest_restarted_log_bytes']/2**20:,.0f}, state {out['rest_restarted_state_bytes']/2**20:,.0f}, snapshots {out['rest_restarted_snapshot_bytes']/2**20:,.0f} MiB)"),
  ("RSS after load / after restart", f"{out['rss_mib']:,.0f} MiB / {out['rss_after_restart_mib']:,.0f} MiB"),
  ("peak RSS: load / restart / build + send / learner install / leader until at rest", f"{out['peak_rss_load_mib']:,.0f} / {out['peak_rss_restart_mib']:,.0f} / {out['peak_rss_build_and_send_mib']:,.0f} / {out['peak_rss_learner_receive_and_install_mib']:,.0f} / {out['peak_rss_after_learner_mib']:,.0f} MiB"),
  ("worst apply wait during a snapshot build ({} builds, {} state rebuilds, {} postponed)".format(out['snapshot_builds'], out['state_rebuilds'], out['state_rebuilds_postponed']), f"{out['worst_apply_wait_during_build_ms']:.1f} ms"),
  ("restart until linearizable reads", f"{out['restart_secs']:.2f} s"),
  ("new learner caught up (snapshot at index {:,})".format(out['learner_snapshot_index']), f"{out['learner_catch_up_secs']:.2f} s"),
]
with open(sys.argv[1] + "/scale.md", "w") as f:
  f.write("| measure | value |\n|---|---|\n")
  for k, v in rows:
    f.write(f"| {k} | {v} |\n")
print(open(sys.argv[1] + "/scale.md").read())
PY
echo "results in $results"
