#!/usr/bin/env bash
# The cluster figures of docs/PERFORMANCE.md: the seed scenario and the cross-node latency,
# three runs each, on a fresh local cluster. usage: scripts/bench-cluster.sh TAG
# (NEBULA_BIN: the nebula binary to measure, default ./target/release/nebula)
set -u
cd "$(dirname "$0")/.."
tag=${1:-run}
ulimit -n 20000
export CLUSTER_DIR=/tmp/cb-$tag REDIS_PORT=6399 BASE_PORT=8180 NEBULA_BIN=${NEBULA_BIN:-./target/release/nebula}
export NEBULA_FLAGS="--publish-rate 0 --connect-rate 0"
rm -rf $CLUSTER_DIR
scripts/cluster.sh start > /tmp/cb-$tag.start 2>&1
B=./target/release/nebula-bench
for i in 1 2 3; do
  $B fanout --url http://127.0.0.1:8181,http://127.0.0.1:8182,http://127.0.0.1:8183 --rooms 400 --members 50 --rate 1000 --duration 30s 2>&1 | tail -4 | sed "s/^/seed$i /"
done
for i in 1 2 3; do
  $B fanout --url http://127.0.0.1:8181,http://127.0.0.1:8182 --rooms 100 --members 2 --rate 1000 --duration 20s 2>&1 | tail -4 | sed "s/^/cross$i /"
done
scripts/cluster.sh stop
