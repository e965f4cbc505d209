//! Every frame the server sends, in the connection's codec. Replies that carry lists
//! (`joined`, `history`, `presence`) stop before [`MAX_REPLY_BYTES`] and say how many messages
//! they hold, so the caller can set `more` (v1.1 "paged replies").

use std::sync::Arc;

use super::{
    Codec, Encoded, ErrorCode, Frame, MAX_LISTED_MEMBERS, MAX_REPLY_BYTES, MemberEvent, json, proto,
};
use crate::auth::User;

/// Room for the fields that follow the message list (`recovered`, `more`, closing brackets).
const TAIL_RESERVE: usize = 64;

/// The head of a `joined` reply.
#[derive(Debug, Clone, Copy)]
pub struct JoinedReply<'a> {
    pub id: u64,
    pub room: &'a str,
    /// The room's latest offset.
    pub offset: u64,
    /// Present only for a join with `since`.
    pub recovered: Option<bool>,
}

impl Codec {
    fn frame(self, buf: Vec<u8>) -> Frame {
        match self {
            Codec::Json => Frame::json(buf),
            Codec::Proto => Frame::proto(buf),
        }
    }

    pub fn welcome(self, user: &User, node: &str) -> Frame {
        self.frame(match self {
            Codec::Json => json::welcome(user, node),
            Codec::Proto => proto::welcome(user, node),
        })
    }

    /// An error reply (`id` is `None` when the request's id could not be read).
    pub fn error(self, id: Option<u64>, code: ErrorCode, message: &str) -> Frame {
        self.frame(match self {
            Codec::Json => json::error(id, code, message),
            Codec::Proto => proto::error(id, code, message),
        })
    }

    pub fn pong(self, id: u64) -> Frame {
        self.frame(match self {
            Codec::Json => json::simple(id, "pong", None),
            Codec::Proto => proto::pong(id),
        })
    }

    pub fn left(self, id: u64, room: &str) -> Frame {
        self.frame(match self {
            Codec::Json => json::simple(id, "left", Some(room)),
            Codec::Proto => proto::left(id, room),
        })
    }

    pub fn ack(self, id: u64, room: &str, offset: u64) -> Frame {
        self.frame(match self {
            Codec::Json => json::ack(id, room, offset),
            Codec::Proto => proto::ack(id, room, offset),
        })
    }

    /// A `member_joined` or `member_left` push.
    pub fn member_event(self, kind: MemberEvent, room: &str, user: &User) -> Frame {
        self.frame(match self {
            Codec::Json => json::member_event(kind, room, user),
            Codec::Proto => proto::member_event(kind, room, user),
        })
    }

    /// A `presence` reply (at most [`MAX_LISTED_MEMBERS`] members).
    pub fn presence<'a>(
        self,
        id: u64,
        room: &str,
        members: impl Iterator<Item = &'a User>,
    ) -> Frame {
        let members = members.take(MAX_LISTED_MEMBERS);
        self.frame(match self {
            Codec::Json => {
                let mut buf = Vec::with_capacity(256);
                json::head(&mut buf, id, "presence", room);
                json::members(&mut buf, members);
                buf.push(b'}');
                buf
            }
            Codec::Proto => {
                let mut body = Vec::with_capacity(256);
                proto::put_string(1, room, &mut body);
                for user in members {
                    proto::put_user(2, user, &mut body);
                }
                proto::wrap(id, proto::FRAME_PRESENCE, &body)
            }
        })
    }

    /// A `joined` reply holding as many of `messages` (oldest first) as fit; returns it and
    /// how many it holds. `more` is set when it holds fewer than given or `more_beyond` says
    /// the log has further messages the reply should have carried.
    pub fn joined<'a>(
        self,
        head: &JoinedReply<'_>,
        members: impl Iterator<Item = &'a User>,
        messages: &[Arc<Encoded>],
        more_beyond: bool,
    ) -> (Frame, usize) {
        let members = members.take(MAX_LISTED_MEMBERS);
        match self {
            Codec::Json => {
                let mut buf = Vec::with_capacity(512);
                json::head(&mut buf, head.id, "joined", head.room);
                buf.extend_from_slice(b",\"offset\":");
                json::push_json(&mut buf, &head.offset);
                json::members(&mut buf, members);
                buf.extend_from_slice(b",\"messages\":");
                let held = json_messages(&mut buf, messages);
                if let Some(recovered) = head.recovered {
                    buf.extend_from_slice(b",\"recovered\":");
                    json::push_json(&mut buf, &recovered);
                }
                let more = more_beyond || held < messages.len();
                buf.extend_from_slice(b",\"more\":");
                json::push_json(&mut buf, &more);
                buf.push(b'}');
                (Frame::json(buf), held)
            }
            Codec::Proto => {
                let mut body = Vec::with_capacity(512);
                proto::put_string(1, head.room, &mut body);
                proto::put_u64(2, head.offset, &mut body);
                for user in members {
                    proto::put_user(3, user, &mut body);
                }
                let held = proto_messages(4, &mut body, messages);
                if let Some(recovered) = head.recovered {
                    proto::put_bool(5, recovered, true, &mut body);
                }
                proto::put_bool(6, more_beyond || held < messages.len(), false, &mut body);
                (
                    Frame::proto(proto::wrap(head.id, proto::FRAME_JOINED, &body)),
                    held,
                )
            }
        }
    }

    /// A `history` reply holding as many of `messages` (oldest first) as fit; returns it and
    /// how many it holds (`more` as for [`Codec::joined`]).
    pub fn history(
        self,
        id: u64,
        room: &str,
        messages: &[Arc<Encoded>],
        more_beyond: bool,
    ) -> (Frame, usize) {
        match self {
            Codec::Json => {
                let mut buf = Vec::with_capacity(512);
                json::head(&mut buf, id, "history", room);
                buf.extend_from_slice(b",\"messages\":");
                let held = json_messages(&mut buf, messages);
                let more = more_beyond || held < messages.len();
                buf.extend_from_slice(b",\"more\":");
                json::push_json(&mut buf, &more);
                buf.push(b'}');
                (Frame::json(buf), held)
            }
            Codec::Proto => {
                let mut body = Vec::with_capacity(512);
                proto::put_string(1, room, &mut body);
                let held = proto_messages(2, &mut body, messages);
                proto::put_bool(3, more_beyond || held < messages.len(), false, &mut body);
                (
                    Frame::proto(proto::wrap(id, proto::FRAME_HISTORY, &body)),
                    held,
                )
            }
        }
    }
}

/// Writes a JSON array of message objects, stopping before the reply would pass
/// [`MAX_REPLY_BYTES`]; returns how many it wrote. The first message always fits (a message is
/// at most ~25 KiB encoded).
fn json_messages(buf: &mut Vec<u8>, messages: &[Arc<Encoded>]) -> usize {
    buf.push(b'[');
    let mut held = 0;
    for m in messages {
        let (push, start) = m.list_element(Codec::Json);
        let rest = &push.as_bytes()[start..];
        if held > 0 && buf.len() + rest.len() + 2 + TAIL_RESERVE > MAX_REPLY_BYTES {
            break;
        }
        if held > 0 {
            buf.push(b',');
        }
        buf.push(b'{');
        buf.extend_from_slice(rest);
        held += 1;
    }
    buf.push(b']');
    held
}

/// Writes repeated `Message` field `tag`, stopping as [`json_messages`] does.
fn proto_messages(tag: u32, buf: &mut Vec<u8>, messages: &[Arc<Encoded>]) -> usize {
    let mut held = 0;
    for m in messages {
        let (push, start) = m.list_element(Codec::Proto);
        let element = &push.as_bytes()[start..];
        if held > 0
            && buf.len() + proto::field_len(tag, element.len()) + TAIL_RESERVE > MAX_REPLY_BYTES
        {
            break;
        }
        proto::put_raw(tag, element, buf);
        held += 1;
    }
    held
}

/// A frame encoded at most once per codec, on first use: a member event broadcast to a room
/// with JSON and Protobuf members.
pub struct PerCodec<F> {
    make: F,
    frames: [Option<Frame>; 2],
}

impl<F: Fn(Codec) -> Frame> PerCodec<F> {
    pub fn new(make: F) -> PerCodec<F> {
        PerCodec {
            make,
            frames: [None, None],
        }
    }

    pub fn get(&mut self, codec: Codec) -> Frame {
        self.frames[codec.index()]
            .get_or_insert_with(|| (self.make)(codec))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde_json::Value;

    use super::*;
    use crate::protocol::Message;
    use crate::protocol::proto::pb;

    fn message(offset: u64, body: &str) -> Arc<Encoded> {
        Encoded::new(Message {
            room: "lobby".into(),
            offset,
            user: User {
                id: "u".into(),
                name: "<b>".into(),
            },
            body: body.into(),
            ts: 5,
        })
    }

    #[test]
    fn json_and_proto_replies_carry_the_same_messages() {
        let msgs = [message(6, "hi \"there\""), message(7, "ok")];
        let head = JoinedReply {
            id: 1,
            room: "lobby",
            offset: 7,
            recovered: Some(true),
        };
        let user = msgs[0].message().user.clone();
        let (j, held) = Codec::Json.joined(&head, [&user].into_iter(), &msgs, false);
        assert_eq!(held, 2);
        let j: Value = serde_json::from_slice(j.as_bytes()).unwrap();
        assert_eq!(j["messages"][0]["offset"], 6);
        assert_eq!(j["messages"][0].get("type"), None);
        assert_eq!(j["messages"][0]["body"], "hi \"there\"");
        assert_eq!(
            (j["recovered"].clone(), j["more"].clone()),
            (true.into(), false.into())
        );

        let (p, _) = Codec::Proto.joined(&head, [&user].into_iter(), &msgs, true);
        let p = pb::ServerFrame::decode(p.as_bytes()).unwrap();
        assert_eq!(p.id, 1);
        let Some(pb::server_frame::Type::Joined(p)) = p.r#type else {
            panic!("not joined")
        };
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[1].body, "ok");
        assert_eq!((p.recovered, p.more, p.offset), (Some(true), true, 7));
        assert_eq!(p.members[0].name, "<b>");
    }

    #[test]
    fn a_reply_stops_before_a_mebibyte_and_says_more() {
        // 4,096 control characters escape to 24 KiB each in JSON.
        let body: String = "\u{1}".repeat(4096);
        let msgs: Vec<_> = (1..=50).map(|o| message(o, &body)).collect();
        for codec in Codec::ALL {
            let (frame, held) = codec.history(9, "lobby", &msgs, false);
            assert!(frame.len() <= MAX_REPLY_BYTES, "{codec:?}: {}", frame.len());
            match codec {
                Codec::Json => {
                    assert!(held < 50);
                    let v: Value = serde_json::from_slice(frame.as_bytes()).unwrap();
                    assert_eq!(v["messages"].as_array().unwrap().len(), held);
                    assert_eq!(v["more"], true);
                }
                Codec::Proto => assert_eq!(held, 50, "4 KiB bodies stay 4 KiB in Protobuf"),
            }
        }
    }
}
