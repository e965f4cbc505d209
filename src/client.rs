//! A small client kit for Nebula's own tools and tests (the load generator, the integration
//! tests): HTTP requests over hyper's client (any body encoding, chunked included), a login
//! client that keeps its connection, and WebSocket connections from a chosen source address in
//! either codec. Not on the server's path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol::Codec;

/// What can go wrong talking to a server.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("{0}: expected http://IP:PORT")]
    Url(String),
    #[error("login failed: {status} {body}")]
    Login { status: u16, body: String },
}

/// A finished HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The address of an `http://IP:PORT` URL.
pub fn parse_url(url: &str) -> Result<SocketAddr, ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.into()))?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse().map_err(|_| ClientError::Url(url.into()))
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

/// A TCP connection to `target` from `source` (any when `None`), without Nagle.
pub async fn connect_from(
    target: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, ClientError> {
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

type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// An HTTP/1.1 connection that sends requests one after the other. It spawns no task: the
/// connection is driven while a request is in flight.
pub struct HttpClient {
    target: SocketAddr,
    sender: http1::SendRequest<Full<Bytes>>,
    conn: std::pin::Pin<Box<Connection>>,
    conn_done: bool,
}

/// Polls `fut` while driving the connection.
async fn drive<T>(
    conn: &mut std::pin::Pin<Box<Connection>>,
    conn_done: &mut bool,
    fut: impl std::future::Future<Output = Result<T, hyper::Error>>,
) -> Result<T, ClientError> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            result = &mut fut => return Ok(result?),
            ended = conn.as_mut(), if !*conn_done => {
                *conn_done = true;
                // The connection ended: the request fails by itself, unless it had finished.
                ended?;
            }
        }
    }
}

impl HttpClient {
    pub async fn connect(target: SocketAddr) -> Result<HttpClient, ClientError> {
        let stream = connect_from(target, None).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(HttpClient {
            target,
            sender,
            conn: Box::pin(conn),
            conn_done: false,
        })
    }

    /// Sends a request and reads its whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<HttpResponse, ClientError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into()))?;
        let (conn, done) = (&mut self.conn, &mut self.conn_done);
        drive(conn, done, self.sender.ready()).await?;
        let response = drive(conn, done, self.sender.send_request(req)).await?;
        let (parts, body) = response.into_parts();
        let body = drive(conn, done, body.collect()).await?.to_bytes();
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// Logs in as `name`; returns the `Cookie` header value to send.
    pub async fn login(&mut self, name: &str) -> Result<String, ClientError> {
        let body = serde_json::json!({ "name": name }).to_string();
        let r = self
            .request(
                "POST",
                "/api/login",
                &[("Content-Type", "application/json")],
                body,
            )
            .await?;
        let cookie = r
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .map(str::to_owned);
        match (r.status, cookie) {
            (200, Some(cookie)) => Ok(cookie),
            (status, _) => Err(ClientError::Login {
                status,
                body: r.text(),
            }),
        }
    }
}

/// One request over a fresh connection.
pub async fn http(
    target: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<HttpResponse, ClientError> {
    HttpClient::connect(target)
        .await?
        .request(method, path, headers, body)
        .await
}

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Options of a WebSocket connection.
#[derive(Debug, Clone, Default)]
pub struct WsOptions<'a> {
    pub cookie: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// The subprotocol to ask for; `None` asks for none (the server speaks JSON).
    pub codec: Option<Codec>,
    pub source: Option<IpAddr>,
}

/// Opens a WebSocket to `target`'s `/ws`.
pub async fn ws_connect(target: SocketAddr, options: WsOptions<'_>) -> Result<Ws, ClientError> {
    let stream = connect_from(target, options.source).await?;
    let mut req = format!("ws://{target}/ws").into_client_request()?;
    let h = req.headers_mut();
    if let Some(cookie) = options.cookie {
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(cookie).map_err(hyper::http::Error::from)?,
        );
    }
    if let Some(origin) = options.origin {
        h.insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).map_err(hyper::http::Error::from)?,
        );
    }
    if let Some(codec) = options.codec {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// A Protobuf request (subprotocol `nebula.v1.proto`) as the binary frame that carries it.
pub fn proto_request(
    id: u64,
    kind: crate::protocol::pb::client_frame::Type,
) -> tokio_tungstenite::tungstenite::Message {
    use prost::Message as _;
    let frame = crate::protocol::pb::ClientFrame {
        id,
        r#type: Some(kind),
    };
    tokio_tungstenite::tungstenite::Message::Binary(frame.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers the login with a chunked body (as Node's http module does) is
    /// understood.
    #[tokio::test]
    async fn a_chunked_login_answer_is_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            let body = r#"{"user":{"id":"u1","name":"alice"}}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: nebula_session=abc; HttpOnly\r\n\
                 Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
                 {:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        let mut client = HttpClient::connect(addr).await.unwrap();
        assert_eq!(client.login("alice").await.unwrap(), "nebula_session=abc");
        server.await.unwrap();
    }
}
