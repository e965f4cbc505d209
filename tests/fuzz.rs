//! Property tests (proptest, a bounded number of cases so CI runs them): the request parser of
//! both codecs never panics and keeps the request id in its rejections; random frames from a
//! hostile peer never hurt the server or anyone else on it.

mod common;

use std::time::Duration;

use common::*;
use nebula::protocol::{Codec, parse};
use proptest::prelude::*;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::from),
        Just(Value::from("lobby")),
        Just(Value::from("x".repeat(5000))),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("join"),
        Just("leave"),
        Just("publish"),
        Just("history"),
        Just("presence"),
        Just("ping"),
        Just("fly"),
    ];
    (
        json_value(),
        kind,
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        json_value(),
    )
        .prop_map(|(id, kind, room, body, since, after, key)| {
            json!({"id": id, "type": kind, "room": room, "body": body, "since": since,
                   "after": after, "before": since, "limit": after, "key": key})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn the_parser_never_panics_and_keeps_the_id(req in request(), bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = req.to_string();
        let id = req["id"].as_u64().filter(|&i| i > 0);
        match parse(Codec::Json, text.as_bytes(), true) {
            Ok((got, _)) => prop_assert_eq!(Some(got), id),
            Err(r) => prop_assert_eq!(r.id, id, "{}", text),
        }
        // Arbitrary bytes, as text and as Protobuf: an answer, never a panic.
        let _ = parse(Codec::Json, &bytes, true);
        let _ = parse(Codec::Proto, &bytes, false);
        let _ = parse(Codec::Proto, text.as_bytes(), false);
    }
}

/// One random frame: any first byte (FIN, reserved bits, opcode), any payload.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let valid = request().prop_map(|r| RawWs::frame(0x81, r.to_string().as_bytes()));
    let random = (any::<u8>(), prop::collection::vec(any::<u8>(), 0..200))
        .prop_map(|(first, payload)| RawWs::frame(first, &payload));
    prop_oneof![3 => valid, 1 => random]
}

#[test]
fn random_frames_never_hurt_the_server_or_anyone_else() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut server, cookie, bystander) = runtime.block_on(async {
        let s = TestServer::start(|_| {}).await;
        let cookie = login(s.addr, "fuzzer").await.unwrap();
        let mut b = Client::login(s.addr, "bystander").await.unwrap();
        b.join("lobby").await.unwrap();
        (s, cookie, b)
    });
    let addr = server.addr;
    let bystander = tokio::sync::Mutex::new(bystander);
    let baseline = server.server.as_ref().unwrap().alive_tasks();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(frame(), 1..12), |frames| {
            runtime.block_on(async {
                let mut raw = RawWs::connect(addr, &cookie).await.unwrap();
                let bytes: Vec<u8> = frames.concat();
                let _ = raw.write(&bytes).await;
                // Read what comes back for a moment: replies, errors, or a close.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while raw.next_frame().await.is_ok() {}
                })
                .await;
                drop(raw);
                let mut b = bystander.lock().await;
                let ack = b.publish("lobby", "still fine").await.unwrap();
                assert_eq!(ack["type"], "ack", "the bystander was hurt: {ack}");
            });
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        eventually(
            Duration::from_secs(8),
            "tasks back to the baseline",
            || async { Ok(server.server.as_ref().unwrap().alive_tasks() <= baseline) },
        )
        .await
        .unwrap();
        drop(bystander);
        server.shutdown().await;
    });
}
