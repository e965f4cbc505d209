#!/usr/bin/env bash
# Records docs/chat-cluster.gif: Redis and two Nebula nodes as local processes on free ports,
# alice in a headless Chromium on node1 and bob in another on node2, both in "lobby", chatting
# (scripts/record_gif.py). Every process it starts is stopped on exit.
#
#   scripts/record-gif.sh
#
# Environment: NEBULA_BIN (default ./target/release/nebula; no build is run), GIF_OUT (default
# docs/chat-cluster.gif), GIF_MAX_BYTES (1500000), KEEP_FRAMES=DIR (keep the frames there).
# Needs redis-server, chromium, chromium-driver, Python's selenium (scripts/prereqs.sh installs
# them) and ImageMagick (apt-get install imagemagick).
set -euo pipefail
cd "$(dirname "$0")/.."
export NEBULA_BIN=${NEBULA_BIN:-./target/release/nebula}
out=${GIF_OUT:-docs/chat-cluster.gif}

fail() { echo "record-gif.sh: $*" >&2; exit 1; }
[ -x "$NEBULA_BIN" ] || fail "no nebula binary at $NEBULA_BIN (cargo build --release, or set NEBULA_BIN)"
command -v redis-server >/dev/null || fail "redis-server is missing (apt-get install redis-server)"
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || fail "chromium is missing (apt-get install chromium)"
[ -x "${CHROMEDRIVER:-/usr/bin/chromedriver}" ] || fail "chromedriver is missing (apt-get install chromium-driver)"
python3 -c 'import selenium' 2>/dev/null || fail "python3 selenium is missing (pip install selenium)"
convert -version 2>/dev/null | grep -q ImageMagick || fail "ImageMagick's convert is missing (apt-get install imagemagick)"

work=$(mktemp -d)
pids=()
py=
cleanup() {
  if [ -n "$py" ]; then kill -TERM "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
  # Nodes first (they withdraw their presence through Redis), then Redis (the first pid).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  if [ -n "${KEEP_FRAMES:-}" ] && [ -d "$work/frames" ]; then mkdir -p "$KEEP_FRAMES"; cp "$work"/frames/*.png "$KEEP_FRAMES"/; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports: one for Redis, one for each node.
read -r redis_port port1 port2 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --appendonly yes \
  --appendfsync always --save "" --daemonize no > "$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" ping >/dev/null 2>&1 || { cat "$work/redis.log" >&2; fail "redis-server did not start"; }

# One cookie key for both nodes, as a cluster shares it.
(umask 077; head -c 32 /dev/urandom | base64 > "$work/secret")
for i in 1 2; do
  port_var=port$i
  NEBULA_SECRET_FILE="$work/secret" "$NEBULA_BIN" --listen "127.0.0.1:${!port_var}" \
    --data-dir "$work/node$i" --redis "redis://127.0.0.1:$redis_port/" --node-id "node$i" \
    > "$work/node$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2; do
  port_var=port$i
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:${!port_var}/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:${!port_var}/readyz" >/dev/null || { tail -n 20 "$work/node$i.log" >&2; fail "node$i did not become ready"; }
done
echo "redis on $redis_port, node1 on http://127.0.0.1:$port1, node2 on http://127.0.0.1:$port2"

URL1=http://127.0.0.1:$port1 URL2=http://127.0.0.1:$port2 \
  OUT="$out" FRAMES="$work/frames" python3 scripts/record_gif.py &
py=$!
wait "$py"
py=
echo "$out: $(du -k "$out" | cut -f1) KiB"
