//! Test helpers: a real server on port 0, an HTTP client and a WebSocket client (both from
//! `nebula::client`, the kit the load generator uses too).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use nebula::client::{self, Ws, WsOptions};
use nebula::protocol::Codec;
use nebula::{Config, Nebula, RunningServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How long a test waits for any one frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server started in-process on a fresh data dir.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server; `tune` adjusts the configuration (limits are off unless it turns them on).
    pub async fn start(tune: impl FnOnce(&mut Config)) -> TestServer {
        if let Ok(filter) = std::env::var("NEBULA_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_data_dir(dir.path());
        config.publish_rate = 0;
        config.connect_rate = 0;
        config.shards = 8;
        tune(&mut config);
        let server = Nebula::start(config).await.expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
            dir,
        }
    }

    pub async fn shutdown(&mut self) {
        self.server
            .take()
            .expect("running")
            .shutdown()
            .await
            .expect("clean shutdown");
    }
}

/// A finished HTTP response, its body as text.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request over a fresh connection, read to the end.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpResponse> {
    let r = tokio::time::timeout(
        WAIT,
        client::http(addr, method, path, headers, body.to_string()),
    )
    .await
    .context("http timeout")??;
    Ok(HttpResponse {
        status: r.status,
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: r.text(),
    })
}

/// Logs in as `name`; returns the `Cookie` header value to send.
pub async fn login(addr: SocketAddr, name: &str) -> Result<String> {
    let mut c = client::HttpClient::connect(addr).await?;
    Ok(c.login(name).await?)
}

/// A WebSocket client speaking the v1 JSON protocol.
pub struct Client {
    pub ws: Ws,
    pub user: Value,
    /// The id of the node that serves this connection (from `welcome`).
    pub node: String,
    next_id: u64,
    /// Pushes received while waiting for a reply.
    pub backlog: std::collections::VecDeque<Value>,
}

/// Opens a WebSocket to `addr` with `cookie` (and optional `origin`), asking for JSON.
pub async fn ws_connect(
    addr: SocketAddr,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let options = WsOptions {
        cookie,
        origin,
        codec: Some(Codec::Json),
        source: None,
    };
    client::ws_connect(addr, options)
        .await
        .map_err(|e| match e {
            client::ClientError::Ws(e) => e,
            other => WsError::Io(std::io::Error::other(other.to_string())),
        })
}

impl Client {
    /// Logs in as `name` and connects; waits for `welcome`.
    pub async fn login(addr: SocketAddr, name: &str) -> Result<Client> {
        let cookie = login(addr, name).await?;
        Client::connect(addr, &cookie).await
    }

    pub async fn connect(addr: SocketAddr, cookie: &str) -> Result<Client> {
        let ws = ws_connect(addr, Some(cookie), None).await?;
        let mut c = Client {
            ws,
            user: Value::Null,
            node: String::new(),
            next_id: 1,
            backlog: Default::default(),
        };
        let welcome = c.next_frame().await?;
        if welcome["type"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        c.user = welcome["user"].clone();
        c.node = welcome["node"].as_str().unwrap_or_default().to_string();
        Ok(c)
    }

    pub fn user_id(&self) -> String {
        self.user["id"].as_str().unwrap_or_default().to_string()
    }

    /// The next JSON frame from the server (not from the backlog).
    pub async fn next_frame(&mut self) -> Result<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("timed out waiting for a frame")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("ws error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// The next push: from the backlog first.
    pub async fn next_push(&mut self) -> Result<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Ok(v);
        }
        self.next_frame().await
    }

    /// The next push of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Result<Value> {
        loop {
            let v = self.next_push().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// Sends a raw text frame.
    pub async fn send_raw(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a request (an `id` is added) and returns its id without waiting.
    pub async fn send(&mut self, mut req: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.send_raw(&req.to_string()).await?;
        Ok(id)
    }

    /// Sends a request and waits for the reply with its id; pushes meanwhile go to the backlog.
    pub async fn request(&mut self, req: Value) -> Result<Value> {
        let id = self.send(req).await?;
        self.reply(id).await
    }

    /// Waits for the reply with `id`.
    pub async fn reply(&mut self, id: u64) -> Result<Value> {
        if let Some(i) = self.backlog.iter().position(|v| v["id"] == json!(id)) {
            return Ok(self.backlog.remove(i).expect("position is in range"));
        }
        loop {
            let v = self.next_frame().await?;
            if v["id"] == json!(id) {
                return Ok(v);
            }
            self.backlog.push_back(v);
        }
    }

    pub async fn join(&mut self, room: &str) -> Result<Value> {
        let r = self.request(json!({"type": "join", "room": room})).await?;
        if r["type"] != "joined" {
            bail!("join failed: {r}");
        }
        Ok(r)
    }

    pub async fn publish(&mut self, room: &str, body: &str) -> Result<Value> {
        self.request(json!({"type": "publish", "room": room, "body": body}))
            .await
    }

    /// Waits for the close frame; returns its code.
    pub async fn expect_close(&mut self) -> Result<u16> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("timed out waiting for close")?;
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return Ok(code.into()),
                Some(Ok(Message::Close(None))) => bail!("close without code"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("error before close: {e}"),
                None => bail!("ended without close frame"),
            }
        }
    }
}

/// A `nebula` process started from the built binary.
pub struct NebulaProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub data_dir: std::path::PathBuf,
}

impl NebulaProcess {
    /// Starts `nebula` on a free loopback port with `data_dir`, limits off, plus `args`.
    pub fn start(data_dir: &std::path::Path, args: &[&str]) -> Result<NebulaProcess> {
        use std::io::BufRead;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("nebula.log"))?;
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nebula"))
            .args(listen)
            .args(["--publish-rate", "0", "--connect-rate", "0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawning nebula")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let Some(line) = lines.next() else {
            let _ = child.wait();
            let log = std::fs::read_to_string(data_dir.join("nebula.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "nebula exited before listening; its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        };
        let line = line?;
        let addr = line
            .strip_prefix("nebula listening on http://")
            .and_then(|rest| rest.split(' ').next())
            .with_context(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        std::thread::spawn(move || for _ in lines {});
        Ok(NebulaProcess {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a real signal (`TERM`, `INT`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Waits for the process to exit (at most `limit`).
    pub fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                bail!("nebula did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NebulaProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real `redis-server` on a free port, with AOF (`appendfsync always`) in its own directory.
pub struct RedisServer {
    pub child: Option<std::process::Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start() -> Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir,
        };
        r.spawn()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (or restarts) the server on the same port and directory.
    pub fn spawn(&mut self) -> Result<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("redis-server is missing: apt-get install redis-server (scripts/test does)")?;
        self.child = Some(child);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis-server did not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `kill -9` of the server.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a real signal to the server (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.as_ref().context("redis is not running")?.id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} redis failed");
        Ok(())
    }

    /// Runs a command through `redis-cli` (e.g. `FLUSHALL`).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("redis-cli is missing: apt-get install redis-tools (scripts/test does)")?;
        anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `kill -9`, then every file of its data dir removed: the next `spawn` starts empty, as a
    /// Redis that lost its data.
    pub fn kill_and_lose_data(&mut self) -> Result<()> {
        self.kill9();
        for entry in std::fs::read_dir(self.dir.path())? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Client {
    /// Every message of `room`, through `history` pages of 200 going back from the latest,
    /// oldest first.
    pub async fn all_messages(&mut self, room: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut req = json!({"type": "history", "room": room, "limit": 200});
            if let Some(b) = before {
                req["before"] = json!(b);
            }
            let page = self.request(req).await?;
            let mut msgs = page["messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() {
                return Ok(all);
            }
            before = msgs[0]["offset"].as_u64();
            msgs.extend(all);
            all = msgs;
        }
    }
}

/// A WebSocket client that writes raw frames (those a WebSocket library refuses to send:
/// invalid UTF-8, reserved bits, fragmented control frames...) and reads the server's frames
/// as they are. It never answers pings by itself.
pub struct RawWs {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code and reason of a close frame.
    pub fn close(&self) -> Option<(u16, String)> {
        (self.opcode == 8 && self.payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..]).into_owned(),
            )
        })
    }

    pub fn text(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

impl RawWs {
    /// Upgrades a fresh TCP connection by hand (subprotocol JSON) and reads the `welcome`.
    pub async fn connect(addr: SocketAddr, cookie: &str) -> Result<RawWs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: nebula.v1.json\r\nCookie: {cookie}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await??;
            anyhow::ensure!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        let mut ws = RawWs {
            stream,
            buf: buf[end..].to_vec(),
        };
        let welcome = ws.next_frame().await?;
        anyhow::ensure!(welcome.text()["type"] == "welcome", "{welcome:?}");
        Ok(ws)
    }

    /// Encodes a client frame (masked) with the given first byte (FIN, RSV bits, opcode).
    pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Writes raw bytes (one or several frames in one write).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends a final text frame.
    pub async fn text(&mut self, text: &str) -> Result<()> {
        self.write(&RawWs::frame(0x81, text.as_bytes())).await
    }

    /// The next frame from the server, or an error when the connection ends first.
    pub async fn next_frame(&mut self) -> Result<RawFrame> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .context("timed out waiting for a frame")??;
            if n == 0 {
                bail!("connection ended");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> Result<(u16, String)> {
        loop {
            let f = self.next_frame().await?;
            if let Some(c) = f.close() {
                return Ok(c);
            }
        }
    }

    /// Waits until the server closes the TCP connection (read returns 0 or an error).
    pub async fn expect_eof(&mut self, within: Duration) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => bail!("the server kept the connection open for {within:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                Ok(Ok(_)) => continue,
            }
        }
    }
}

fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4; // A server never masks; tolerate it anyway.
    }
    let payload = buf.get(at..at + len)?.to_vec();
    Some((
        RawFrame {
            fin,
            opcode,
            payload,
        },
        at + len,
    ))
}

/// The number of open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A metric's value from a server's `/metrics` (the first sample with that exact name).
pub async fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let m = http(addr, "GET", "/metrics", &[], "").await?;
    m.body
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| format!("{name} is not in /metrics"))
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
