#!/usr/bin/env bash
# The single-node rows of docs/PERFORMANCE.md for several builds in turn: per round and build, a
# fresh node (empty data dir), then durable throughput (60,000/s offered), ack latency at
# 10,000/s from 10 and from 100 publishers, and fan-out at 150,000 deliveries/s; each line of
# nebula-bench's output is prefixed with the build, the round and the figure
# (thru, ack10, ack100, fanout) and appended to OUT.
#
#   scripts/bench-node.sh OUT ROUNDS NEBULA_BIN...
#
# Uses port 9000 and /tmp/bench-node. An older build needs NEBULA_SECRET: one is set for all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 OUT ROUNDS NEBULA_BIN..." >&2; exit 2; }
out=$1 rounds=$2
shift 2
bins=("$@")
export NEBULA_SECRET=${NEBULA_SECRET:-$(head -c 32 /dev/urandom | base64)}
ulimit -n "$(ulimit -Hn)"
[ -x ./target/release/nebula-bench ] || cargo build --release --bin nebula-bench -q
B=./target/release/nebula-bench
runs=("200 1 60000 10s thru" "10 1 10000 10s ack10" "100 1 10000 10s ack100" "100 100 1500 20s fanout")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf /tmp/bench-node' EXIT
for r in $(seq 1 "$rounds"); do
  for bin in "${bins[@]}"; do
    rm -rf /tmp/bench-node; sync; sleep 2
    "$bin" --data-dir /tmp/bench-node --listen 127.0.0.1:9000 --publish-rate 0 --connect-rate 0 > /tmp/bench-node.log 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:9000/readyz >/dev/null && break; sleep 0.1; done
    for spec in "${runs[@]}"; do
      read -r rooms members rate duration name <<< "$spec"
      $B fanout --url http://127.0.0.1:9000 --rooms "$rooms" --members "$members" --rate "$rate" \
        --duration "$duration" --server-pid "$pid" 2>&1 | tail -4 | sed "s|^|$bin r$r $name |" >> "$out"
    done
    kill -TERM "$pid"; wait "$pid" || true
    pid=
  done
done
