#!/usr/bin/env bash
# The cluster of docker-compose.yml as local processes, without its load balancer: one Redis
# (AOF, appendfsync always) and three Nebula nodes on 127.0.0.1:8081..8083, each with its own
# data dir under $CLUSTER_DIR.
#
#   scripts/cluster.sh            start, print the URLs, wait; Ctrl-C stops everything cleanly
#   scripts/cluster.sh start      start in the background (PIDs in $CLUSTER_DIR/pids)
#   scripts/cluster.sh stop       stop a background cluster (SIGTERM, then wait)
#
# Environment: CLUSTER_DIR (default ./nebula-cluster), REDIS_PORT (6390), BASE_PORT (8080),
# NEBULA_SECRET (default: a key generated once into $CLUSTER_DIR/secret), NEBULA_FLAGS (extra flags for each node,
# e.g. "--publish-rate 0 --connect-rate 0" for load tests), NEBULA_BIN (a built nebula binary;
# default: `cargo build --release` and ./target/release/nebula).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CLUSTER_DIR:-./nebula-cluster}
redis_port=${REDIS_PORT:-6390}
base=${BASE_PORT:-8080}
flags=${NEBULA_FLAGS:-}
bin=${NEBULA_BIN:-}

stop() {
  [ -f "$dir/pids" ] || return 0
  # Nodes first (they withdraw their presence through Redis), then Redis.
  while read -r name pid; do
    [ "$name" = redis ] && continue
    kill -TERM "$pid" 2>/dev/null || true
  done < "$dir/pids"
  while read -r name pid; do
    [ "$name" = redis ] && continue
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done < "$dir/pids"
  while read -r name pid; do
    [ "$name" = redis ] && { kill -TERM "$pid" 2>/dev/null || true; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; }
  done < "$dir/pids"
  rm -f "$dir/pids"
  echo "cluster stopped"
}

start() {
  command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
  [ -f "$dir/pids" ] && { echo "a cluster is already running ($dir/pids); scripts/cluster.sh stop" >&2; exit 1; }
  if [ -z "$bin" ]; then
    cargo build --release --bin nebula -q
    bin=./target/release/nebula
  fi
  mkdir -p "$dir/redis"
  # One cookie key for the three nodes, generated once and readable by this user alone.
  if [ -z "${NEBULA_SECRET:-}" ]; then
    [ -s "$dir/secret" ] || (umask 077; head -c 32 /dev/urandom | base64 > "$dir/secret")
    export NEBULA_SECRET_FILE="$dir/secret"
  fi
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes \
    --appendfsync always --save "" --daemonize no > "$dir/redis.log" 2>&1 &
  echo "redis $!" > "$dir/pids"
  local redis_pid=$!
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do
    kill -0 "$redis_pid" 2>/dev/null || { echo "redis exited at start; see $dir/redis.log" >&2; tail -n 5 "$dir/redis.log" >&2; stop; exit 1; }
    sleep 0.1
  done
  for i in 1 2 3; do
    port=$((base + i))
    "$bin" --listen "127.0.0.1:$port" --data-dir "$dir/node$i" \
      --redis "redis://127.0.0.1:$redis_port/" --node-id "node$i" $flags > "$dir/node$i.log" 2>&1 &
    echo "node$i $!" >> "$dir/pids"
  done
  for i in 1 2 3; do
    pid=$(awk -v n="node$i" '$1==n {print $2}' "$dir/pids")
    until curl -sf "http://127.0.0.1:$((base + i))/readyz" >/dev/null; do
      kill -0 "$pid" 2>/dev/null || { echo "node$i exited at start; see $dir/node$i.log" >&2; tail -n 5 "$dir/node$i.log" >&2; stop; exit 1; }
      sleep 0.1
    done
  done
  echo "redis  redis://127.0.0.1:$redis_port/"
  for i in 1 2 3; do echo "node$i  http://127.0.0.1:$((base + i))   (pid $(awk -v n=node$i '$1==n {print $2}' "$dir/pids"), log $dir/node$i.log)"; done
}

case "${1:-run}" in
  start) start ;;
  stop) stop ;;
  run)
    start
    trap 'stop; exit 0' INT TERM
    echo "Ctrl-C stops the cluster"
    while true; do sleep 1; done
    ;;
  *) echo "usage: $0 [run|start|stop]" >&2; exit 2 ;;
esac
