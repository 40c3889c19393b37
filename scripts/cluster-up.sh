#!/usr/bin/env bash
# Starts a three-node sessiond cluster on loopback in the background (cluster/node1-3.toml,
# ports 50061-50063), forms it (node 1 bootstraps; 2 and 3 are added and promoted) and prints
# its status. Data and logs go under $SESSIOND_CLUSTER_DIR (default: a directory in $TMPDIR);
# scripts/cluster-down.sh stops exactly the processes started here. $SESSIOND_BIN runs a binary
# built elsewhere instead of building target/release/sessiond.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SESSIOND_CLUSTER_DIR:-${TMPDIR:-/tmp}/sessiond-cluster}
mkdir -p "$dir"
if [ -s "$dir/pids" ]; then
  echo "a cluster seems to run already (see $dir/pids); run scripts/cluster-down.sh first" >&2
  exit 1
fi
if [ -n "${SESSIOND_BIN:-}" ]; then
  bin=$SESSIOND_BIN
else
  cargo build --release --quiet
  bin=$PWD/target/release/sessiond
fi

if "$bin" cluster status --endpoint http://127.0.0.1:50061 >/dev/null 2>&1; then
  echo "something already serves on 127.0.0.1:50061 (another cluster?); stop it first" >&2
  exit 1
fi
for i in 1 2 3; do
  "$bin" serve --config "cluster/node$i.toml" --data-dir "$dir/node$i" \
    >"$dir/node$i.log" 2>&1 &
  echo $! >>"$dir/pids"
done

wait_serving() {
  for _ in $(seq 1 100); do
    "$bin" cluster status --endpoint "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node at $1 did not come up; see $dir" >&2
  return 1
}
for i in 1 2 3; do wait_serving "http://127.0.0.1:5006$i"; done

first=http://127.0.0.1:50061
for i in 2 3; do
  if ! "$bin" cluster status --endpoint "$first" --json | grep -q "\"node_id\": *$i,"; then
    "$bin" cluster add-learner --endpoint "$first" "$i" "127.0.0.1:5006$i" >/dev/null
    "$bin" cluster promote --endpoint "$first" "$i" >/dev/null
  fi
done
"$bin" cluster status --endpoint "$first"
echo "cluster running; data and logs in $dir"
echo "endpoints: http://127.0.0.1:50061,http://127.0.0.1:50062,http://127.0.0.1:50063"
