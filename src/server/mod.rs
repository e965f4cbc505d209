//! The server: the composition root (what is built in which order), the accept loop, and the
//! shutdown order. The HTTP routes are in [`http`], the WebSocket handshake in [`ws`], the checks
//! a request passes in [`guard`] and how answers are built in [`answer`].

mod answer;
mod guard;
mod http;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Keys, Revocations};
use crate::broker::{BrokerEvents, LocalBroker, RedisBroker, SharedBroker};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::error::Error;
use crate::hub::{Hub, RING_CAPACITY, ShardContext};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::session::SessionContext;
use crate::store::{Store, StoreOptions};

/// How long a client may take to send a request's headers, and then its body.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster node waits, at start, to hold what the cluster stored while it was away.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by every connection.
struct App {
    keys: Keys,
    revocations: Arc<Revocations>,
    ctx: Arc<SessionContext>,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    allowed_origins: Vec<String>,
    /// False once a shutdown started.
    ready: AtomicBool,
    /// Cluster mode (a Redis broker).
    cluster: bool,
    /// Sessions (reader and writer tasks); joined before the shards stop.
    sessions: TaskTracker,
    /// Cancelled at shutdown: every session stops taking requests, sends the answers of its
    /// publishes in flight and what is queued, and closes with 1001.
    session_stop: CancellationToken,
    next_conn: AtomicU64,
    tasks: TaskTracker,
}

impl App {
    fn alive_tasks(&self) -> usize {
        self.sessions.len() + self.tasks.len()
    }
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
    /// Opens the store, starts the broker and the shards, binds `config.listen` and serves.
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
                dir: data_dir.path().to_path_buf(),
                fsync: config.fsync,
                queue: config.writer_queue,
            },
            metrics.clone(),
            &tasks,
        )?;
        let revocations = Arc::new(Revocations::default());
        for (user, generation) in store.revocations().await? {
            revocations.apply(user, generation);
        }
        let (hub, inboxes) = Hub::channels(config.shards);
        let events: Arc<dyn BrokerEvents> = Arc::new(hub.clone());
        let (broker, caught_up): (SharedBroker, _) = match &config.redis_url {
            Some(url) => {
                let (broker, caught_up) = RedisBroker::start(
                    url,
                    node_id.clone(),
                    store.clone(),
                    events,
                    revocations.clone(),
                    metrics.clone(),
                    &tasks,
                )
                .await?;
                (broker, Some(caught_up))
            }
            None => (
                Arc::new(LocalBroker::new(store.clone(), events, metrics.clone())),
                None,
            ),
        };
        hub.spawn_shards(
            inboxes,
            ShardContext {
                store: store.clone(),
                broker: broker.clone(),
                metrics: metrics.clone(),
                tracker: tasks.clone(),
                recovery_window: config.recovery_window,
                ring_capacity: RING_CAPACITY,
            },
        );
        if let Some(caught_up) = caught_up {
            // Serve only once this node holds what the cluster stored while it was away.
            match tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(Error::CatchUp(e)),
                Ok(Err(_)) => return Err(Error::CatchUp(crate::broker::BrokerError::Closing)),
                Err(_) => return Err(Error::CatchUpTimeout(CATCH_UP_TIMEOUT.as_secs())),
            }
        }
        let limits = Arc::new(Limits::new(config.publish_rate, config.connect_rate));
        let ctx = Arc::new(SessionContext {
            hub: hub.clone(),
            broker: broker.clone(),
            store: store.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            node_id: node_id.clone(),
            outbox_bytes: config.outbox_bytes,
            ping_interval: Duration::from_secs(config.ping_interval.max(1)),
        });
        let listener = listen(config.listen)?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App {
            keys,
            revocations,
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
        let accept_stop = CancellationToken::new();
        tasks.spawn(accept_loop(listener, app.clone(), accept_stop.clone()));
        tasks.spawn(evict_idle_limits(limits, accept_stop.clone()));
        // The dashboard's charts: a sample every 2 s, until the shutdown stops accepting.
        tasks.spawn(crate::metrics::history::run(metrics, accept_stop.clone()));
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
        self.app.alive_tasks()
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
        self.app.sessions.close();
        // Every session answers what is in flight (at most 2 s), sends its 1001 and waits for
        // the client's reply (at most 3 s): all bounded, whatever the clients do.
        self.app.session_stop.cancel();
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
            async move { Ok::<_, Infallible>(http::route(req, peer, app).await) }
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
            if tokio::time::timeout(Duration::from_secs(2), conn).await.is_err() {
                tracing::debug!("an http connection did not finish within 2 s of the shutdown");
            }
        }
    }
}
