// Nebula web chat: plain JS on the v1.1 JSON protocol (docs/PROTOCOL.md).
// Every piece of user text is put in the page with textContent, never as HTML; links are
// <a> elements whose href is checked to be http(s).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  me: null,
  ws: null,
  nextId: 1,
  pending: new Map(),        // request id -> {resolve, reject}
  rooms: new Map(),          // name -> room state
  current: null,
  retry: 0,
  connected: false,
  // Messages written but not acknowledged yet, oldest first. Each keeps its idempotency key,
  // so that a resend (after a lost ack or a refusal) is stored at most once.
  outgoing: [],
};

function newRoom(name) {
  return {
    name, last: 0, oldest: null, messages: new Map(), members: new Map(), unread: 0,
    joined: false, complete: false, rendered: 0, firstUnseen: null,
  };
}

function newKey() {
  return (crypto.randomUUID && crypto.randomUUID()) || `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

// ---------- HTTP ----------
async function api(path, body) {
  const res = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = {};
  try { data = await res.json(); } catch (_) { /* empty body */ }
  return { ok: res.ok, status: res.status, data };
}

async function start() {
  const me = await api("/api/me");
  if (me.ok) { enter(me.data.user); } else { showLogin(); }
}

function showLogin() {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-name").focus();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await api("/api/login", { name: $("login-name").value });
  if (!r.ok) { $("login-error").textContent = r.data.error || `login failed (${r.status})`; return; }
  $("login-error").textContent = "";
  enter(r.data.user);
});

$("logout").addEventListener("click", async () => {
  await api("/api/logout", {});
  state.rooms.clear();
  state.outgoing = [];
  state.current = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000); }
  state.ws = null;
  localStorage.removeItem("nebula.rooms");
  setDrawer(false);
  showLogin();
});

function enter(user) {
  state.me = user;
  $("me-name").textContent = user.name;
  $("login").hidden = true;
  $("app").hidden = false;
  const saved = JSON.parse(localStorage.getItem("nebula.rooms") || "[\"lobby\"]");
  for (const name of saved) if (!state.rooms.has(name)) state.rooms.set(name, newRoom(name));
  state.current = state.current || saved[0] || "lobby";
  if (!state.rooms.has(state.current)) state.rooms.set(state.current, newRoom(state.current));
  renderRooms();
  renderRoom();
  connect();
}

// ---------- WebSocket ----------
function setStatus(kind, text) {
  const s = $("status");
  s.dataset.state = kind;
  s.textContent = text;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  setStatus("connecting", "connecting…");
  const ws = new WebSocket(`${proto}://${location.host}/ws`, "nebula.v1.json");
  state.ws = ws;
  ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  ws.onclose = (ev) => {
    state.connected = false;
    for (const [, p] of state.pending) p.reject(Object.assign(new Error("disconnected"), { code: "offline" }));
    state.pending.clear();
    for (const room of state.rooms.values()) room.joined = false;
    if (ev.code === 1008) { showLogin(); return; }
    const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.5 + Math.random() / 2);
    state.retry += 1;
    const why = ev.code === 1001 ? "server restarting" : ev.code === 4008 ? "too slow" : "offline";
    setStatus("offline", `${why} — reconnecting…`);
    setTimeout(async () => {
      // A 401 here means the session is gone: back to the login screen.
      const me = await api("/api/me").catch(() => ({ ok: false, status: 0 }));
      if (me.status === 401) { showLogin(); return; }
      connect();
    }, delay);
  };
}

function request(msg) {
  return new Promise((resolve, reject) => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      reject(Object.assign(new Error("offline"), { code: "offline" }));
      return;
    }
    const id = state.nextId++;
    state.pending.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ ...msg, id }));
  });
}

function onFrame(f) {
  if (f.id !== undefined && state.pending.has(f.id)) {
    const p = state.pending.get(f.id);
    state.pending.delete(f.id);
    if (f.type === "error") p.reject(Object.assign(new Error(f.message), { code: f.code }));
    else p.resolve(f);
    return;
  }
  switch (f.type) {
    case "welcome":
      state.connected = true;
      state.retry = 0;
      setStatus("online", `online · ${f.node}`);
      rejoinAll();
      break;
    case "message": addMessages(f.room, [f], true); break;
    case "member_joined": memberChange(f.room, f.user, true); break;
    case "member_left": memberChange(f.room, f.user, false); break;
    case "error": notice(f.message); break;
  }
}

async function rejoinAll() {
  await Promise.all([...state.rooms.keys()].map(joinRoom));
  flushOutgoing();
}

// ---------- Rooms ----------
async function joinRoom(name) {
  const room = state.rooms.get(name) || newRoom(name);
  state.rooms.set(name, room);
  saveRooms();
  const req = { type: "join", room: name };
  if (room.last > 0) req.since = room.last;     // catch up on exactly what was missed
  try {
    const r = await request(req);
    room.joined = true;
    if (r.recovered === false && room.last > 0) {
      // Too much was missed: start over from what the server sent.
      room.messages.clear();
      room.oldest = null;
      room.complete = false;
      room.rendered = 0;
    }
    room.members = new Map(r.members.map((u) => [u.id, u]));
    addMessages(name, r.messages, false);
    // A reply too large for one frame says `more`: the rest comes page by page, in order.
    if (r.more) await pageAfter(room, r.messages);
    if (r.offset === 0 || (room.oldest !== null && room.oldest <= 1)) room.complete = true;
    renderRooms();
    if (name === state.current) renderRoom();
  } catch (e) {
    notice(`could not join ${name}: ${e.message}`);
  }
}

/// Reads the messages after the last of `page` until the server says there are no more.
async function pageAfter(room, page) {
  let after = page.length ? page[page.length - 1].offset : room.last;
  for (;;) {
    const r = await request({ type: "history", room: room.name, after, limit: 200 });
    addMessages(room.name, r.messages, false);
    if (!r.more || r.messages.length === 0) return;
    after = r.messages[r.messages.length - 1].offset;
  }
}

async function leaveRoom(name) {
  state.rooms.delete(name);
  state.outgoing = state.outgoing.filter((o) => o.room !== name);
  saveRooms();
  try { await request({ type: "leave", room: name }); } catch (_) { /* offline: nothing to leave */ }
  if (state.current === name) state.current = state.rooms.keys().next().value || null;
  renderRooms();
  renderRoom();
}

function saveRooms() {
  localStorage.setItem("nebula.rooms", JSON.stringify([...state.rooms.keys()]));
}

function addMessages(name, msgs, live) {
  const room = state.rooms.get(name);
  if (!room) return;
  let added = 0;
  let appendable = name === state.current;
  for (const m of msgs) {
    if (room.messages.has(m.offset)) continue;   // never shown twice
    // A live message that follows the last one shown is appended; anything else re-renders.
    appendable = appendable && live && m.offset === room.rendered + 1;
    room.messages.set(m.offset, m);
    room.last = Math.max(room.last, m.offset);
    room.oldest = room.oldest === null ? m.offset : Math.min(room.oldest, m.offset);
    added += 1;
    if (live && m.user.id !== state.me.id && (name !== state.current || !atBottom())) {
      room.unread += 1;
      if (room.firstUnseen === null) room.firstUnseen = m.offset;
    }
  }
  if (room.oldest !== null && room.oldest <= 1) room.complete = true;
  if (!added) return;
  if (name !== state.current) { if (live) renderRooms(); return; }
  if (appendable) {
    const stick = atBottom();
    for (const m of msgs) appendMessage(room, m);
    if (stick) scrollToEnd(false); else showNewMarker(room);
  } else {
    renderMessages(live);
  }
  renderTitle();
}

function memberChange(name, user, present) {
  const room = state.rooms.get(name);
  if (!room) return;
  if (present) room.members.set(user.id, user); else room.members.delete(user.id);
  if (name === state.current) {
    renderMembers();
    const li = document.createElement("li");
    li.className = "event";
    li.textContent = `${user.name} ${present ? "joined" : "left"}`;
    $("message-list").appendChild(li);
    scrollToEnd(true);
  }
}

async function loadOlder() {
  const room = state.rooms.get(state.current);
  if (!room || room.complete || room.loadingOlder || !room.joined) return;
  room.loadingOlder = true;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const req = { type: "history", room: room.name, limit: 50 };
    if (room.oldest !== null) req.before = room.oldest;
    const r = await request(req);
    if (r.messages.length === 0) room.complete = true;
    addMessages(room.name, r.messages, false);
    if (r.more) await pageAfter(room, r.messages);
    if (room.oldest !== null && room.oldest <= 1) room.complete = true;
    renderMessages(false);
    box.scrollTop = box.scrollHeight - fromBottom;
  } catch (e) {
    notice(`history: ${e.message}`);
  } finally {
    room.loadingOlder = false;
  }
}

// ---------- Sending ----------
async function send() {
  const box = $("body");
  const body = box.value;
  if (!body.trim() || !state.current) return;
  box.value = "";
  autosize();
  state.outgoing.push({ room: state.current, body, key: newKey(), status: "sending", tries: 0 });
  renderOutgoing();
  flushOutgoing();
}

/// Sends every outgoing message not in flight, in order, each with its own key. An ack
/// removes it (its push shows it); a refusal keeps it, to be sent again with the same key.
async function flushOutgoing() {
  if (!state.connected) return;
  for (const o of state.outgoing) {
    if (o.inFlight || o.status === "failed") continue;
    const room = state.rooms.get(o.room);
    if (!room || !room.joined) continue;
    o.inFlight = true;
    o.tries += 1;
    request({ type: "publish", room: o.room, body: o.body, key: o.key })
      .then(() => {
        state.outgoing = state.outgoing.filter((x) => x !== o);
        renderOutgoing();
      })
      .catch((e) => {
        o.inFlight = false;
        if (e.code === "offline") { o.status = "sending"; renderOutgoing(); return; }  // resent after the rejoin
        if (e.code === "rate_limited" || e.code === "unavailable") {
          o.status = e.code === "rate_limited" ? "slow down…" : "retrying…";
          if (o.tries < 8) setTimeout(flushOutgoing, 1000 * Math.min(o.tries, 5));
          else o.status = "failed";
        } else {
          o.status = "failed";
          notice(`not sent: ${e.message}`);
        }
        renderOutgoing();
      });
  }
}

function retryOutgoing(o) {
  o.status = "sending";
  o.tries = 0;
  renderOutgoing();
  flushOutgoing();
}

// ---------- Rendering ----------
function colorFor(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 70% 70%)`;
}

function renderTitle() {
  const total = [...state.rooms.values()].reduce((n, r) => n + r.unread, 0);
  document.title = total > 0 ? `(${total}) Nebula chat` : "Nebula chat";
  $("unread-total").textContent = total > 0 ? String(total) : "";
}

function renderRooms() {
  const ul = $("rooms");
  ul.replaceChildren();
  for (const room of state.rooms.values()) {
    const li = document.createElement("li");
    li.className = room.name === state.current ? "active" : "";
    li.dataset.room = room.name;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `# ${room.name}`;
    li.appendChild(name);
    if (room.unread > 0) {
      const u = document.createElement("span");
      u.className = "unread";
      u.textContent = String(room.unread);
      li.appendChild(u);
    }
    const leave = document.createElement("button");
    leave.className = "leave";
    leave.type = "button";
    leave.title = `Leave ${room.name}`;
    leave.textContent = "×";
    leave.addEventListener("click", (e) => { e.stopPropagation(); leaveRoom(room.name); });
    li.appendChild(leave);
    li.addEventListener("click", () => { state.current = room.name; setDrawer(false); renderRooms(); renderRoom(); });
    ul.appendChild(li);
  }
  renderTitle();
}

function renderMembers() {
  const room = state.rooms.get(state.current);
  const ul = $("members");
  ul.replaceChildren();
  const members = room ? [...room.members.values()].sort((a, b) => a.name.localeCompare(b.name)) : [];
  for (const u of members) {
    const li = document.createElement("li");
    li.textContent = u.id === state.me.id ? `${u.name} (you)` : u.name;
    ul.appendChild(li);
  }
  $("member-count").textContent = members.length ? `· ${members.length}` : "";
}

function renderRoom() {
  const room = state.rooms.get(state.current);
  $("room-title").textContent = room ? `# ${room.name}` : "No room";
  $("composer").hidden = !room;
  renderMembers();
  renderMessages(false);
  scrollToEnd(false);
  if (room) seen(room);
}

/// Puts `text` into `el`, with http(s) links as <a> elements: text nodes and checked hrefs
/// only, so a message can never inject markup.
function linkify(el, text) {
  const re = /\bhttps?:\/\/[^\s<>"']+/g;
  let at = 0;
  for (const match of text.matchAll(re)) {
    let url = match[0].replace(/[.,;:!?)\]]+$/, "");
    if (match.index > at) el.appendChild(document.createTextNode(text.slice(at, match.index)));
    let href = null;
    try {
      const u = new URL(url);
      if (u.protocol === "http:" || u.protocol === "https:") href = u.href;
    } catch (_) { /* not a URL after all */ }
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      el.appendChild(a);
    } else {
      el.appendChild(document.createTextNode(url));
    }
    at = match.index + url.length;
  }
  if (at < text.length) el.appendChild(document.createTextNode(text.slice(at)));
}

function messageItem(m, prev) {
  const li = document.createElement("li");
  const cont = prev && prev.user.id === m.user.id && m.ts - prev.ts < 5 * 60 * 1000 && prev.offset === m.offset - 1;
  li.className = "msg" + (cont ? " cont" : "") + (m.user.id === state.me.id ? " mine" : "");
  li.dataset.offset = m.offset;
  const avatar = document.createElement("div");
  avatar.className = "avatar";
  avatar.style.background = colorFor(m.user.id);
  avatar.textContent = (m.user.name[0] || "?").toUpperCase();
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.user.name;
  const time = document.createElement("time");
  time.dateTime = new Date(m.ts).toISOString();
  time.textContent = new Date(m.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  meta.append(who, time);
  const text = document.createElement("div");
  text.className = "text";
  linkify(text, m.body);
  li.append(avatar, meta, text);
  return li;
}

function unseenDivider() {
  const li = document.createElement("li");
  li.className = "divider";
  li.id = "unseen";
  li.textContent = "new messages";
  return li;
}

function appendMessage(room, m) {
  const list = $("message-list");
  const prev = room.messages.get(m.offset - 1);
  if (room.firstUnseen === m.offset && !$("unseen")) list.appendChild(unseenDivider());
  list.appendChild(messageItem(m, prev));
  room.rendered = m.offset;
}

function renderMessages(live) {
  const room = state.rooms.get(state.current);
  const list = $("message-list");
  const stick = atBottom();
  list.replaceChildren();
  $("older").hidden = !room || room.complete;
  if (!room) { renderOutgoing(); return; }
  const msgs = [...room.messages.values()].sort((a, b) => a.offset - b.offset);
  let prev = null;
  for (const m of msgs) {
    if (room.firstUnseen === m.offset) list.appendChild(unseenDivider());
    list.appendChild(messageItem(m, prev));
    prev = m;
  }
  room.rendered = msgs.length ? msgs[msgs.length - 1].offset : 0;
  renderOutgoing();
  if (stick || !live) scrollToEnd(false);
}

/// The messages of this room that are written but not acknowledged, below the list.
function renderOutgoing() {
  const ul = $("outgoing");
  ul.replaceChildren();
  for (const o of state.outgoing.filter((x) => x.room === state.current)) {
    const li = document.createElement("li");
    li.className = "pending";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = o.body;
    const status = document.createElement("span");
    status.className = "state";
    status.textContent = o.status;
    li.append(text, status);
    if (o.status === "failed") {
      const again = document.createElement("button");
      again.type = "button";
      again.className = "link";
      again.textContent = "retry";
      again.addEventListener("click", () => retryOutgoing(o));
      li.appendChild(again);
    }
    ul.appendChild(li);
  }
}

function atBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 60;
}

function scrollToEnd(onlyIfNear) {
  const box = $("messages");
  if (onlyIfNear && box.scrollHeight - box.scrollTop - box.clientHeight > 120) return;
  box.scrollTop = box.scrollHeight;
  const room = state.rooms.get(state.current);
  if (room) seen(room);
}

function showNewMarker(room) {
  $("new-marker").hidden = room.unread === 0;
  $("new-marker").textContent = `${room.unread} new message${room.unread === 1 ? "" : "s"} ↓`;
  renderRooms();
}

/// The current room is read up to its end: its unread count goes.
function seen(room) {
  if (!atBottom()) return;
  room.firstUnseen = null;
  if (room.unread > 0) { room.unread = 0; renderRooms(); }
  $("new-marker").hidden = true;
}

function notice(text) {
  $("notice").textContent = text;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { $("notice").textContent = ""; }, 5000);
}

// ---------- Layout (the room and member lists are a drawer on a phone) ----------
function setDrawer(open) {
  $("app").classList.toggle("drawer-open", open);
  $("menu").setAttribute("aria-expanded", String(open));
}
$("menu").addEventListener("click", () => setDrawer(!$("app").classList.contains("drawer-open")));
$("scrim").addEventListener("click", () => setDrawer(false));

// ---------- Input ----------
$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("join-room").value.trim();
  if (!name) return;
  $("join-room").value = "";
  state.current = name;
  if (!state.rooms.has(name)) state.rooms.set(name, newRoom(name));
  setDrawer(false);
  renderRooms();
  renderRoom();
  if (state.connected) joinRoom(name);
});

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("body").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
function autosize() {
  const t = $("body");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 128)}px`;
  t.style.overflowY = t.scrollHeight > 128 ? "auto" : "hidden";
}
$("body").addEventListener("input", autosize);
$("older").addEventListener("click", loadOlder);
$("new-marker").addEventListener("click", () => scrollToEnd(false));
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 40) loadOlder();
  const room = state.rooms.get(state.current);
  if (room) seen(room);
});

start();
