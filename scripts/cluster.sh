#!/usr/bin/env bash
# A local cluster (issue 19; README "Scaling out"): nats-server with JetStream and three brokers,
# alpha, beta and gamma, each with its own state dir and control port, all joined through NATS.
# Installs nats-server from Debian when it is missing. Ctrl-C stops everything.
#
# Usage: scripts/cluster.sh [--demo]
#   --demo: also creates tenant acme on every node, a replicated region acme/data whose home is alpha,
#           writes through alpha and beta, reads it back from gamma, and prints `broker cluster status`.
#
# Environment: NATS_PORT (4222), BASE_PORT (50051: alpha; beta and gamma take the next two),
# CLUSTER_DIR (a new temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_PORT="${NATS_PORT:-4222}"
BASE_PORT="${BASE_PORT:-50051}"
DIR="${CLUSTER_DIR:-$(mktemp -d -t broker-cluster-XXXXXX)}"
URL="nats://127.0.0.1:${NATS_PORT}"

NATS=$(command -v nats-server || true)
for p in /usr/sbin/nats-server /usr/bin/nats-server; do [[ -z "$NATS" && -x "$p" ]] && NATS="$p"; done
if [[ -z "$NATS" ]]; then
  echo "installing nats-server (apt-get)" >&2
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  $sudo_ apt-get install -y -q nats-server >/dev/null || { $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q nats-server >/dev/null; }
  NATS=/usr/sbin/nats-server
fi

echo "building the broker (release)" >&2
cargo build --release -q -p broker-cli
BROKER="$PWD/target/release/broker"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; state and logs are in $DIR" >&2
}
trap cleanup EXIT INT TERM

mkdir -p "$DIR/nats"
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break; sleep 0.1; done
echo "nats-server with JetStream at $URL" >&2

nodes=(alpha beta gamma)
for i in 0 1 2; do
  node=${nodes[$i]}
  port=$((BASE_PORT + i))
  mkdir -p "$DIR/$node"
  "$BROKER" serve --listen "127.0.0.1:$port" --state-dir "$DIR/$node" --cluster "$URL" --node "$node" \
    >"$DIR/$node.out" 2>"$DIR/$node.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$DIR/$node.out" 2>/dev/null && break; sleep 0.1; done
  echo "$node: http://127.0.0.1:$port (admin token: $DIR/$node/admin.token, log: $DIR/$node.log)" >&2
done

if [[ "${1:-}" == "--demo" ]]; then
  addr() { echo "http://127.0.0.1:$((BASE_PORT + $1))"; }
  tok() { cat "$DIR/${nodes[$1]}/admin.token"; }
  b() { local n=$1; shift; "$BROKER" "$@" --addr "$(addr "$n")" --token "$(tok "$n")"; }
  for i in 0 1 2; do b "$i" tenant create acme >/dev/null; done
  b 0 region create data --tenant acme --size 4096 --mode handle --replication cluster >/dev/null
  echo "acme/data: replicated, home alpha; waiting for beta and gamma to follow it" >&2
  for _ in $(seq 100); do b 2 region read data --tenant acme --offset 0 --len 1 >/dev/null 2>&1 && break; sleep 0.1; done
  b 0 region write data --tenant acme --offset 0 --hex 68656c6c6f >/dev/null   # "hello" through the home
  b 1 region write data --tenant acme --offset 5 --hex 2c20776f726c64 >/dev/null   # ", world" through a replica
  sleep 0.5
  hex=$(b 2 region read data --tenant acme --offset 0 --len 12)
  echo "gamma reads: $hex ($(printf '%b' "$(echo "$hex" | sed 's/../\\x&/g')"))" >&2
  sleep 2.5   # node records (tenants, load) are rewritten every 2 s
  "$BROKER" cluster status --cluster "$URL"
fi

echo "running; Ctrl-C stops the cluster" >&2
wait
