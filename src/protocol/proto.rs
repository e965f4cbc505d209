//! The Protobuf codec (`nebula.v1.proto`): the types prost generates from `proto/nebula.proto`,
//! request parsing, and the hand-assembled frames that embed already-encoded messages.

use prost::Message as _;
use prost::encoding::{self, WireType};

use super::rules::{self, reject};
use super::{ErrorCode, MemberEvent, Message, Rejection, Request};
use crate::auth::User;

/// The generated types of `proto/nebula.proto` (package `nebula.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/nebula.v1.rs"));
}

use pb::client_frame::Type as C;
use pb::server_frame::Type as S;

/// Field numbers of `ServerFrame` (see `proto/nebula.proto`).
pub(super) const FRAME_ID: u32 = 1;
pub(super) const FRAME_JOINED: u32 = 3;
pub(super) const FRAME_HISTORY: u32 = 6;
pub(super) const FRAME_PRESENCE: u32 = 7;
pub(super) const FRAME_MESSAGE: u32 = 10;

/// Parses one binary frame (a `ClientFrame`) into `(id, request)`.
pub fn parse_request(frame: &[u8]) -> Result<(u64, Request), Rejection> {
    let Ok(frame) = pb::ClientFrame::decode(frame) else {
        return Err(reject(
            None,
            ErrorCode::BadRequest,
            "a request is a ClientFrame (proto/nebula.proto)",
        ));
    };
    if frame.id == 0 {
        return Err(reject(
            None,
            ErrorCode::BadRequest,
            "id must be a positive integer",
        ));
    }
    let id = frame.id;
    let Some(kind) = frame.r#type else {
        return Err(reject(Some(id), ErrorCode::BadRequest, "type is missing"));
    };
    let request = match kind {
        C::Join(j) => Request::Join {
            room: rules::room(id, Some(&j.room))?,
            since: j.since,
        },
        C::Leave(l) => Request::Leave {
            room: rules::room(id, Some(&l.room))?,
        },
        C::Publish(p) => Request::Publish {
            room: rules::room(id, Some(&p.room))?,
            body: rules::body(id, Some(&p.body))?,
            key: rules::key(id, p.key.as_deref())?,
        },
        C::History(h) => rules::history(
            id,
            rules::room(id, Some(&h.room))?,
            h.before,
            h.after,
            h.limit,
        )?,
        C::Presence(p) => Request::Presence {
            room: rules::room(id, Some(&p.room))?,
        },
        C::Ping(_) => Request::Ping,
    };
    Ok((id, request))
}

fn user(u: &User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        name: u.name.to_string(),
    }
}

fn frame(id: u64, kind: S) -> Vec<u8> {
    pb::ServerFrame {
        id,
        r#type: Some(kind),
    }
    .encode_to_vec()
}

/// The `message` push: a `ServerFrame` with id 0 whose case `message` (field 10) is the
/// `Message`. Returns the frame and where the embedded `Message` starts in it, so that lists
/// (`joined`, `history`) reuse the same bytes. Written by hand into one buffer (the broadcast
/// path allocates nothing per field).
pub(super) fn message_push(m: &Message) -> (Vec<u8>, usize) {
    let user_len = string_len(1, &m.user.id) + string_len(2, &m.user.name);
    let len = string_len(1, &m.room)
        + u64_len(2, m.offset)
        + field_len(3, user_len)
        + string_len(4, &m.body)
        + u64_len(5, m.ts);
    let mut buf = Vec::with_capacity(field_len(FRAME_MESSAGE, len));
    encoding::encode_key(FRAME_MESSAGE, WireType::LengthDelimited, &mut buf);
    encoding::encode_varint(len as u64, &mut buf);
    let start = buf.len();
    put_string(1, &m.room, &mut buf);
    put_u64(2, m.offset, &mut buf);
    encoding::encode_key(3, WireType::LengthDelimited, &mut buf);
    encoding::encode_varint(user_len as u64, &mut buf);
    put_string(1, &m.user.id, &mut buf);
    put_string(2, &m.user.name, &mut buf);
    put_string(4, &m.body, &mut buf);
    put_u64(5, m.ts, &mut buf);
    debug_assert_eq!(buf.len(), start + len);
    (buf, start)
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(tag, value.len())
    }
}

fn u64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value)
    }
}

pub(super) fn welcome(u: &User, node: &str) -> Vec<u8> {
    frame(
        0,
        S::Welcome(pb::Welcome {
            user: Some(user(u)),
            node: node.into(),
        }),
    )
}

pub(super) fn error(id: Option<u64>, code: ErrorCode, message: &str) -> Vec<u8> {
    frame(
        id.unwrap_or(0),
        S::Error(pb::Error {
            code: code.as_str().into(),
            message: message.into(),
        }),
    )
}

pub(super) fn pong(id: u64) -> Vec<u8> {
    frame(id, S::Pong(pb::Pong {}))
}

pub(super) fn left(id: u64, room: &str) -> Vec<u8> {
    frame(id, S::Left(pb::Left { room: room.into() }))
}

pub(super) fn ack(id: u64, room: &str, offset: u64) -> Vec<u8> {
    frame(
        id,
        S::Ack(pb::Ack {
            room: room.into(),
            offset,
        }),
    )
}

pub(super) fn member_event(kind: MemberEvent, room: &str, u: &User) -> Vec<u8> {
    let event = pb::MemberEvent {
        room: room.into(),
        user: Some(user(u)),
    };
    frame(
        0,
        match kind {
            MemberEvent::Joined => S::MemberJoined(event),
            MemberEvent::Left => S::MemberLeft(event),
        },
    )
}

/// Appends a string field.
pub(super) fn put_string(tag: u32, value: &str, buf: &mut Vec<u8>) {
    if !value.is_empty() {
        put_raw(tag, value.as_bytes(), buf);
    }
}

/// Appends a `uint64` field (omitted when 0, as proto3 does).
pub(super) fn put_u64(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encoding::uint64::encode(tag, &value, buf);
    }
}

/// Appends a `bool` field; `always` for a proto3 `optional` field that is present.
pub(super) fn put_bool(tag: u32, value: bool, always: bool, buf: &mut Vec<u8>) {
    if value || always {
        encoding::bool::encode(tag, &value, buf);
    }
}

/// Appends a `User` field.
pub(super) fn put_user(tag: u32, u: &User, buf: &mut Vec<u8>) {
    encoding::message::encode(tag, &user(u), buf);
}

/// Appends an already-encoded embedded message as field `tag`.
pub(super) fn put_raw(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// Wraps an encoded reply body as case `case` of a `ServerFrame` with `id`.
pub(super) fn wrap(id: u64, case: u32, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(body.len() + 16);
    put_u64(FRAME_ID, id, &mut buf);
    put_raw(case, body, &mut buf);
    buf
}

/// The size of field `tag` holding `len` bytes, with its key and length prefix.
pub(super) fn field_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Page;

    fn client(id: u64, kind: C) -> Vec<u8> {
        pb::ClientFrame {
            id,
            r#type: Some(kind),
        }
        .encode_to_vec()
    }

    #[test]
    fn requests_parse_like_json() {
        let join = client(
            3,
            C::Join(pb::Join {
                room: "lobby".into(),
                since: Some(4),
            }),
        );
        assert_eq!(
            parse_request(&join),
            Ok((
                3,
                Request::Join {
                    room: "lobby".into(),
                    since: Some(4)
                }
            ))
        );
        let history = client(
            5,
            C::History(pb::History {
                room: "a".into(),
                after: Some(9),
                limit: Some(1000),
                before: None,
            }),
        );
        assert_eq!(
            parse_request(&history),
            Ok((
                5,
                Request::History {
                    room: "a".into(),
                    page: Page::After(9),
                    limit: 200
                }
            ))
        );
    }

    #[test]
    fn bad_requests_get_the_right_code() {
        assert_eq!(parse_request(b"\xff\xff\xff").unwrap_err().id, None);
        assert_eq!(
            parse_request(&client(0, C::Ping(pb::Ping {})))
                .unwrap_err()
                .id,
            None
        );
        let e = parse_request(&client(
            2,
            C::Join(pb::Join {
                room: "a b".into(),
                since: None,
            }),
        ))
        .unwrap_err();
        assert_eq!((e.id, e.code), (Some(2), ErrorCode::InvalidRoom));
        let e = parse_request(&client(
            2,
            C::Publish(pb::Publish {
                room: "a".into(),
                body: "x".repeat(4097),
                key: None,
            }),
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn a_push_decodes_and_embeds_its_message() {
        let m = Message {
            room: "r".into(),
            offset: 7,
            user: User {
                id: "u".into(),
                name: "n".into(),
            },
            body: "hi".into(),
            ts: 5,
        };
        let (push, start) = message_push(&m);
        let frame = pb::ServerFrame::decode(&push[..]).unwrap();
        assert_eq!(frame.id, 0);
        let Some(S::Message(decoded)) = frame.r#type else {
            panic!("not a message push")
        };
        assert_eq!(decoded.offset, 7);
        assert_eq!(pb::Message::decode(&push[start..]).unwrap(), decoded);
    }
}
