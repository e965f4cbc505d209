//! The v1 wire contract (`docs/PROTOCOL.md`): parsing requests, encoding replies and pushes.
//!
//! Replies and pushes are encoded once into shared bytes ([`Frame`]); a broadcast clones the
//! same bytes into every member's outbox.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::User;

/// One encoded text frame, shared by every connection that sends it.
pub type Frame = Utf8Bytes;

/// A body is at most this many bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 4096;
/// A WebSocket frame (or message) over this size closes the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// A connection joins at most this many rooms at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 100;
/// Messages returned by a plain `join` and by `history` without `limit`.
pub const DEFAULT_HISTORY: usize = 50;
/// The largest `limit` of a `history` request.
pub const MAX_HISTORY: usize = 200;
/// An idempotency key is at most this many characters.
pub const MAX_KEY_CHARS: usize = 64;
/// A repeated key is recognised for this long.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Close codes and their reasons.
pub mod close {
    /// The server shuts down; reconnect, possibly to another node.
    pub const SHUTDOWN: u16 = 1001;
    /// The session is invalid.
    pub const POLICY: u16 = 1008;
    /// A frame over 64 KiB.
    pub const TOO_BIG: u16 = 1009;
    /// The outbound queue overflowed: the client does not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Error codes of the contract. A client never sees a Rust error string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidRoom,
    NotJoined,
    TooManyRooms,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

/// A stored, numbered chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub room: Arc<str>,
    pub offset: u64,
    pub user: User,
    pub body: Arc<str>,
    /// Server time in milliseconds since the epoch.
    pub ts: u64,
}

/// A request as the contract defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Join {
        room: Arc<str>,
        since: Option<u64>,
    },
    Leave {
        room: Arc<str>,
    },
    Publish {
        room: Arc<str>,
        body: Arc<str>,
        key: Option<Arc<str>>,
    },
    History {
        room: Arc<str>,
        before: Option<u64>,
        limit: usize,
    },
    Presence {
        room: Arc<str>,
    },
    Ping,
}

/// A request that could not be accepted: the error reply to send (with the request's `id` when
/// it could be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: &'static str,
}

/// True when `room` is a valid room name: `^[A-Za-z0-9_.:-]{1,64}$`.
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Parses one text frame into `(id, request)`.
pub fn parse_request(text: &str) -> Result<(u64, Request), Rejection> {
    let reject = |id, code, message| Rejection { id, code, message };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return Err(reject(
            None,
            ErrorCode::BadRequest,
            "a request is a JSON object",
        ));
    };
    let id = match obj.get("id") {
        Some(Value::Number(n)) => n.as_u64().filter(|&id| id > 0),
        _ => None,
    };
    let Some(id) = id else {
        return Err(reject(
            None,
            ErrorCode::BadRequest,
            "id must be a positive integer",
        ));
    };
    let some = Some(id);
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(reject(some, ErrorCode::BadRequest, "type is missing"));
    };
    let room = || -> Result<Arc<str>, Rejection> {
        match obj.get("room") {
            Some(Value::String(r)) if valid_room(r) => Ok(r.as_str().into()),
            Some(Value::String(_)) => {
                Err(reject(some, ErrorCode::InvalidRoom, "invalid room name"))
            }
            _ => Err(reject(some, ErrorCode::BadRequest, "room must be a string")),
        }
    };
    let request = match kind {
        "join" => Request::Join {
            room: room()?,
            since: opt_u64(&obj, "since", some)?,
        },
        "leave" => Request::Leave { room: room()? },
        "publish" => {
            let room = room()?;
            let body = match obj.get("body") {
                Some(Value::String(b)) if b.len() > MAX_BODY_BYTES => {
                    return Err(reject(some, ErrorCode::TooLarge, "body is over 4096 bytes"));
                }
                Some(Value::String(b)) if !b.is_empty() => Arc::<str>::from(b.as_str()),
                _ => {
                    return Err(reject(
                        some,
                        ErrorCode::BadRequest,
                        "body must be 1 to 4096 bytes",
                    ));
                }
            };
            let key = match obj.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) if !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS => {
                    Some(Arc::<str>::from(k.as_str()))
                }
                _ => {
                    return Err(reject(
                        some,
                        ErrorCode::BadRequest,
                        "key must be 1 to 64 characters",
                    ));
                }
            };
            Request::Publish { room, body, key }
        }
        "history" => {
            let room = room()?;
            let before = opt_u64(&obj, "before", some)?;
            let limit = match opt_u64(&obj, "limit", some)? {
                None => DEFAULT_HISTORY,
                Some(0) => {
                    return Err(reject(
                        some,
                        ErrorCode::BadRequest,
                        "limit must be positive",
                    ));
                }
                Some(l) => (l as usize).min(MAX_HISTORY),
            };
            Request::History {
                room,
                before,
                limit,
            }
        }
        "presence" => Request::Presence { room: room()? },
        "ping" => Request::Ping,
        _ => return Err(reject(some, ErrorCode::BadRequest, "unknown request type")),
    };
    Ok((id, request))
}

fn opt_u64(
    obj: &Map<String, Value>,
    field: &str,
    id: Option<u64>,
) -> Result<Option<u64>, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        _ => Err(Rejection {
            id,
            code: ErrorCode::BadRequest,
            message: "since, before and limit must be non-negative integers",
        }),
    }
}

fn frame(buf: Vec<u8>) -> Frame {
    Utf8Bytes::try_from(Bytes::from(buf)).expect("serde_json writes UTF-8")
}

fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *buf, value).expect("encoding to memory cannot fail");
}

/// `{"type":"welcome","user":..,"node":..}`
pub fn welcome(user: &User, node: &str) -> Frame {
    #[derive(Serialize)]
    struct Welcome<'a> {
        r#type: &'static str,
        user: &'a User,
        node: &'a str,
    }
    frame(
        serde_json::to_vec(&Welcome {
            r#type: "welcome",
            user,
            node,
        })
        .expect("encodes"),
    )
}

/// An error reply.
pub fn error(id: Option<u64>, code: ErrorCode, message: &str) -> Frame {
    #[derive(Serialize)]
    struct Error<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: &'a str,
    }
    frame(
        serde_json::to_vec(&Error {
            r#type: "error",
            id,
            code,
            message,
        })
        .expect("encodes"),
    )
}

/// A reply with only an id, a type and maybe a room: `pong`, `left`.
pub fn simple(id: u64, kind: &str, room: Option<&str>) -> Frame {
    #[derive(Serialize)]
    struct Simple<'a> {
        id: u64,
        r#type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    }
    frame(
        serde_json::to_vec(&Simple {
            id,
            r#type: kind,
            room,
        })
        .expect("encodes"),
    )
}

/// `{"id":..,"type":"ack","room":..,"offset":..}`
pub fn ack(id: u64, room: &str, offset: u64) -> Frame {
    #[derive(Serialize)]
    struct Ack<'a> {
        id: u64,
        r#type: &'static str,
        room: &'a str,
        offset: u64,
    }
    frame(
        serde_json::to_vec(&Ack {
            id,
            r#type: "ack",
            room,
            offset,
        })
        .expect("encodes"),
    )
}

/// The leading bytes of every message push; the rest is the message object itself.
const PUSH_PREFIX: &str = "{\"type\":\"message\",";

/// The `message` push: `{"type":"message","room":..,"offset":..,"user":..,"body":..,"ts":..}`.
/// A message object in a list is the same without `"type":"message",` (see [`message_object`]).
pub fn message_push(m: &Message) -> Frame {
    #[derive(Serialize)]
    struct Push<'a> {
        r#type: &'static str,
        room: &'a str,
        offset: u64,
        user: &'a User,
        body: &'a str,
        ts: u64,
    }
    let mut buf = Vec::with_capacity(
        96 + m.room.len() + m.user.id.len() + m.user.name.len() + m.body.len() * 6 / 5,
    );
    push_json(
        &mut buf,
        &Push {
            r#type: "message",
            room: &m.room,
            offset: m.offset,
            user: &m.user,
            body: &m.body,
            ts: m.ts,
        },
    );
    debug_assert!(buf.starts_with(PUSH_PREFIX.as_bytes()));
    frame(buf)
}

/// Appends the message object of an encoded push to `buf`.
pub fn message_object(push: &Frame, buf: &mut Vec<u8>) {
    buf.push(b'{');
    buf.extend_from_slice(&push.as_bytes()[PUSH_PREFIX.len()..]);
}

/// `member_joined` / `member_left` pushes.
pub fn member_event(kind: &'static str, room: &str, user: &User) -> Frame {
    #[derive(Serialize)]
    struct Event<'a> {
        r#type: &'static str,
        room: &'a str,
        user: &'a User,
    }
    frame(
        serde_json::to_vec(&Event {
            r#type: kind,
            room,
            user,
        })
        .expect("encodes"),
    )
}

/// `presence` reply.
pub fn presence<'a>(id: u64, room: &str, members: impl Iterator<Item = &'a User>) -> Frame {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(b"{\"id\":");
    push_json(&mut buf, &id);
    buf.extend_from_slice(b",\"type\":\"presence\",\"room\":");
    push_json(&mut buf, room);
    buf.extend_from_slice(b",\"members\":");
    push_members(&mut buf, members);
    buf.push(b'}');
    frame(buf)
}

fn push_members<'a>(buf: &mut Vec<u8>, members: impl Iterator<Item = &'a User>) {
    buf.push(b'[');
    for (i, user) in members.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json(buf, user);
    }
    buf.push(b']');
}

fn push_messages<'a>(buf: &mut Vec<u8>, messages: impl Iterator<Item = &'a Frame>) {
    buf.push(b'[');
    for (i, push) in messages.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        message_object(push, buf);
    }
    buf.push(b']');
}

/// `joined` reply. `recovered` is present only for a join with `since`.
pub fn joined<'a>(
    id: u64,
    room: &str,
    offset: u64,
    members: impl Iterator<Item = &'a User>,
    messages: impl Iterator<Item = &'a Frame>,
    recovered: Option<bool>,
) -> Frame {
    let mut buf = Vec::with_capacity(512);
    buf.extend_from_slice(b"{\"id\":");
    push_json(&mut buf, &id);
    buf.extend_from_slice(b",\"type\":\"joined\",\"room\":");
    push_json(&mut buf, room);
    buf.extend_from_slice(b",\"offset\":");
    push_json(&mut buf, &offset);
    buf.extend_from_slice(b",\"members\":");
    push_members(&mut buf, members);
    buf.extend_from_slice(b",\"messages\":");
    push_messages(&mut buf, messages);
    if let Some(recovered) = recovered {
        buf.extend_from_slice(b",\"recovered\":");
        push_json(&mut buf, &recovered);
    }
    buf.push(b'}');
    frame(buf)
}

/// `history` reply.
pub fn history<'a>(id: u64, room: &str, messages: impl Iterator<Item = &'a Frame>) -> Frame {
    let mut buf = Vec::with_capacity(512);
    buf.extend_from_slice(b"{\"id\":");
    push_json(&mut buf, &id);
    buf.extend_from_slice(b",\"type\":\"history\",\"room\":");
    push_json(&mut buf, room);
    buf.extend_from_slice(b",\"messages\":");
    push_messages(&mut buf, messages);
    buf.push(b'}');
    frame(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(u64, Request), Rejection> {
        parse_request(s)
    }

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse(r#"{"id":1,"type":"join","room":"lobby","since":3}"#),
            Ok((
                1,
                Request::Join {
                    room: "lobby".into(),
                    since: Some(3)
                }
            ))
        );
        assert_eq!(parse(r#"{"id":6,"type":"ping"}"#), Ok((6, Request::Ping)));
        assert_eq!(
            parse(r#"{"id":4,"type":"history","room":"a","limit":1000}"#),
            Ok((
                4,
                Request::History {
                    room: "a".into(),
                    before: None,
                    limit: MAX_HISTORY
                }
            ))
        );
    }

    #[test]
    fn bad_requests_get_the_right_code() {
        let code = |s| parse(s).unwrap_err();
        assert_eq!(code("nope").id, None);
        assert_eq!(code(r#"{"type":"ping"}"#).id, None);
        assert_eq!(code(r#"{"id":0,"type":"ping"}"#).id, None);
        assert_eq!(code(r#"{"id":-1,"type":"ping"}"#).id, None);
        assert_eq!(code(r#"{"id":2,"type":"fly"}"#).code, ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"id":2,"type":"join","room":"a b"}"#).code,
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"id":2,"type":"join","room":""}"#).code,
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"id":2,"type":"join"}"#).code,
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"id":2,"type":"publish","room":"a","body":"{}"}}"#,
            "x".repeat(4097)
        );
        assert_eq!(code(&big).code, ErrorCode::TooLarge);
        assert_eq!(
            code(r#"{"id":2,"type":"publish","room":"a","body":""}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"id":2,"type":"join","room":"a","since":-1}"#).code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn room_names() {
        assert!(valid_room("a.b:c-d_e9"));
        assert!(valid_room(&"x".repeat(64)));
        assert!(!valid_room(&"x".repeat(65)));
        assert!(!valid_room("é"));
    }

    #[test]
    fn push_and_message_object_agree() {
        let m = Message {
            room: "lobby".into(),
            offset: 7,
            user: User {
                id: "u".into(),
                name: "<b>".into(),
            },
            body: "hi \"there\"".into(),
            ts: 5,
        };
        let push = message_push(&m);
        let v: Value = serde_json::from_str(push.as_str()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["body"], "hi \"there\"");
        let mut obj = Vec::new();
        message_object(&push, &mut obj);
        let o: Value = serde_json::from_slice(&obj).unwrap();
        assert_eq!(o.get("type"), None);
        assert_eq!(o["user"]["name"], "<b>");
        let j = joined(
            1,
            "lobby",
            7,
            [&m.user].into_iter(),
            [&push].into_iter(),
            Some(true),
        );
        let j: Value = serde_json::from_str(j.as_str()).unwrap();
        assert_eq!(j["messages"][0]["offset"], 7);
        assert_eq!(j["recovered"], true);
    }
}
