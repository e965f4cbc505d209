//! The server: the accept loop, the HTTP routes, the WebSocket upgrade and the shutdown order.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Keys, User};
use crate::broker::{LocalBroker, RedisBroker, SharedBroker};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::hub::{Hub, HubOptions, RING_CAPACITY};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::session::{self, Closer, SessionContext};
use crate::store::{Store, StoreOptions};
use crate::{Error, web};

/// The JSON subprotocol (the default).
pub const SUBPROTOCOL_JSON: &str = "nebula.v1.json";
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// State shared by every connection.
struct App {
    keys: Keys,
    ctx: Arc<SessionContext>,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    allowed_origins: Vec<String>,
    ready: AtomicBool,
    /// Cluster mode (a Redis broker).
    cluster: bool,
    /// Sessions (reader and writer tasks); joined before the shards stop.
    sessions: TaskTracker,
    /// Cancelled to close every session with 1001.
    session_stop: CancellationToken,
    next_conn: AtomicU64,
    tasks: TaskTracker,
}

/// Starts Nebula servers.
pub struct Nebula;

/// A running server: its address, and the handle to shut it down.
pub struct RunningServer {
    addr: SocketAddr,
    node_id: Arc<str>,
    app: Arc<App>,
    hub: Hub,
    broker: SharedBroker,
    store: Store,
    accept_stop: CancellationToken,
    deadline: Duration,
    /// Held until the shutdown is complete: the data dir stays locked while the store is open.
    data_dir: DataDir,
}

impl Nebula {
    /// Opens the store, starts the shards and the broker, binds `config.listen` and serves.
    pub async fn start(config: Config) -> Result<RunningServer, Error> {
        config.validate()?;
        let data_dir = DataDir::open(&config.data_dir)?;
        let keys = Keys::load_or_create(
            config.given_secret()?.as_deref(),
            data_dir.path(),
            Duration::from_secs(config.session_ttl),
        )?;
        let node_id = data_dir.node_id(config.node_id.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let tasks = TaskTracker::new();
        let sessions = TaskTracker::new();
        let store = Store::open(
            StoreOptions {
                dir: config.data_dir.clone(),
                fsync: config.fsync,
                queue: config.writer_queue,
            },
            &tasks,
        )?;
        let (hub, inboxes) = Hub::channels(config.shards);
        let (broker, caught_up): (SharedBroker, _) = match &config.redis_url {
            Some(url) => {
                let (broker, caught_up) = RedisBroker::start(
                    url,
                    node_id.clone(),
                    store.clone(),
                    hub.clone(),
                    metrics.clone(),
                    &tasks,
                )
                .await?;
                (broker, Some(caught_up))
            }
            None => (
                Arc::new(LocalBroker::new(
                    store.clone(),
                    Arc::new(hub.clone()),
                    metrics.clone(),
                )),
                None,
            ),
        };
        let options = HubOptions {
            recovery_window: config.recovery_window,
            ring_capacity: RING_CAPACITY,
        };
        hub.spawn_shards(
            inboxes,
            options,
            broker.clone(),
            store.clone(),
            metrics.clone(),
            &tasks,
        );
        if let Some(caught_up) = caught_up {
            // Serve only once this node holds what the cluster stored while it was away.
            match tokio::time::timeout(Duration::from_secs(30), caught_up).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(Error::Config(
                        "could not catch up with the cluster through redis".into(),
                    ));
                }
            }
        }
        let limits = Arc::new(Limits::new(config.publish_rate, config.connect_rate));
        let ctx = Arc::new(SessionContext {
            hub: hub.clone(),
            store: store.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            node_id: node_id.clone(),
            outbox_capacity: config.outbox_capacity,
        });
        let listener = listen(config.listen)?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App {
            keys,
            ctx,
            metrics: metrics.clone(),
            limits: limits.clone(),
            allowed_origins: config
                .allowed_origin
                .iter()
                .map(|o| o.trim().to_string())
                .collect(),
            ready: AtomicBool::new(true),
            cluster: config.redis_url.is_some(),
            sessions,
            session_stop: CancellationToken::new(),
            next_conn: AtomicU64::new(1),
            tasks: tasks.clone(),
        });
        metrics.ready.set(1);
        let accept_stop = CancellationToken::new();
        tasks.spawn(accept_loop(listener, app.clone(), accept_stop.clone()));
        tasks.spawn(evict_idle_limits(limits, accept_stop.clone()));
        tracing::info!(%addr, node = %node_id, "nebula is serving");
        Ok(RunningServer {
            addr,
            node_id,
            app,
            hub,
            broker,
            store,
            accept_stop,
            deadline: config.shutdown_deadline(),
            data_dir,
        })
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Tasks still alive: sessions and server tasks.
    pub fn alive_tasks(&self) -> usize {
        self.app.sessions.len() + self.app.tasks.len()
    }

    /// The graceful shutdown: readiness 503, close every session with 1001 and wait for them,
    /// stop accepting, drain the shards, close the broker, commit what the store writer holds,
    /// join every task; all within the configured deadline.
    pub async fn shutdown(self) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.deadline;
        // Readiness turns 503 and upgrades are refused while sessions drain; the listener
        // stays open meanwhile so that load balancers can see it.
        self.app.ready.store(false, Ordering::SeqCst);
        self.app.metrics.ready.set(0);
        self.app.session_stop.cancel();
        self.app.sessions.close();
        let sessions_done = tokio::time::timeout_at(deadline, self.app.sessions.wait())
            .await
            .is_ok();
        self.accept_stop.cancel();
        self.hub.stop().await;
        self.broker.close().await;
        if tokio::time::timeout_at(deadline, self.store.close())
            .await
            .is_err()
        {
            tracing::error!(
                "the store did not finish its last commit before the shutdown deadline"
            );
        }
        self.app.tasks.close();
        let tasks_done = tokio::time::timeout_at(deadline, self.app.tasks.wait())
            .await
            .is_ok();
        drop(self.data_dir);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown complete"
        );
        if sessions_done && tasks_done {
            Ok(())
        } else {
            Err(Error::ShutdownTimeout {
                sessions: self.app.sessions.len(),
                tasks: self.app.tasks.len(),
            })
        }
    }
}

/// Binds with a deep accept backlog: a burst of thousands of connects must not overflow it
/// (an overflow costs the client a 1 s SYN retransmit).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

async fn evict_idle_limits(limits: Arc<Limits>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => limits.evict_idle(),
        }
    }
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
                app.tasks
                    .spawn(serve_connection(stream, peer, app.clone(), stop.clone()));
            }
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    stop: CancellationToken,
) {
    let service = {
        let app = app.clone();
        service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(route(req, peer, app).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("valid header"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    response(status, "application/json", value.to_string())
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": message }))
}

fn session_user(app: &App, req: &Request<Incoming>) -> Option<auth::Session> {
    let header = req.headers().get(header::COOKIE)?.to_str().ok()?;
    app.keys.verify_cookie_header(header, auth::now_secs()).ok()
}

async fn route(req: Request<Incoming>, peer: SocketAddr, app: Arc<App>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => response(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let redis_up = !app.cluster || app.metrics.redis_connected.get() == 1;
            match (app.ready.load(Ordering::SeqCst), redis_up) {
                (true, true) => response(StatusCode::OK, "text/plain", "ready\n"),
                (false, _) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n",
                ),
                (true, false) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not following the cluster (redis unreachable); publishes get unavailable\n",
                ),
            }
        }
        (&Method::GET, "/metrics") => {
            app.metrics
                .tasks_alive
                .set((app.sessions.len() + app.tasks.len()) as i64);
            response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                app.metrics.render(),
            )
        }
        (&Method::GET, "/dashboard/stats") => {
            let m = &app.metrics;
            let redis = match (app.cluster, m.redis_connected.get()) {
                (false, _) => "single node",
                (true, 1) => "connected",
                (true, _) => "disconnected",
            };
            let rows = [
                ("node", app.ctx.node_id.to_string()),
                ("ready", app.ready.load(Ordering::SeqCst).to_string()),
                ("redis", redis.to_string()),
                ("connections", m.connections.get().to_string()),
                ("rooms with members here", m.rooms.get().to_string()),
                ("messages published", m.messages_published.get().to_string()),
                ("messages delivered", m.messages_delivered.get().to_string()),
                ("publishes refused", m.publishes_refused.get().to_string()),
                (
                    "slow consumers closed (4008)",
                    m.slow_consumers.get().to_string(),
                ),
                (
                    "tasks alive",
                    (app.sessions.len() + app.tasks.len()).to_string(),
                ),
            ];
            response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                web::dashboard_rows(&rows),
            )
        }
        (&Method::POST, "/api/login") => login(req, peer.ip(), &app).await,
        (&Method::POST, "/api/logout") => {
            let mut r = json(StatusCode::OK, serde_json::json!({}));
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&auth::clear_cookie()).expect("valid"),
            );
            r
        }
        (&Method::GET, "/api/me") => match session_user(&app, &req).map(|s| s.user) {
            Some(user) => json(StatusCode::OK, serde_json::json!({ "user": user })),
            None => json_error(StatusCode::UNAUTHORIZED, "not logged in"),
        },
        (&Method::GET, "/ws") => upgrade(req, peer.ip(), &app),
        (&Method::GET, p) => match web::asset(p) {
            Some((content_type, body)) => {
                response(StatusCode::OK, content_type, Bytes::from_static(body))
            }
            None => json_error(StatusCode::NOT_FOUND, "not found"),
        },
        _ => json_error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn rate_limited(app: &App) -> Response<Body> {
    app.metrics.rate_limited.inc();
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests; slow down",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn login(req: Request<Incoming>, ip: IpAddr, app: &App) -> Response<Body> {
    if !app.limits.allow_connect(ip) {
        return rate_limited(app);
    }
    let existing = session_user(app, &req).map(|s| s.user);
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "body too large or unreadable"),
    };
    let name: Option<String> = if is_json {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
    } else {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.into_owned())
    };
    let Some(name) = name else {
        return json_error(StatusCode::BAD_REQUEST, "name is missing");
    };
    let name = match auth::validate_name(&name) {
        Ok(n) => n,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let id = existing.map_or_else(auth::new_user_id, |u| u.id);
    let user = User {
        id,
        name: name.into(),
    };
    let mut r = json(StatusCode::OK, serde_json::json!({ "user": user }));
    let cookie = app.keys.set_cookie(&user, auth::now_secs());
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie is ASCII"),
    );
    r
}

/// True when `origin` is this server's own (same host as the `Host` header) or allowed.
fn origin_allowed(app: &App, req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true; // Not a browser.
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    own.is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
        || app
            .allowed_origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin))
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn upgrade(mut req: Request<Incoming>, ip: IpAddr, app: &Arc<App>) -> Response<Body> {
    if !app.limits.allow_connect(ip) {
        return rate_limited(app);
    }
    let Some(auth::Session { user, expires_at }) = session_user(app, &req) else {
        return json_error(StatusCode::UNAUTHORIZED, "log in first (POST /api/login)");
    };
    if !origin_allowed(app, &req) {
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(accept), true, true, true) = (
        key,
        version_ok,
        header_has(&req, header::UPGRADE, "websocket"),
        header_has(&req, header::CONNECTION, "upgrade"),
    ) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)",
        );
    };
    if !app.ready.load(Ordering::SeqCst) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let wants_json = header_has(&req, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL_JSON);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let closer = Closer::child_of(&app.session_stop);
    let ctx = app.ctx.clone();
    let sessions = app.sessions.clone();
    app.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(session::websocket_config()),
        )
        .await;
        session::run(socket, conn, user, expires_at, closer, ctx, &sessions).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is ASCII"),
    );
    if wants_json {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL_JSON),
        );
    }
    r
}
