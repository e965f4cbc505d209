//! The frames the load generator sends and reads, in either codec. JSON is scanned for the
//! few numbers it needs (no full parse: the generator must stay cheaper than the server);
//! Protobuf is decoded with the types generated from `proto/nebula.proto`.

use std::net::SocketAddr;

use anyhow::Result;
use nebula::client::{HttpClient, parse_url, proto_request as proto};
use nebula::protocol::Codec;
use nebula::protocol::pb;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

/// What a frame from the server says, as far as the generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Joined {
        offset: u64,
    },
    /// A message push: its offset, and the scheduled send time and publisher carried in its body.
    Delivered {
        offset: u64,
        sent_us: Option<u64>,
        publisher: Option<u64>,
    },
    Ack {
        offset: u64,
    },
    Error,
    Other,
}

fn number_after(s: &str, pat: &str) -> Option<u64> {
    let i = s.find(pat)? + pat.len();
    let digits = s[i..].bytes().take_while(u8::is_ascii_digit).count();
    s[i..i + digits].parse().ok()
}

/// The body of a publish: the scheduled send time (µs) and the publisher, then padding.
pub fn body(scheduled_us: u64, publisher: usize, padding: &str) -> String {
    format!("t={scheduled_us};p={publisher};{padding}")
}

fn stamp(body: &str) -> (Option<u64>, Option<u64>) {
    (number_after(body, "t="), number_after(body, ";p="))
}

pub fn decode(codec: Codec, frame: &Message) -> Event {
    match (codec, frame) {
        (Codec::Json, Message::Text(t)) => {
            let t = t.as_str();
            if t.starts_with("{\"type\":\"message\"") {
                let (sent_us, publisher) = match t.find("\"body\":\"") {
                    Some(i) => stamp(&t[i + 8..]),
                    None => (None, None),
                };
                Event::Delivered {
                    offset: number_after(t, "\"offset\":").unwrap_or(0),
                    sent_us,
                    publisher,
                }
            } else if t.contains("\"type\":\"ack\"") {
                Event::Ack {
                    offset: number_after(t, "\"offset\":").unwrap_or(0),
                }
            } else if t.contains("\"type\":\"joined\"") {
                Event::Joined {
                    offset: number_after(t, "\"offset\":").unwrap_or(0),
                }
            } else if t.contains("\"type\":\"error\"") {
                Event::Error
            } else {
                Event::Other
            }
        }
        (Codec::Proto, Message::Binary(b)) => {
            use pb::server_frame::Type;
            match pb::ServerFrame::decode(&b[..]).ok().and_then(|f| f.r#type) {
                Some(Type::Message(m)) => {
                    let (sent_us, publisher) = stamp(&m.body);
                    Event::Delivered {
                        offset: m.offset,
                        sent_us,
                        publisher,
                    }
                }
                Some(Type::Ack(a)) => Event::Ack { offset: a.offset },
                Some(Type::Joined(j)) => Event::Joined { offset: j.offset },
                Some(Type::Error(_)) => Event::Error,
                _ => Event::Other,
            }
        }
        _ => Event::Other,
    }
}

pub fn join(codec: Codec, id: u64, room: &str) -> Message {
    match codec {
        Codec::Json => Message::Text(
            serde_json::json!({"id": id, "type": "join", "room": room})
                .to_string()
                .into(),
        ),
        Codec::Proto => proto(
            id,
            pb::client_frame::Type::Join(pb::Join {
                room: room.into(),
                since: None,
            }),
        ),
    }
}

pub fn publish(codec: Codec, id: u64, room: &str, body: String) -> Message {
    match codec {
        Codec::Json => Message::Text(
            serde_json::json!({"id": id, "type": "publish", "room": room, "body": body})
                .to_string()
                .into(),
        ),
        Codec::Proto => proto(
            id,
            pb::client_frame::Type::Publish(pb::Publish {
                room: room.into(),
                body,
                key: None,
            }),
        ),
    }
}

/// The addresses of the `--url`s.
pub fn targets(urls: &[String]) -> Result<Vec<SocketAddr>> {
    Ok(urls
        .iter()
        .map(|u| parse_url(u))
        .collect::<Result<_, _>>()?)
}

/// Logs in `names` at `target` over `parallel` keep-alive connections; the cookies, in order.
pub async fn login_all(
    target: SocketAddr,
    names: Vec<String>,
    parallel: usize,
) -> Result<Vec<String>> {
    let chunk = names.len().div_ceil(parallel).max(1);
    let mut tasks = Vec::new();
    for part in names.chunks(chunk).map(<[String]>::to_vec) {
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(target).await?;
            let mut cookies = Vec::new();
            for name in part {
                cookies.push(client.login(&name).await?);
            }
            anyhow::Ok(cookies)
        }));
    }
    let mut cookies = Vec::new();
    for t in tasks {
        cookies.extend(t.await??);
    }
    Ok(cookies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_proto_pushes_decode_alike() {
        let text = r#"{"type":"message","room":"r","offset":7,"user":{"id":"u","name":"n"},"body":"t=123;p=4;xx","ts":1}"#;
        let expected = Event::Delivered {
            offset: 7,
            sent_us: Some(123),
            publisher: Some(4),
        };
        assert_eq!(decode(Codec::Json, &Message::Text(text.into())), expected);
        let push = pb::ServerFrame {
            id: 0,
            r#type: Some(pb::server_frame::Type::Message(pb::Message {
                room: "r".into(),
                offset: 7,
                user: None,
                body: "t=123;p=4;xx".into(),
                ts: 1,
            })),
        };
        let frame = Message::Binary(push.encode_to_vec().into());
        assert_eq!(decode(Codec::Proto, &frame), expected);
    }
}
