#!/usr/bin/env bash
# The cluster figures of docs/PERFORMANCE.md, on a fresh local cluster (scripts/cluster.sh):
# the seed scenario (20,000 connections over 3 nodes) and the cross-node latency (2 nodes),
# three runs each; after each cross-node run, the CPU Redis and node 1 used during it
# (/proc/<pid>/stat), the bytes Redis's AOF grew by, and the bytes node 1 sent to the disk
# (/proc/<pid>/io write_bytes: its SQLite WAL and checkpoints).
#
#   scripts/bench-cluster.sh [TAG]
#
# Environment: NEBULA_BIN (the nebula binary to measure, default ./target/release/nebula; an
# older build needs NEBULA_SECRET set), FSYNC (Redis's appendfsync for the run, e.g. everysec;
# default: cluster.sh's `always`), RUNS (3), SEED=0 to skip the seed scenario, NODES_ON_TMPFS=1
# to put the nodes' data dirs on /dev/shm (Redis's AOF stays on the disk: an experiment that
# takes the nodes' disk writes out of the picture). Uses ports 6399 and 8181-8183; the
# cluster's files stay in /tmp/cb-TAG. scripts/bench-ab.sh alternates builds over it.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-run}
runs=${RUNS:-3}
ulimit -n "$(ulimit -Hn)"
export CLUSTER_DIR=/tmp/cb-$tag REDIS_PORT=6399 BASE_PORT=8180 NEBULA_BIN=${NEBULA_BIN:-./target/release/nebula}
export NEBULA_FLAGS="--publish-rate 0 --connect-rate 0"
[ -x ./target/release/nebula-bench ] || cargo build --release --bin nebula-bench -q
# Two invocations with one TAG would share the cluster's directory, ports and pids file (the
# second removes the first one's files and its exit stops the wrong cluster): refuse instead.
exec 9> "/tmp/cb-$tag.lock"
flock -n 9 || { echo "another scripts/bench-cluster.sh $tag is running" >&2; exit 1; }
rm -rf "$CLUSTER_DIR" "/dev/shm/cb-$tag"
# The previous cluster's files (hundreds of MB) leave the disk before this one fsyncs on it.
sync; sleep 2
if [ "${NODES_ON_TMPFS:-0}" = 1 ]; then
  mkdir -p "$CLUSTER_DIR"
  for i in 1 2 3; do mkdir -p "/dev/shm/cb-$tag/node$i"; ln -s "/dev/shm/cb-$tag/node$i" "$CLUSTER_DIR/node$i"; done
fi
scripts/cluster.sh start > "/tmp/cb-$tag.start" 2>&1 || { cat "/tmp/cb-$tag.start" >&2; exit 1; }
trap 'scripts/cluster.sh stop >/dev/null; rm -rf "/dev/shm/cb-$tag"' EXIT
[ -n "${FSYNC:-}" ] && redis-cli -p 6399 config set appendfsync "$FSYNC" >/dev/null
redis_pid=$(awk '$1=="redis" {print $2}' "$CLUSTER_DIR/pids")
node_pid=$(awk '$1=="node1" {print $2}' "$CLUSTER_DIR/pids")
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
hz=$(getconf CLK_TCK)
aof() { du -sb "$CLUSTER_DIR/redis" | cut -f1; }
disk() { awk '$1=="write_bytes:" {print $2}' "/proc/$1/io"; }   # bytes it sent to the disk
B=./target/release/nebula-bench
if [ "${SEED:-1}" != 0 ]; then
  for i in $(seq 1 "$runs"); do
    $B fanout --url http://127.0.0.1:8181,http://127.0.0.1:8182,http://127.0.0.1:8183 --rooms 400 --members 50 --rate 1000 --duration 30s 2>&1 | tail -4 | sed "s/^/seed$i /"
  done
fi
for i in $(seq 1 "$runs"); do
  r0=$(cpu "$redis_pid"); n0=$(cpu "$node_pid"); a0=$(aof); d0=$(disk "$node_pid")
  $B fanout --url http://127.0.0.1:8181,http://127.0.0.1:8182 --rooms 100 --members 2 --rate 1000 --duration 20s 2>&1 | tail -4 | sed "s/^/cross$i /"
  r1=$(cpu "$redis_pid"); n1=$(cpu "$node_pid"); a1=$(aof); d1=$(disk "$node_pid")
  echo "cross$i redis cpu $(echo "scale=2; ($r1 - $r0) / $hz" | bc) s, node1 cpu $(echo "scale=2; ($n1 - $n0) / $hz" | bc) s, aof +$((a1 - a0)) bytes, node1 disk +$((d1 - d0)) bytes (20,000 messages)"
done
