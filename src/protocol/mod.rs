//! The wire contract (`docs/PROTOCOL.md`, v1 with its v1.1 additions): requests, replies and
//! pushes in two codecs, JSON text frames (`nebula.v1.json`, the default) and Protobuf binary
//! frames (`nebula.v1.proto`, `proto/nebula.proto`).
//!
//! Every frame the server sends is built here ([`Codec`]'s methods and [`Encoded`]); the rest of
//! the server names error and close codes only as values. A message is encoded at most once per
//! codec ([`Encoded`]) and its bytes are shared by every connection that sends it.

mod encoded;
mod json;
mod proto;
mod reply;

use std::sync::Arc;

use serde::Serialize;

use crate::auth::User;

pub use encoded::{Encoded, Frame};
pub use proto::pb;
pub use reply::{JoinedReply, PerCodec};

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
/// The most messages a `join` with `since` carries; the rest is paged with `history` `after`.
pub const MAX_SINCE_MESSAGES: usize = 1000;
/// No `joined`, `history` or `presence` reply is larger than about this (v1.1 "paged replies").
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// The most members a `joined` or `presence` reply lists (a server limit, documented).
pub const MAX_LISTED_MEMBERS: usize = 10_000;
/// An idempotency key is at most this many characters.
pub const MAX_KEY_CHARS: usize = 64;
/// A repeated key is recognised for this long.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The two encodings of the contract, chosen per connection by its WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON text frames: subprotocol `nebula.v1.json`, the default.
    Json,
    /// Protobuf binary frames (`proto/nebula.proto`): subprotocol `nebula.v1.proto`.
    Proto,
}

impl Codec {
    /// Both codecs, in the order a server prefers them when a client offers both.
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::Proto];

    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => "nebula.v1.json",
            Codec::Proto => "nebula.v1.proto",
        }
    }

    /// The codec of a subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.subprotocol().eq_ignore_ascii_case(name.trim()))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Close codes and their reasons, as the contract defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The server shuts down; reconnect, possibly to another node.
    Shutdown,
    /// A WebSocket protocol violation (reserved bits, a fragmented or oversized control frame,
    /// a bad opcode).
    Protocol,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// The session is invalid (it expired while connected).
    Policy,
    /// A frame over 64 KiB.
    TooBig,
    /// The peer answered no ping for the ping timeout.
    Idle,
    /// The outbound budget overflowed: the client does not read fast enough.
    SlowConsumer,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Shutdown => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidUtf8 => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Idle => 4000,
            CloseCode::SlowConsumer => 4008,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown",
            CloseCode::Protocol => "protocol error",
            CloseCode::InvalidUtf8 => "invalid utf-8",
            CloseCode::Policy => "invalid session",
            CloseCode::TooBig => "frame too big",
            CloseCode::Idle => "idle",
            CloseCode::SlowConsumer => "slow consumer",
        }
    }

    /// The close code with this number.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Shutdown,
            CloseCode::Protocol,
            CloseCode::InvalidUtf8,
            CloseCode::Policy,
            CloseCode::TooBig,
            CloseCode::Idle,
            CloseCode::SlowConsumer,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
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

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `member_joined` or `member_left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEvent {
    Joined,
    Left,
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

/// Which page of a room's log a `history` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages with offset below this (`None`: the latest), oldest first.
    Before(Option<u64>),
    /// The oldest messages with offset above this, oldest first (v1.1).
    After(u64),
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
        page: Page,
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

/// Parses one data frame of a connection speaking `codec`: a text frame for JSON, a binary
/// frame for Protobuf. The frame of the other kind is a `bad_request`.
pub fn parse(codec: Codec, frame: &[u8], text: bool) -> Result<(u64, Request), Rejection> {
    match (codec, text) {
        (Codec::Json, true) => {
            let text = std::str::from_utf8(frame).map_err(|_| Rejection {
                id: None,
                code: ErrorCode::BadRequest,
                message: "a text frame is UTF-8",
            })?;
            json::parse_request(text)
        }
        (Codec::Proto, false) => proto::parse_request(frame),
        (Codec::Json, false) => Err(Rejection {
            id: None,
            code: ErrorCode::BadRequest,
            message: "binary frames need subprotocol nebula.v1.proto",
        }),
        (Codec::Proto, true) => Err(Rejection {
            id: None,
            code: ErrorCode::BadRequest,
            message: "text frames need subprotocol nebula.v1.json",
        }),
    }
}

/// The server's clock in milliseconds since the epoch: a message's `ts`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True when `room` is a valid room name: `^[A-Za-z0-9_.:-]{1,64}$`.
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The rules every codec shares, applied to the fields a parser read.
mod rules {
    use super::*;

    pub fn reject(id: Option<u64>, code: ErrorCode, message: &'static str) -> Rejection {
        Rejection { id, code, message }
    }

    pub fn room(id: u64, room: Option<&str>) -> Result<Arc<str>, Rejection> {
        match room {
            Some(r) if valid_room(r) => Ok(r.into()),
            Some(_) => Err(reject(
                Some(id),
                ErrorCode::InvalidRoom,
                "invalid room name",
            )),
            None => Err(reject(
                Some(id),
                ErrorCode::BadRequest,
                "room must be a string",
            )),
        }
    }

    pub fn body(id: u64, body: Option<&str>) -> Result<Arc<str>, Rejection> {
        match body {
            Some(b) if b.len() > MAX_BODY_BYTES => Err(reject(
                Some(id),
                ErrorCode::TooLarge,
                "body is over 4096 bytes",
            )),
            Some(b) if !b.is_empty() => Ok(b.into()),
            _ => Err(reject(
                Some(id),
                ErrorCode::BadRequest,
                "body must be 1 to 4096 bytes",
            )),
        }
    }

    pub fn key(id: u64, key: Option<&str>) -> Result<Option<Arc<str>>, Rejection> {
        match key {
            None => Ok(None),
            Some(k) if !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS => Ok(Some(k.into())),
            Some(_) => Err(reject(
                Some(id),
                ErrorCode::BadRequest,
                "key must be 1 to 64 characters",
            )),
        }
    }

    pub fn history(
        id: u64,
        room: Arc<str>,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Request, Rejection> {
        let limit = match limit {
            None => DEFAULT_HISTORY,
            Some(0) => {
                return Err(reject(
                    Some(id),
                    ErrorCode::BadRequest,
                    "limit must be positive",
                ));
            }
            Some(l) => l.min(MAX_HISTORY as u64) as usize,
        };
        let page = match (before, after) {
            (Some(_), Some(_)) => {
                return Err(reject(
                    Some(id),
                    ErrorCode::BadRequest,
                    "before and after exclude each other",
                ));
            }
            (None, Some(a)) => Page::After(a),
            (b, None) => Page::Before(b),
        };
        Ok(Request::History { room, page, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(valid_room("a.b:c-d_e9"));
        assert!(valid_room(&"x".repeat(64)));
        assert!(!valid_room(&"x".repeat(65)));
        assert!(!valid_room("é"));
        assert!(!valid_room(""));
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [1001, 1002, 1007, 1008, 1009, 4000, 4008] {
            assert_eq!(CloseCode::from_code(code).map(CloseCode::code), Some(code));
        }
        assert_eq!(CloseCode::Idle.reason(), "idle");
        assert_eq!(CloseCode::from_code(1000), None);
    }

    #[test]
    fn subprotocols() {
        assert_eq!(
            Codec::from_subprotocol("nebula.v1.proto"),
            Some(Codec::Proto)
        );
        assert_eq!(
            Codec::from_subprotocol(" nebula.v1.json"),
            Some(Codec::Json)
        );
        assert_eq!(Codec::from_subprotocol("chat"), None);
    }

    #[test]
    fn frames_of_the_wrong_kind_are_bad_requests() {
        let e = parse(Codec::Json, b"\x08\x01", false).unwrap_err();
        assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest));
        let e = parse(Codec::Proto, br#"{"id":1,"type":"ping"}"#, true).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
