//! The HTTP rules of v1.1: Origin on login and logout, a body deadline, logout that revokes,
//! security headers on every answer, private files, long secrets, no secret printed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn login_and_logout_follow_the_origin_rule() -> Result<()> {
    let mut s = TestServer::start(|c| c.allowed_origin = vec!["http://ok.example".into()]).await;
    let json = ("Content-Type", "application/json");
    let evil = ("Origin", "http://evil.example");
    let r = http(
        s.addr,
        "POST",
        "/api/login",
        &[json, evil],
        r#"{"name":"eve"}"#,
    )
    .await?;
    ensure!(
        r.status == 403 && r.json()["code"] == "forbidden",
        "{} {}",
        r.status,
        r.body
    );
    let own = format!("http://{}", s.addr);
    for origin in [own.as_str(), "http://ok.example"] {
        let r = http(
            s.addr,
            "POST",
            "/api/login",
            &[json, ("Origin", origin)],
            r#"{"name":"ann"}"#,
        )
        .await?;
        ensure!(r.status == 200, "{origin}: {}", r.status);
    }
    // A foreign page cannot log a visitor out (or replace the cookie).
    let cookie = login(s.addr, "ann").await?;
    let r = http(
        s.addr,
        "POST",
        "/api/logout",
        &[("Cookie", &cookie), evil],
        "",
    )
    .await?;
    ensure!(r.status == 403 && r.header("set-cookie").is_none());
    ensure!(
        http(s.addr, "GET", "/api/me", &[("Cookie", &cookie)], "")
            .await?
            .status
            == 200
    );
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_logged_out_session_is_invalid_afterwards() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let cookie = login(s.addr, "leaver").await?;
    ensure!(
        http(s.addr, "GET", "/api/me", &[("Cookie", &cookie)], "")
            .await?
            .status
            == 200
    );
    ensure!(
        http(s.addr, "POST", "/api/logout", &[("Cookie", &cookie)], "")
            .await?
            .status
            == 200
    );
    let me = http(s.addr, "GET", "/api/me", &[("Cookie", &cookie)], "").await?;
    ensure!(
        me.status == 401 && me.json()["code"] == "unauthorized",
        "{}",
        me.body
    );
    match ws_connect(s.addr, Some(&cookie), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => ensure!(r.status() == 401),
        other => anyhow::bail!("the old cookie upgraded: {:?}", other.map(|_| ())),
    }
    // Also after a restart (the revocation is stored).
    let dir = s.dir.path().to_path_buf();
    let server = s.server.take().unwrap();
    server.shutdown().await?;
    let mut config = nebula::Config::for_data_dir(&dir);
    config.connect_rate = 0;
    let server = nebula::Nebula::start(config).await?;
    let me = http(
        server.local_addr(),
        "GET",
        "/api/me",
        &[("Cookie", &cookie)],
        "",
    )
    .await?;
    ensure!(me.status == 401, "after a restart: {}", me.status);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let cookie = login(s.addr, "h").await?;
    for path in [
        "/",
        "/static/app.js",
        "/dashboard",
        "/dashboard/stats",
        "/api/me",
        "/metrics",
        "/healthz",
        "/nope",
    ] {
        let r = http(s.addr, "GET", path, &[("Cookie", &cookie)], "").await?;
        let csp = r.header("content-security-policy").unwrap_or("");
        ensure!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp:?}"
        );
        ensure!(
            r.header("x-content-type-options") == Some("nosniff"),
            "{path}"
        );
        ensure!(r.header("referrer-policy") == Some("no-referrer"), "{path}");
        ensure!(r.header("x-frame-options") == Some("DENY"), "{path}");
    }
    let missing = http(s.addr, "GET", "/nope", &[], "").await?;
    ensure!(
        missing.status == 404 && missing.json()["code"] == "not_found",
        "{}",
        missing.body
    );
    s.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_login_body_that_does_not_arrive_within_10_s_closes_the_connection() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await?;
    let head = format!(
        "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{",
        s.addr
    );
    tcp.write_all(head.as_bytes()).await?;
    let t0 = Instant::now();
    let mut got = Vec::new();
    // Trickle one byte every 2 s: the deadline covers the whole body, not each byte.
    let answer = tokio::time::timeout(Duration::from_secs(16), async {
        loop {
            let mut buf = [0u8; 1024];
            tokio::select! {
                n = tcp.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    let _ = tcp.write_all(b" ").await;
                }
            }
        }
    })
    .await;
    ensure!(answer.is_ok(), "the connection stayed open for 16 s");
    let elapsed = t0.elapsed();
    ensure!(
        (9..13).contains(&elapsed.as_secs()),
        "closed after {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&got);
    ensure!(text.starts_with("HTTP/1.1 408"), "{text}");
    s.shutdown().await;
    Ok(())
}

#[test]
fn files_are_private_and_short_secrets_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?; // With the default umask: the server makes it 0700.
    let p = NebulaProcess::start(&data, &[])?;
    drop(p);
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    ensure!(mode(&data)? == 0o700, "data dir {:o}", mode(&data)?);
    for f in [
        "nebula.db",
        "nebula.db-wal",
        "nebula.db-shm",
        "secret",
        "node-id",
        "lock",
    ] {
        let path = data.join(f);
        if path.exists() {
            ensure!(mode(&path)? == 0o600, "{f}: {:o}", mode(&path)?);
        } else {
            ensure!(f.starts_with("nebula.db-"), "{f} is missing");
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nebula"))
        .args(["--listen", "127.0.0.1:0", "--secret", "too-short"])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("at least 32 bytes"), "{stderr}");
    ensure!(
        !stderr.contains("too-short"),
        "the secret was printed: {stderr}"
    );
    Ok(())
}

#[test]
fn no_secret_is_ever_printed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = "a-cookie-key-that-must-never-be-printed-anywhere";
    // A Redis that does not answer, with a password in its URL: the start fails and says why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nebula"))
        .args(["--listen", "127.0.0.1:0", "--secret", secret])
        .args(["--redis", "redis://app:hunter2-password@127.0.0.1:1/"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "debug")
        .output()?;
    ensure!(!out.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !printed.contains(secret),
        "the cookie key was printed:\n{printed}"
    );
    ensure!(
        !printed.contains("hunter2"),
        "the Redis password was printed:\n{printed}"
    );
    ensure!(
        printed.contains("redis"),
        "the error says what failed:\n{printed}"
    );
    Ok(())
}
