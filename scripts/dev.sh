#!/usr/bin/env bash
# Runs a local single-node sessiond with debug logs on a throwaway data directory, then
# creates and rotates one session through the CLI to show it works. Stops the node it started.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/sessiond
data=$(mktemp -d)
"$bin" serve --data-dir "$data/data" --listen 127.0.0.1:50551 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
export SESSIOND_ENDPOINT=http://127.0.0.1:50551
for _ in $(seq 1 50); do
  "$bin" session count >/dev/null 2>&1 && break
  sleep 0.2
done
out=$("$bin" session create --tenant demo --user alice --attr device=laptop)
echo "$out"
token=$(echo "$out" | awk '/refresh token:/ {print $3}')
"$bin" session rotate "$token"
"$bin" session list --tenant demo --user alice --all
