#!/usr/bin/env bash
# Starts a three-node sessiond cluster on loopback in the background (cluster/node1-3.toml:
# client ports 50061-50063, peer ports 50071-50073), forms it (node 1 bootstraps; 2 and 3 are
# added by their peer addresses and promoted) and prints its status. Data and logs go under
# $SESSIOND_CLUSTER_DIR (default: a directory in $TMPDIR); scripts/cluster-down.sh stops
# exactly the processes started here. $SESSIOND_BIN runs a binary built elsewhere instead of
# building target/release/sessiond.
#
# --tls: TLS on both listeners (peers always mTLS) and client authentication. A development
# CA, node certificates and client certificates for the principals `operator`, `service` and
# `gateway` (all tenants) are made under $dir/certs with `sessiond certs`, and an API key for
# the principal `service-key` (service, all tenants) in $dir/certs/service.api-key; each node
# runs with its cluster/nodeN.toml plus a [tls] and [auth] section written to
# $dir/nodeN.toml. The script prints the environment a client needs.
#
# --lease-reads: the nodes answer LINEARIZABLE reads from a leader lease (`raft.lease_reads`,
# README "Lease reads"); each node runs with a copy of its config in $dir/nodeN.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
tls=false
lease_reads=false
for arg in "$@"; do
  case $arg in
    --tls) tls=true ;;
    --lease-reads) lease_reads=true ;;
    *) echo "unknown option $arg (known: --tls, --lease-reads)" >&2; exit 2 ;;
  esac
done
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

scheme=http
client_flags=()
if $tls; then
  scheme=https
  certs=$dir/certs
  if [ ! -f "$certs/ca.pem" ]; then
    "$bin" certs ca --dir "$certs" >/dev/null
    for i in 1 2 3; do
      "$bin" certs node --dir "$certs" --id "$i" --host 127.0.0.1 --host localhost >/dev/null
    done
    for name in operator service gateway; do
      "$bin" certs client --dir "$certs" --name "$name" >/dev/null
    done
    "$bin" certs api-key >"$certs/api-key.txt"
    sed -n 's/^api key.*: //p' "$certs/api-key.txt" >"$certs/service.api-key"
    sed -n 's/^api_key_sha256 = //p' "$certs/api-key.txt" >"$certs/service.api-key.sha256"
    rm "$certs/api-key.txt"
    chmod 600 "$certs/service.api-key"
  fi
  client_flags=(--ca "$certs/ca.pem" --cert "$certs/client-operator.pem"
    --key "$certs/client-operator.key")
fi

if "$bin" cluster status --endpoint "$scheme://127.0.0.1:50061" "${client_flags[@]}" \
  >/dev/null 2>&1; then
  echo "something already serves on 127.0.0.1:50061 (another cluster?); stop it first" >&2
  exit 1
fi
for i in 1 2 3; do
  config=cluster/node$i.toml
  if $tls; then
    config=$dir/node$i.toml
    cat "cluster/node$i.toml" - >"$config" <<EOF

[tls]
ca_file = "$certs/ca.pem"
cert_file = "$certs/node-$i.pem"
key_file = "$certs/node-$i.key"
client_certs = "optional"

[[auth.principals]]
name = "operator"
role = "operator"

[[auth.principals]]
name = "service-key"
role = "service"
tenants = ["*"]
api_key_sha256 = $(cat "$certs/service.api-key.sha256")

[[auth.principals]]
name = "service"
role = "service"
tenants = ["*"]

[[auth.principals]]
name = "gateway"
role = "gateway"
tenants = ["*"]
EOF
  fi
  if $lease_reads; then
    [ "$config" = "$dir/node$i.toml" ] || cp "cluster/node$i.toml" "$dir/node$i.toml"
    config=$dir/node$i.toml
    sed -i 's/^\[raft\]$/[raft]\nlease_reads = true/' "$config"
  fi
  "$bin" serve --config "$config" --data-dir "$dir/node$i" \
    >"$dir/node$i.log" 2>&1 &
  echo $! >>"$dir/pids"
done

wait_serving() {
  for _ in $(seq 1 100); do
    "$bin" cluster status --endpoint "$1" "${client_flags[@]}" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node at $1 did not come up; see $dir" >&2
  return 1
}
for i in 1 2 3; do wait_serving "$scheme://127.0.0.1:5006$i"; done

first=$scheme://127.0.0.1:50061
for i in 2 3; do
  if ! "$bin" cluster status --endpoint "$first" "${client_flags[@]}" --json |
    grep -q "\"node_id\": *$i,"; then
    "$bin" cluster add-learner --endpoint "$first" "${client_flags[@]}" "$i" "127.0.0.1:5007$i" >/dev/null
    "$bin" cluster promote --endpoint "$first" "${client_flags[@]}" "$i" >/dev/null
  fi
done
"$bin" cluster status --endpoint "$first" "${client_flags[@]}"
echo "cluster running; data and logs in $dir"
echo "endpoints: $scheme://127.0.0.1:50061,$scheme://127.0.0.1:50062,$scheme://127.0.0.1:50063"
if $tls; then
  echo "client environment (service principal, mTLS):"
  echo "  export SESSIOND_CA=$certs/ca.pem SESSIOND_CERT=$certs/client-service.pem SESSIOND_KEY=$certs/client-service.key"
  echo "or with an API key: export SESSIOND_CA=$certs/ca.pem SESSIOND_API_KEY=\$(cat $certs/service.api-key)"
fi
