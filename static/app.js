// Nebula web chat: plain JS on the v1 JSON protocol (docs/PROTOCOL.md).
// Every piece of user text is put in the page with textContent, never as HTML.
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
};

function newRoom(name) {
  return { name, last: 0, oldest: null, messages: new Map(), members: new Map(), unread: 0, joined: false, complete: false };
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
  state.current = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000); }
  state.ws = null;
  localStorage.removeItem("nebula.rooms");
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
    for (const [, p] of state.pending) p.reject(new Error("disconnected"));
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
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { reject(new Error("offline")); return; }
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
      for (const room of state.rooms.values()) joinRoom(room.name);
      break;
    case "message": addMessages(f.room, [f], true); break;
    case "member_joined": memberChange(f.room, f.user, true); break;
    case "member_left": memberChange(f.room, f.user, false); break;
    case "error": notice(f.message); break;
  }
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
    }
    room.members = new Map(r.members.map((u) => [u.id, u]));
    addMessages(name, r.messages, false);
    room.last = Math.max(room.last, r.offset);
    if (r.offset === 0 || (room.oldest !== null && room.oldest <= 1)) room.complete = true;
    renderRooms();
    if (name === state.current) renderRoom();
  } catch (e) {
    notice(`could not join ${name}: ${e.message}`);
  }
}

async function leaveRoom(name) {
  state.rooms.delete(name);
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
  for (const m of msgs) {
    if (room.messages.has(m.offset)) continue;   // never shown twice
    room.messages.set(m.offset, m);
    room.last = Math.max(room.last, m.offset);
    room.oldest = room.oldest === null ? m.offset : Math.min(room.oldest, m.offset);
    added += 1;
  }
  if (room.oldest !== null && room.oldest <= 1) room.complete = true;
  if (!added) return;
  if (name === state.current) renderMessages(live);
  else if (live) { room.unread += added; renderRooms(); }
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
  if (!room || room.complete || room.loadingOlder) return;
  room.loadingOlder = true;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const req = { type: "history", room: room.name, limit: 50 };
    if (room.oldest !== null) req.before = room.oldest;
    const r = await request(req);
    if (r.messages.length === 0) room.complete = true;
    addMessages(room.name, r.messages, false);
    if (room.oldest !== null && room.oldest <= 1) room.complete = true;
    renderMessages(false);
    box.scrollTop = box.scrollHeight - fromBottom;
  } catch (e) {
    notice(`history: ${e.message}`);
  } finally {
    room.loadingOlder = false;
  }
}

// ---------- Rendering ----------
function colorFor(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 70% 70%)`;
}

function renderRooms() {
  const ul = $("rooms");
  ul.replaceChildren();
  for (const room of state.rooms.values()) {
    const li = document.createElement("li");
    li.className = room.name === state.current ? "active" : "";
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
    li.addEventListener("click", () => { state.current = room.name; room.unread = 0; renderRooms(); renderRoom(); });
    ul.appendChild(li);
  }
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
}

function renderMessages(live) {
  const room = state.rooms.get(state.current);
  const list = $("message-list");
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  list.replaceChildren();
  $("older").hidden = !room || room.complete;
  if (!room) return;
  const msgs = [...room.messages.values()].sort((a, b) => a.offset - b.offset);
  let prev = null;
  for (const m of msgs) {
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
    text.textContent = m.body;
    li.append(avatar, meta, text);
    list.appendChild(li);
    prev = m;
  }
  if (atBottom || !live) scrollToEnd(false);
}

function scrollToEnd(onlyIfNear) {
  const box = $("messages");
  if (onlyIfNear && box.scrollHeight - box.scrollTop - box.clientHeight > 120) return;
  box.scrollTop = box.scrollHeight;
}

function notice(text) {
  $("notice").textContent = text;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { $("notice").textContent = ""; }, 5000);
}

// ---------- Input ----------
$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("join-room").value.trim();
  if (!name) return;
  $("join-room").value = "";
  state.current = name;
  if (!state.rooms.has(name)) state.rooms.set(name, newRoom(name));
  renderRooms();
  renderRoom();
  if (state.connected) joinRoom(name);
});

async function send() {
  const box = $("body");
  const body = box.value;
  if (!body.trim() || !state.current) return;
  box.value = "";
  autosize();
  // The key makes a resend after a reconnect safe: the server stores it once.
  const key = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2);
  try {
    await request({ type: "publish", room: state.current, body, key });
  } catch (e) {
    box.value = body;
    notice(e.code === "rate_limited" ? "Slow down a little." : `not sent: ${e.message}`);
  }
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("body").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
function autosize() {
  const t = $("body");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 128)}px`;
}
$("body").addEventListener("input", autosize);
$("older").addEventListener("click", loadOlder);
$("messages").addEventListener("scroll", () => { if ($("messages").scrollTop < 40) loadOlder(); });

start();
