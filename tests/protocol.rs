//! The v1 contract, row by row, over real sockets against an in-process server.

mod common;

use anyhow::Result;
use common::*;
use serde_json::json;

#[tokio::test]
async fn login_me_logout_and_cookie_rules() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let r = http(
        s.addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        r#"{"name":"  alice "}"#,
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"]["name"], "alice");
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("nebula_session="));
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"));
    let cookie = set.split(';').next().unwrap().to_string();
    let id = r.json()["user"]["id"].clone();

    let me = http(s.addr, "GET", "/api/me", &[("Cookie", &cookie)], "").await?;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["user"]["id"], id);

    // A login that carries a valid session keeps the user id (a rename); form bodies work.
    let r = http(
        s.addr,
        "POST",
        "/api/login",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "name=al%20ice",
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"]["id"], id);
    assert_eq!(r.json()["user"]["name"], "al ice");

    for bad in [
        r#"{"name":""}"#,
        r#"{"name":"   "}"#,
        r#"{"name":"a\u0007b"}"#,
        r#"{"nom":"x"}"#,
        &format!(r#"{{"name":"{}"}}"#, "x".repeat(33)),
    ] {
        let r = http(
            s.addr,
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            bad,
        )
        .await?;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"].is_string());
    }

    let out = http(s.addr, "POST", "/api/logout", &[("Cookie", &cookie)], "").await?;
    assert_eq!(out.status, 200);
    let cleared = out.header("set-cookie").unwrap();
    assert!(cleared.starts_with("nebula_session=;") && cleared.contains("Max-Age=0"));

    assert_eq!(http(s.addr, "GET", "/api/me", &[], "").await?.status, 401);
    let tampered = format!("{}x", cookie);
    assert_eq!(
        http(s.addr, "GET", "/api/me", &[("Cookie", &tampered)], "")
            .await?
            .status,
        401
    );
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn upgrade_needs_a_session_and_a_good_origin() -> Result<()> {
    let mut s =
        TestServer::start(|c| c.allowed_origin = vec!["http://allowed.example".into()]).await;
    let cookie = login(s.addr, "bob").await?;
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("unexpected {other}"),
    };
    assert_eq!(
        status(ws_connect(s.addr, None, None).await.unwrap_err()),
        401
    );
    assert_eq!(
        status(
            ws_connect(s.addr, Some("nebula_session=v1.x.y.z"), None)
                .await
                .unwrap_err()
        ),
        401
    );
    let (_, tag) = cookie.rsplit_once('.').unwrap();
    let forged = cookie.replace(tag, "AAAA");
    assert_eq!(
        status(ws_connect(s.addr, Some(&forged), None).await.unwrap_err()),
        401
    );
    assert_eq!(
        status(
            ws_connect(s.addr, Some(&cookie), Some("http://evil.example"))
                .await
                .unwrap_err()
        ),
        403
    );
    let own = format!("http://{}", s.addr);
    assert!(ws_connect(s.addr, Some(&cookie), Some(&own)).await.is_ok());
    assert!(
        ws_connect(s.addr, Some(&cookie), Some("http://allowed.example"))
            .await
            .is_ok()
    );
    // A cookie signed by another server's key is invalid here.
    let mut other = TestServer::start(|_| {}).await;
    let foreign = login(other.addr, "bob").await?;
    assert_eq!(
        status(ws_connect(s.addr, Some(&foreign), None).await.unwrap_err()),
        401
    );
    other.shutdown().await;
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn expired_sessions_are_refused() -> Result<()> {
    let mut s = TestServer::start(|c| c.session_ttl = 1).await;
    let cookie = login(s.addr, "carol").await?;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        http(s.addr, "GET", "/api/me", &[("Cookie", &cookie)], "")
            .await?
            .status,
        401
    );
    assert!(ws_connect(s.addr, Some(&cookie), None).await.is_err());
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_session_that_expires_while_connected_is_closed_with_1008() -> Result<()> {
    // Issue times are whole seconds: with a 2 s lifetime, a fresh cookie is valid 1 to 2 s more.
    let mut s = TestServer::start(|c| c.session_ttl = 2).await;
    let cookie = login(s.addr, "dave").await?;
    let mut c = Client::connect(s.addr, &cookie).await?;
    let started = std::time::Instant::now();
    assert_eq!(c.expect_close().await?, 1008);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn health_ready_metrics_and_page() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    assert_eq!(http(s.addr, "GET", "/healthz", &[], "").await?.status, 200);
    assert_eq!(http(s.addr, "GET", "/readyz", &[], "").await?.status, 200);
    let m = http(s.addr, "GET", "/metrics", &[], "").await?;
    assert_eq!(m.status, 200);
    // OpenMetrics text, said so in its content type.
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{:?}",
        m.header("content-type")
    );
    assert!(m.body.ends_with("# EOF\n"));
    for line in m
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("nebula_") || line.starts_with("process_"),
            "{line}"
        );
    }
    assert!(m.body.contains("nebula_connections "));
    assert!(m.body.contains("nebula_delivery_latency_seconds_bucket"));
    assert!(m.body.contains("nebula_ack_latency_seconds_bucket"));
    assert!(m.body.contains("process_resident_memory_bytes "));
    assert!(m.body.contains("process_open_fds "));
    let page = http(s.addr, "GET", "/", &[], "").await?;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(
        http(s.addr, "GET", "/static/app.js", &[], "").await?.status,
        200
    );
    let dash = http(s.addr, "GET", "/dashboard", &[], "").await?;
    assert!(dash.body.contains("hx-get=\"/dashboard/stats\""));
    let stats = http(s.addr, "GET", "/dashboard/stats", &[], "").await?;
    assert!(
        stats.body.starts_with("<table>") && stats.body.contains("connections"),
        "{}",
        stats.body
    );
    assert_eq!(http(s.addr, "GET", "/nope", &[], "").await?.status, 404);
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn welcome_join_publish_leave() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut a = Client::login(s.addr, "alice").await?;
    let mut b = Client::login(s.addr, "bob").await?;
    let ja = a.join("lobby").await?;
    assert_eq!(ja["offset"], 0);
    assert_eq!(ja["messages"], json!([]));
    assert_eq!(ja["members"], json!([a.user]));
    assert!(ja.get("recovered").is_none());
    let jb = b.join("lobby").await?;
    assert_eq!(jb["members"].as_array().unwrap().len(), 2);
    let joined = a.next_of("member_joined").await?;
    assert_eq!(joined["user"], b.user);
    assert_eq!(joined["room"], "lobby");

    let ack = a.publish("lobby", "hello").await?;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["offset"], 1);
    for c in [&mut a, &mut b] {
        let m = c.next_of("message").await?;
        assert_eq!(m["body"], "hello");
        assert_eq!(m["offset"], 1);
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["user"]["name"], "alice");
        assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let pong = a.request(json!({"type": "ping"})).await?;
    assert_eq!(pong, json!({"id": pong["id"], "type": "pong"}));

    let left = b.request(json!({"type": "leave", "room": "lobby"})).await?;
    assert_eq!(left["type"], "left");
    assert_eq!(left["room"], "lobby");
    assert_eq!(a.next_of("member_left").await?["user"], b.user);
    let err = b.publish("lobby", "x").await?;
    assert_eq!(err["code"], "not_joined");

    // A join of a room with messages returns them; a later member gets the latest 50.
    for i in 0..60 {
        a.publish("lobby", &format!("m{i}")).await?;
    }
    let j = b.join("lobby").await?;
    assert_eq!(j["offset"], 61);
    let msgs = j["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 50);
    assert_eq!(msgs[0]["offset"], 12);
    assert_eq!(msgs[49]["offset"], 61);
    assert!(msgs[0].get("type").is_none());
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn presence_counts_users_once_across_their_connections() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let cookie = login(s.addr, "alice").await?;
    let mut a1 = Client::connect(s.addr, &cookie).await?;
    let mut a2 = Client::connect(s.addr, &cookie).await?;
    let mut b = Client::login(s.addr, "bob").await?;
    b.join("room").await?;
    a1.join("room").await?;
    assert_eq!(b.next_of("member_joined").await?["user"]["name"], "alice");
    a2.join("room").await?;
    let p = b
        .request(json!({"type": "presence", "room": "room"}))
        .await?;
    assert_eq!(p["type"], "presence");
    assert_eq!(p["members"].as_array().unwrap().len(), 2);
    // The second connection of alice leaving is not a member_left; the last one is.
    drop(a2);
    let p = b
        .request(json!({"type": "presence", "room": "room"}))
        .await?;
    assert_eq!(p["members"].as_array().unwrap().len(), 2);
    a1.request(json!({"type": "leave", "room": "room"})).await?;
    let left = b.next_of("member_left").await?;
    assert_eq!(left["user"]["name"], "alice");
    assert!(
        b.backlog.iter().all(|v| v["type"] != "member_joined"),
        "no second member_joined for alice"
    );
    let p = b
        .request(json!({"type": "presence", "room": "room"}))
        .await?;
    assert_eq!(p["members"], json!([b.user]));
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_200_arrives_in_order_once() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut a = Client::login(s.addr, "alice").await?;
    let mut b = Client::login(s.addr, "bob").await?;
    a.join("burst").await?;
    b.join("burst").await?;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            a.send(json!({"type": "publish", "room": "burst", "body": format!("{i}")}))
                .await?,
        );
    }
    for c in [&mut a, &mut b] {
        let mut expected = 1;
        let mut acks = 0;
        while expected <= 200 || (c.user["name"] == "alice" && acks < 200) {
            let v = c.next_push().await?;
            match v["type"].as_str() {
                Some("message") => {
                    assert_eq!(v["offset"], expected);
                    assert_eq!(v["body"], format!("{}", expected - 1));
                    expected += 1;
                }
                Some("ack") => acks += 1,
                _ => {}
            }
        }
    }
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn every_error_code() -> Result<()> {
    let mut s = TestServer::start(|c| c.publish_rate = 5).await;
    let mut a = Client::login(s.addr, "alice").await?;
    a.send_raw("not json").await?;
    let e = a.next_frame().await?;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "bad_request");
    assert!(e.get("id").is_none());
    a.send_raw(r#"{"id":9,"type":"fly"}"#).await?;
    assert_eq!(
        a.next_frame().await?,
        json!({"type":"error","id":9,"code":"bad_request","message":"unknown request type"})
    );
    let code = |v: serde_json::Value| v["code"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        code(a.request(json!({"type":"join","room":"bad room"})).await?),
        "invalid_room"
    );
    assert_eq!(
        code(
            a.request(json!({"type":"join","room":"x".repeat(65)}))
                .await?
        ),
        "invalid_room"
    );
    assert_eq!(code(a.publish("nowhere", "x").await?), "not_joined");
    assert_eq!(
        code(
            a.request(json!({"type":"history","room":"nowhere"}))
                .await?
        ),
        "not_joined"
    );
    assert_eq!(
        code(
            a.request(json!({"type":"presence","room":"nowhere"}))
                .await?
        ),
        "not_joined"
    );
    a.join("r").await?;
    assert_eq!(code(a.publish("r", &"x".repeat(4097)).await?), "too_large");
    assert_eq!(code(a.publish("r", "").await?), "bad_request");
    assert_eq!(
        code(
            a.request(json!({"type":"publish","room":"r","body":5}))
                .await?
        ),
        "bad_request"
    );
    // 4096 bytes of multi-byte UTF-8 is fine.
    assert_eq!(a.publish("r", &"é".repeat(2048)).await?["type"], "ack");
    for i in 0..99 {
        a.join(&format!("room{i}")).await?;
    }
    assert_eq!(
        code(
            a.request(json!({"type":"join","room":"one-too-many"}))
                .await?
        ),
        "too_many_rooms"
    );
    // Rejoining a room already joined is not a new room.
    assert_eq!(a.join("room5").await?["type"], "joined");
    // Rate: 5 per second with a burst of 5. Twenty publishes sent at once: at most the burst
    // plus what refills while they are answered gets through; the rest is `rate_limited`.
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            a.send(json!({"type":"publish","room":"r","body":"spam"}))
                .await?,
        );
    }
    let mut passed = 0;
    for id in ids {
        let r = a.reply(id).await?;
        match r["type"].as_str() {
            Some("ack") => passed += 1,
            _ => assert_eq!(r["code"], "rate_limited", "{r}"),
        }
    }
    let allowed = 5 + (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        passed >= 1 && passed <= allowed,
        "{passed} of 20 passed; at most {allowed} may"
    );
    assert!(passed < 20, "nothing was rate limited");
    // The connection is still fine.
    assert_eq!(a.request(json!({"type":"ping"})).await?["type"], "pong");
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_frame_over_64k_closes_with_1009_and_others_carry_on() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut a = Client::login(s.addr, "alice").await?;
    let mut b = Client::login(s.addr, "bob").await?;
    b.join("r").await?;
    a.send_raw(&"x".repeat(65 * 1024)).await?;
    assert_eq!(a.expect_close().await?, 1009);
    assert_eq!(b.publish("r", "still here").await?["type"], "ack");
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn connect_rate_limit_gives_429() -> Result<()> {
    let mut s = TestServer::start(|c| c.connect_rate = 3).await;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            http(
                s.addr,
                "POST",
                "/api/login",
                &[("Content-Type", "application/json")],
                r#"{"name":"x"}"#,
            )
            .await?
            .status,
        );
    }
    // A burst of 3 passes; past it, only what refills (3 per second) while the test runs.
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    let allowed = 3 + (started.elapsed().as_secs_f64() * 3.0).floor() as usize;
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert!(passed <= allowed, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // Health checks are not limited.
    assert_eq!(http(s.addr, "GET", "/healthz", &[], "").await?.status, 200);
    s.shutdown().await;
    Ok(())
}
