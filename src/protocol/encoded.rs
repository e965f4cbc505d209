//! Encoded frames: one WebSocket data frame as shared bytes ([`Frame`]), and a message encoded
//! at most once per codec ([`Encoded`]), whatever the number of connections it goes to.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::{Codec, Message, json, proto};

/// One encoded WebSocket data frame. Cloning it clones a reference count, not the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON text frame.
    Text(Utf8Bytes),
    /// A Protobuf binary frame.
    Binary(Bytes),
}

impl Frame {
    pub(super) fn json(buf: Vec<u8>) -> Frame {
        Frame::Text(Utf8Bytes::try_from(Bytes::from(buf)).expect("serde_json writes UTF-8"))
    }

    pub(super) fn proto(buf: Vec<u8>) -> Frame {
        Frame::Binary(Bytes::from(buf))
    }

    /// Its payload.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        }
    }

    /// Its payload size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The WebSocket message that carries it.
    pub fn into_ws(self) -> WsMessage {
        match self {
            Frame::Text(t) => WsMessage::Text(t),
            Frame::Binary(b) => WsMessage::Binary(b),
        }
    }
}

impl From<&'static str> for Frame {
    fn from(s: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(s))
    }
}

/// A stored message with its `message` push, encoded on first use per codec and then shared:
/// a broadcast to a room with JSON and Protobuf members encodes the message at most twice.
#[derive(Debug)]
pub struct Encoded {
    message: Message,
    pushes: [OnceLock<Frame>; 2],
    /// Where the embedded `Message` starts in the Protobuf push.
    proto_start: OnceLock<usize>,
}

impl Encoded {
    pub fn new(message: Message) -> Arc<Encoded> {
        Arc::new(Encoded {
            message,
            pushes: [OnceLock::new(), OnceLock::new()],
            proto_start: OnceLock::new(),
        })
    }

    pub fn message(&self) -> &Message {
        &self.message
    }

    pub fn offset(&self) -> u64 {
        self.message.offset
    }

    /// The `message` push in `codec`.
    pub fn push(&self, codec: Codec) -> Frame {
        self.pushes[codec.index()]
            .get_or_init(|| match codec {
                Codec::Json => Frame::json(json::message_push(&self.message)),
                Codec::Proto => {
                    let (buf, start) = proto::message_push(&self.message);
                    let _ = self.proto_start.set(start);
                    Frame::proto(buf)
                }
            })
            .clone()
    }

    /// The push in `codec` and where its list element (in `joined`, `history`) starts: a JSON
    /// list holds `{` followed by the push's bytes from there (the object without `"type"`), a
    /// Protobuf list the push's bytes from there (the embedded `Message`).
    pub(super) fn list_element(&self, codec: Codec) -> (Frame, usize) {
        let push = self.push(codec);
        let start = match codec {
            Codec::Json => json::PUSH_PREFIX.len(),
            Codec::Proto => *self.proto_start.get().expect("set with the proto push"),
        };
        (push, start)
    }
}
