//! The JSON codec (`nebula.v1.json`): request parsing and the byte layout of every server frame.
//! Frames are written straight into a buffer (no intermediate `Value`), so a reply costs one
//! allocation.

use serde::Serialize;
use serde_json::{Map, Value};

use super::rules::{self, reject};
use super::{ErrorCode, MemberEvent, Message, Rejection, Request};
use crate::auth::User;

/// Parses one text frame into `(id, request)`.
pub fn parse_request(text: &str) -> Result<(u64, Request), Rejection> {
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
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(reject(Some(id), ErrorCode::BadRequest, "type is missing"));
    };
    let room = || rules::room(id, obj.get("room").and_then(Value::as_str));
    let request = match kind {
        "join" => Request::Join {
            room: room()?,
            since: opt_u64(&obj, "since", id)?,
        },
        "leave" => Request::Leave { room: room()? },
        "publish" => {
            let room = room()?;
            let body = rules::body(id, obj.get("body").and_then(Value::as_str))?;
            let key = match obj.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) => rules::key(id, Some(k))?,
                Some(_) => rules::key(id, Some(""))?,
            };
            Request::Publish { room, body, key }
        }
        "history" => rules::history(
            id,
            room()?,
            opt_u64(&obj, "before", id)?,
            opt_u64(&obj, "after", id)?,
            opt_u64(&obj, "limit", id)?,
        )?,
        "presence" => Request::Presence { room: room()? },
        "ping" => Request::Ping,
        _ => {
            return Err(reject(
                Some(id),
                ErrorCode::BadRequest,
                "unknown request type",
            ));
        }
    };
    Ok((id, request))
}

fn opt_u64(obj: &Map<String, Value>, field: &str, id: u64) -> Result<Option<u64>, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        _ => Err(reject(
            Some(id),
            ErrorCode::BadRequest,
            "since, before, after and limit must be non-negative integers",
        )),
    }
}

pub(super) fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *buf, value).expect("encoding to memory cannot fail");
}

/// The leading bytes of every message push; the rest is the message object itself.
pub(super) const PUSH_PREFIX: &[u8] = b"{\"type\":\"message\",";

/// The `message` push: `{"type":"message","room":..,"offset":..,"user":..,"body":..,"ts":..}`.
/// A message object in a list is the same without `"type":"message",`.
pub(super) fn message_push(m: &Message) -> Vec<u8> {
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
    debug_assert!(buf.starts_with(PUSH_PREFIX));
    buf
}

pub(super) fn welcome(user: &User, node: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Welcome<'a> {
        r#type: &'static str,
        user: &'a User,
        node: &'a str,
    }
    serde_json::to_vec(&Welcome {
        r#type: "welcome",
        user,
        node,
    })
    .expect("encodes")
}

pub(super) fn error(id: Option<u64>, code: ErrorCode, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Error<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: &'a str,
    }
    serde_json::to_vec(&Error {
        r#type: "error",
        id,
        code,
        message,
    })
    .expect("encodes")
}

/// A reply with an id, a type and maybe a room: `pong`, `left`.
pub(super) fn simple(id: u64, kind: &str, room: Option<&str>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Simple<'a> {
        id: u64,
        r#type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    }
    serde_json::to_vec(&Simple {
        id,
        r#type: kind,
        room,
    })
    .expect("encodes")
}

pub(super) fn ack(id: u64, room: &str, offset: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct Ack<'a> {
        id: u64,
        r#type: &'static str,
        room: &'a str,
        offset: u64,
    }
    serde_json::to_vec(&Ack {
        id,
        r#type: "ack",
        room,
        offset,
    })
    .expect("encodes")
}

pub(super) fn member_event(kind: MemberEvent, room: &str, user: &User) -> Vec<u8> {
    #[derive(Serialize)]
    struct Event<'a> {
        r#type: &'static str,
        room: &'a str,
        user: &'a User,
    }
    let kind = match kind {
        MemberEvent::Joined => "member_joined",
        MemberEvent::Left => "member_left",
    };
    serde_json::to_vec(&Event {
        r#type: kind,
        room,
        user,
    })
    .expect("encodes")
}

/// `{"id":..,"type":<kind>,"room":..` — the head that `presence`, `joined` and `history` share.
pub(super) fn head(buf: &mut Vec<u8>, id: u64, kind: &str, room: &str) {
    buf.extend_from_slice(b"{\"id\":");
    push_json(buf, &id);
    buf.extend_from_slice(b",\"type\":");
    push_json(buf, kind);
    buf.extend_from_slice(b",\"room\":");
    push_json(buf, room);
}

pub(super) fn members<'a>(buf: &mut Vec<u8>, members: impl Iterator<Item = &'a User>) {
    buf.extend_from_slice(b",\"members\":[");
    for (i, user) in members.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json(buf, user);
    }
    buf.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MAX_HISTORY, Page};

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
                    page: Page::Before(None),
                    limit: MAX_HISTORY
                }
            ))
        );
        assert_eq!(
            parse(r#"{"id":4,"type":"history","room":"a","after":7,"limit":3}"#),
            Ok((
                4,
                Request::History {
                    room: "a".into(),
                    page: Page::After(7),
                    limit: 3
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
        assert_eq!(
            code(r#"{"id":2,"type":"join","room":7}"#).code,
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
            code(r#"{"id":2,"type":"publish","room":"a","body":"x","key":5}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"id":2,"type":"join","room":"a","since":-1}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"id":2,"type":"history","room":"a","before":3,"after":1}"#).code,
            ErrorCode::BadRequest
        );
    }
}
