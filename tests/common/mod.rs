//! Test helpers: a real server on port 0, a raw HTTP client, a real WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use nebula::{Config, Nebula, RunningServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// A parsed HTTP response.
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
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .context("http timeout")??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Logs in as `name`; returns the `Cookie` header value to send.
pub async fn login(addr: SocketAddr, name: &str) -> Result<String> {
    let body = json!({ "name": name }).to_string();
    let r = http(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await?;
    if r.status != 200 {
        bail!("login failed: {} {}", r.status, r.body);
    }
    let set = r.header("set-cookie").context("no set-cookie")?;
    Ok(set.split(';').next().context("cookie")?.to_string())
}

/// A WebSocket client speaking the v1 JSON protocol.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: Value,
    /// The id of the node that serves this connection (from `welcome`).
    pub node: String,
    next_id: u64,
    /// Pushes received while waiting for a reply.
    pub backlog: std::collections::VecDeque<Value>,
}

/// Opens a WebSocket to `addr` with `cookie` (and optional `origin`).
pub async fn ws_connect(
    addr: SocketAddr,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, WsError> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("Cookie", HeaderValue::from_str(c).unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("nebula.v1.json"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
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

    /// Sends a real signal (`TERM`, `INT`, `KILL`).
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
