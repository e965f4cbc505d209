//! What the cluster keeps in Redis: key names, the Lua scripts that change it atomically, and
//! the fields of stream entries.
//!
//! | key | what |
//! |---|---|
//! | `nebula:epoch` | the numbering's epoch; gone or changed = Redis lost data or was repaired |
//! | `nebula:{room}:seq` | the room's latest offset |
//! | `nebula:{room}:log` | the room's capped stream, entry id = offset (catch-up, repair) |
//! | `nebula:{room}:idem:<user>:<key>` | an idempotency key's offset, 10 minutes |
//! | `nebula:rooms` | every room with messages |
//! | `nebula:feed` | every message of the cluster in order (capped stream): what nodes follow |
//! | `nebula:batch:<node>:<run>:<n>` | a publish batch's results, 10 minutes (to resolve a timeout) |
//! | `nebula:repair` | the repair lock |
//! | `nebula:nodes`, `nebula:node:<node>` | the nodes, and each one's liveness (5 s) |
//! | `nebula:presence:<node>`, `nebula:pver:<node>` | a node's present `room\|user -> name`, and its version |
//! | `nebula:plog` | presence changes in order (capped stream) |
//! | `nebula:revoked`, `nebula:revoked:ver` | logged-out session generations per user, and their version |
//! | `nebula:stats:<node>` | a node's figures for the dashboard (5 s) |

use std::sync::Arc;

use redis::streams::StreamId;

use crate::auth::User;
use crate::protocol::Message;

pub const EPOCH: &str = "nebula:epoch";
pub const ROOMS: &str = "nebula:rooms";
pub const FEED: &str = "nebula:feed";
pub const REPAIR_LOCK: &str = "nebula:repair";
pub const NODES: &str = "nebula:nodes";
pub const PLOG: &str = "nebula:plog";
pub const REVOKED: &str = "nebula:revoked";
pub const REVOKED_VER: &str = "nebula:revoked:ver";

/// Entries kept in each room's stream (the catch-up log of a node that was away).
pub const STREAM_CAP: u64 = 100_000;
/// Entries kept in the feed: a node away for longer catches up room by room.
pub const FEED_CAP: u64 = 100_000;
/// Presence changes kept in the presence log.
pub const PLOG_CAP: u64 = 10_000;

pub fn seq(room: &str) -> String {
    format!("nebula:{{{room}}}:seq")
}
pub fn log(room: &str) -> String {
    format!("nebula:{{{room}}}:log")
}
pub fn idem(room: &str, user: &str, key: &str) -> String {
    format!("nebula:{{{room}}}:idem:{user}:{key}")
}
/// The marker of batch `n` of one run of a node's publisher. The run id is random per start:
/// a restarted node numbers its batches from 1 again, and must never take an earlier run's
/// marker (kept 10 minutes) for the answer to its own uncertain batch.
pub fn batch(node: &str, run: &str, n: u64) -> String {
    format!("nebula:batch:{node}:{run}:{n}")
}
pub fn liveness(node: &str) -> String {
    format!("nebula:node:{node}")
}
pub fn presence(node: &str) -> String {
    format!("nebula:presence:{node}")
}
pub fn presence_version(node: &str) -> String {
    format!("nebula:pver:{node}")
}
pub fn stats(node: &str) -> String {
    format!("nebula:stats:{node}")
}

/// A presence hash field: `room|user id`.
pub fn presence_field(room: &str, user: &str) -> String {
    format!("{room}|{user}")
}

/// Redis's clock in milliseconds, inside a script.
const NOW_MS: &str = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// Publishes a batch of messages atomically, in order.
///
/// KEYS: epoch, feed, batch marker, then per message: seq, log, idempotency key ('' if none).
/// ARGV: epoch, deadline (Redis ms), count, stream cap, feed cap, then per message: room,
/// the node's latest known offset of the room, user id, name, body, ts, key ('' if none).
///
/// Refuses everything (`fenced`) when the epoch is not the node's, (`expired`) when Redis's
/// clock is past the deadline the node gave (so a script that waited in a frozen Redis never
/// runs after the node answered), and (`behind`) when a room's numbering is below what the
/// node already stored (Redis lost data): nothing is written then. Otherwise numbers each
/// message (or finds its idempotency key), appends it to its room's stream and to the feed
/// (neither with a `k` field when it has no key), and records the results under the batch
/// marker.
pub fn publish_script() -> String {
    format!(
        r#"
{NOW_MS}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {{'fenced', now}} end
if now > tonumber(ARGV[2]) then return {{'expired', now}} end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local seq = tonumber(redis.call('GET', KEYS[4 + i * 3]) or '0')
  if seq < tonumber(ARGV[7 + i * 7]) then return {{'behind', now, ARGV[6 + i * 7]}} end
end
local results = {{}}
for i = 0, n - 1 do
  local a = 6 + i * 7
  local room, uid, name, body, ts, key = ARGV[a], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local prev = false
  if key ~= '' then prev = redis.call('GET', KEYS[6 + i * 3]) end
  if prev then
    results[#results + 1] = 'd' .. prev
  else
    local o = redis.call('INCR', KEYS[4 + i * 3])
    local fields = {{'u', uid, 'n', name, 'b', body, 't', ts}}
    if key ~= '' then fields[9] = 'k'; fields[10] = key end
    redis.call('XADD', KEYS[5 + i * 3], 'MAXLEN', '~', ARGV[4], o .. '-0', unpack(fields))
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'r', room, 'o', o, unpack(fields))
    if key ~= '' then redis.call('SET', KEYS[6 + i * 3], o, 'PX', 600000) end
    redis.call('SADD', 'nebula:rooms', room)
    results[#results + 1] = 's' .. o
  end
end
local packed = table.concat(results, ',')
redis.call('SET', KEYS[3], packed, 'PX', 600000)
return {{'ok', now, packed}}
"#
    )
}

/// Finds out what became of a batch whose answer was lost. KEYS: batch marker, epoch. ARGV:
/// the batch's deadline, the epoch it was sent under. `ok` + results when it ran; `epoch` when
/// Redis's data changed since (the marker may have been lost with it: only the nodes' logs can
/// tell); `never` when it did not run and cannot any more (Redis's clock is past the deadline,
/// so the script refuses if it ever runs); else `pending`.
pub fn resolve_script() -> String {
    format!(
        r#"
{NOW_MS}
local v = redis.call('GET', KEYS[1])
if v then return {{'ok', now, v}} end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {{'epoch', now}} end
if now > tonumber(ARGV[1]) then return {{'never', now}} end
return {{'pending', now}}
"#
    )
}

/// Repairs one room from a node's log. KEYS: epoch, seq, log. ARGV: room, the node's highest
/// offset of the room, the fence value to set first when anything changes, stream cap, then
/// entries (offset, user id, name, body, ts, key; oldest first). Raises the numbering to the
/// node's and appends the entries the stream lacks, re-creating their idempotency keys that
/// are still young; returns 1 when it changed anything (and fenced every node's publishes).
pub fn repair_room_script() -> &'static str {
    r#"
local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[2])
local lastid = 0
local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #top > 0 then lastid = tonumber(string.match(top[1][1], '^(%d+)')) end
if seq >= mine and lastid >= mine then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
if seq < mine then redis.call('SET', KEYS[2], mine) end
for i = 5, #ARGV, 6 do
  local o = tonumber(ARGV[i])
  if o > lastid then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], o .. '-0', 'u', ARGV[i + 1], 'n', ARGV[i + 2], 'b', ARGV[i + 3], 't', ARGV[i + 4], 'k', ARGV[i + 5])
    lastid = o
    local age = now - tonumber(ARGV[i + 4])
    if ARGV[i + 5] ~= '' and age < 600000 then
      redis.call('SET', 'nebula:{' .. ARGV[1] .. '}:idem:' .. ARGV[i + 1] .. ':' .. ARGV[i + 5], o, 'PX', 600000 - age, 'NX')
    end
  end
end
redis.call('SADD', 'nebula:rooms', ARGV[1])
return 1
"#
}

/// Releases a lock only if this node holds it. KEYS: lock. ARGV: holder.
pub const UNLOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A node's heartbeat. KEYS: its liveness key, the nodes set. ARGV: node, lifetime (ms), the
/// epoch it numbers under ('' while it has none). Returns 1 when the node was not in the set:
/// it is new, or another node withdrew it while it was frozen or cut off, and it must announce
/// its presence again.
pub const HEARTBEAT_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return redis.call('SADD', KEYS[2], ARGV[1])
"#;

/// True when every live node says it numbers under epoch ARGV[1] (its liveness value). KEYS:
/// the nodes set.
pub const ALL_ADOPTED_SCRIPT: &str = r#"
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', 'nebula:node:' .. node)
  if v and v ~= ARGV[1] then return 0 end
end
return 1
"#;

/// Withdraws a node whose liveness expired, atomically with the check (so a node that comes
/// back in between is never withdrawn). KEYS: its liveness, the nodes set, its presence hash,
/// its presence version. ARGV: node. Returns 1 when it withdrew it.
pub const WITHDRAW_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
"#;

/// Applies this node's presence changes. KEYS: its presence hash, its version, the presence
/// log. ARGV: node, log cap, then triples (room|user field, name, '1' present / '0' gone).
/// Each change gets the next version, written with it to the log. Returns the last version.
pub const PRESENCE_SCRIPT: &str = r#"
local v = 0
for i = 3, #ARGV, 3 do
  v = redis.call('INCR', KEYS[2])
  if ARGV[i + 2] == '1' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else redis.call('HDEL', KEYS[1], ARGV[i]) end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'node', ARGV[1], 'f', ARGV[i], 'n', ARGV[i + 1], 'p', ARGV[i + 2], 'v', v)
end
return v
"#;

/// Reads a node's presence hash and its version together. KEYS: hash, version.
pub const SNAPSHOT_SCRIPT: &str = r#"
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"#;

/// Raises a user's logged-out generation. KEYS: the revocations hash, its version. ARGV: user,
/// generation.
pub const REVOKE_SCRIPT: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return redis.call('INCR', KEYS[2])
"#;

/// A string field of a stream entry.
pub fn field(entry: &StreamId, name: &str) -> String {
    entry.get::<String>(name).unwrap_or_default()
}

/// The offset in a room stream's entry id (`<offset>-0`).
pub fn offset_of_id(id: &str) -> Option<u64> {
    id.split('-').next().and_then(|o| o.parse().ok())
}

/// The milliseconds of an auto-generated entry id (`<ms>-<n>`).
pub fn ms_of_id(id: &str) -> Option<u64> {
    offset_of_id(id)
}

/// A message and its idempotency key from a room stream's entry.
pub fn from_room_entry(room: &Arc<str>, entry: &StreamId) -> Option<(Message, Option<Arc<str>>)> {
    let offset = offset_of_id(&entry.id)?;
    Some(message(room.clone(), offset, entry))
}

/// A message and its idempotency key from a feed entry.
pub fn from_feed_entry(entry: &StreamId) -> Option<(Message, Option<Arc<str>>)> {
    let room: Arc<str> = field(entry, "r").into();
    let offset: u64 = field(entry, "o").parse().ok()?;
    if room.is_empty() {
        return None;
    }
    Some(message(room, offset, entry))
}

fn message(room: Arc<str>, offset: u64, entry: &StreamId) -> (Message, Option<Arc<str>>) {
    let key = field(entry, "k");
    (
        Message {
            room,
            offset,
            user: User {
                id: field(entry, "u").into(),
                name: field(entry, "n").into(),
            },
            body: field(entry, "b").into(),
            ts: field(entry, "t").parse().unwrap_or(0),
        },
        (!key.is_empty()).then(|| key.into()),
    )
}

/// The results of a publish batch: per message `s<offset>` (stored) or `d<offset>` (a
/// duplicate of an earlier offset).
pub fn parse_results(packed: &str) -> Option<Vec<(bool, u64)>> {
    packed
        .split(',')
        .map(|r| {
            let (kind, offset) = r.split_at_checked(1)?;
            Some((kind == "s", offset.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_ids_parse() {
        assert_eq!(
            parse_results("s4,d2,s5"),
            Some(vec![(true, 4), (false, 2), (true, 5)])
        );
        assert_eq!(parse_results("x"), None);
        assert_eq!(offset_of_id("42-0"), Some(42));
        assert_eq!(seq("lobby"), "nebula:{lobby}:seq");
    }
}
