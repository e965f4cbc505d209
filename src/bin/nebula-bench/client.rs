//! The load generator's clients: a keep-alive HTTP/1.1 login client and WebSocket connections
//! bound to a chosen loopback source address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// The address of an `http://host:port` URL.
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .with_context(|| format!("{url}: expected http://IP:PORT"))
}

/// The source address for connection `k`: spread over 127.0.0.2..=127.0.0.9 when the target is
/// on loopback (each source address has its own ~28,000 ports per destination).
pub fn source_for(target: SocketAddr, k: usize) -> Option<IpAddr> {
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (k % 8) as u8)))
        }
        _ => None,
    }
}

async fn connect_from(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Logs users in over one keep-alive connection.
pub struct LoginClient {
    target: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl LoginClient {
    pub async fn new(target: SocketAddr) -> Result<LoginClient> {
        Ok(LoginClient {
            target,
            stream: BufReader::new(connect_from(target, None).await?),
        })
    }

    /// Logs in as `name`; returns the cookie pair to send.
    pub async fn login(&mut self, name: &str) -> Result<String> {
        let body = serde_json::json!({ "name": name }).to_string();
        let req = format!(
            "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.target,
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await?;
        let mut cookie = None;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed during login");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse()?;
                } else if k.eq_ignore_ascii_case("set-cookie") {
                    cookie = v.split(';').next().map(str::to_owned);
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        if !status.contains(" 200 ") {
            bail!(
                "login failed: {} {}",
                status.trim(),
                String::from_utf8_lossy(&body)
            );
        }
        cookie.context("no cookie in the login response")
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket with `cookie` from `source`.
pub async fn ws_connect(target: SocketAddr, source: Option<IpAddr>, cookie: &str) -> Result<Ws> {
    let stream = connect_from(target, source).await?;
    let mut req = format!("ws://{target}/ws").into_client_request()?;
    req.headers_mut()
        .insert("Cookie", HeaderValue::from_str(cookie)?);
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("nebula.v1.json"),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}
