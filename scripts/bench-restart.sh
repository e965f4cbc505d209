#!/usr/bin/env bash
# Restart to serving with N stored messages: fills a fresh data dir through the real server
# (nebula-bench fanout, 1,000 rooms), stops it with SIGTERM, then times a restart until
# /readyz answers 200 and a join of a room returns its latest messages.
# Usage: scripts/bench-restart.sh [messages (default 1000000)]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-1000000}
rate=20000
secs=$(( total * 11 / 10 / rate + 1 ))   # 10% extra: a publish refused under load is not stored
cargo build --release --bins -q
dir=$(mktemp -d)
port=9311
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
./target/release/nebula --data-dir "$dir" --listen 127.0.0.1:$port --publish-rate 0 --connect-rate 0 >/dev/null 2>&1 &
pid=$!
until curl -sf localhost:$port/readyz >/dev/null; do sleep 0.1; done
./target/release/nebula-bench fanout --url http://127.0.0.1:$port --rooms 1000 --members 1 --rate $rate --duration ${secs}s --drain 5 --json "$dir/fill.json" > "$dir/fill.txt"
head -2 "$dir/fill.txt"
kill -TERM $pid; wait $pid || true
stored=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*), count(distinct room) from messages').fetchone())" "$dir/nebula.db")
echo "stored (messages, rooms): $stored; database $(du -sh "$dir/nebula.db" | cut -f1)"
start=$(date +%s.%N)
./target/release/nebula --data-dir "$dir" --listen 127.0.0.1:$port --publish-rate 0 --connect-rate 0 >/dev/null 2>&1 &
pid=$!
until curl -sf localhost:$port/readyz >/dev/null 2>&1; do sleep 0.005; done
ready=$(date +%s.%N)
python3 - "$port" <<'PY'
import json, socket, sys, base64, os, urllib.request
port = int(sys.argv[1])
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/login", data=b'{"name":"timer"}', headers={"Content-Type": "application/json"})
cookie = urllib.request.urlopen(req).headers["Set-Cookie"].split(";")[0]
s = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf: buf += s.recv(4096)
payload = json.dumps({"id": 1, "type": "join", "room": "fan7"}).encode()
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
data = buf.split(b"\r\n\r\n", 1)[1]
while True:
    while len(data) < 4: data += s.recv(65536)
    n = data[1] & 0x7f; h = 2
    if n == 126: n = int.from_bytes(data[2:4], "big"); h = 4
    elif n == 127:
        while len(data) < 10: data += s.recv(65536)
        n = int.from_bytes(data[2:10], "big"); h = 10
    while len(data) < h + n: data += s.recv(65536)
    frame = json.loads(data[h:h + n]); data = data[h + n:]
    if frame.get("type") == "joined":
        print(f"joined fan7: offset {frame['offset']}, {len(frame['messages'])} messages")
        break
PY
joined=$(date +%s.%N)
python3 -c "import sys; s,r,j=map(float,sys.argv[1:]); print(f'restart: ready after {(r-s)*1000:.0f} ms, first join answered after {(j-s)*1000:.0f} ms')" "$start" "$ready" "$joined"
