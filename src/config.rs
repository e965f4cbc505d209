//! Configuration: every flag has a `NEBULA_*` environment variable (see docs/PROTOCOL.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// A configuration that cannot run, and why (for a person to read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How hard the store pushes a commit to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// WAL with `synchronous=NORMAL`: survives `kill -9` of the process; a power loss may lose
    /// the last transactions that were acknowledged.
    Normal,
    /// WAL with `synchronous=FULL`: every commit is fsynced before its acks leave.
    Always,
}

/// Nebula's configuration. Its `Debug` form hides the cookie key and a Redis password.
#[derive(Clone, Parser)]
#[command(
    name = "nebula",
    version,
    about = "A durable, clustered real-time chat server"
)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "NEBULA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the SQLite room log and the generated secret.
    #[arg(long, env = "NEBULA_DATA_DIR", default_value = "./nebula-data")]
    pub data_dir: PathBuf,
    /// Redis URL; cluster mode when set.
    #[arg(long = "redis", env = "NEBULA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// This node's id (default: hostname plus a short random suffix).
    #[arg(long, env = "NEBULA_NODE_ID")]
    pub node_id: Option<String>,
    /// Cookie signing key, at least 32 bytes. Single node: generated and kept in the data dir
    /// when unset.
    #[arg(long, env = "NEBULA_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the cookie signing key (trimmed), instead of `--secret`: for containers
    /// and secret stores, so that the key never appears in a process listing or environment.
    #[arg(long, env = "NEBULA_SECRET_FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,
    /// Extra origins allowed on /ws, comma-separated (e.g. `http://localhost:3000`).
    #[arg(long, env = "NEBULA_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origin: Vec<String>,
    /// Session lifetime in seconds.
    #[arg(long, env = "NEBULA_SESSION_TTL", default_value_t = 30 * 24 * 3600)]
    pub session_ttl: u64,
    /// Publishes per second per user (token bucket, burst of the same size); 0 turns it off.
    #[arg(long, env = "NEBULA_PUBLISH_RATE", default_value_t = 20)]
    pub publish_rate: u32,
    /// Logins plus WebSocket upgrades per second per client IP; 0 turns it off.
    #[arg(long, env = "NEBULA_CONNECT_RATE", default_value_t = 20)]
    pub connect_rate: u32,
    /// Number of hub shards (32 to 64 recommended).
    #[arg(long, env = "NEBULA_SHARDS", default_value_t = 64)]
    pub shards: usize,
    /// Deadline for a graceful shutdown, in seconds.
    #[arg(long, env = "NEBULA_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// Durability of a commit: `normal` survives kill -9, `always` survives a power loss.
    #[arg(long, env = "NEBULA_FSYNC", value_enum, default_value_t = Fsync::Normal)]
    pub fsync: Fsync,
    /// How many missed messages a `join` with `since` may return before `recovered: false`.
    #[arg(long, env = "NEBULA_RECOVERY_WINDOW", default_value_t = 10_000)]
    pub recovery_window: u64,
    /// Bytes a connection may have queued and not yet written (its outbound budget) before it
    /// is closed with 4008 (slow consumer).
    #[arg(long, env = "NEBULA_OUTBOX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub outbox_bytes: usize,
    /// Seconds between WebSocket pings; a peer silent for three of them is closed with 4000.
    #[arg(long, env = "NEBULA_PING_INTERVAL", default_value_t = 25)]
    pub ping_interval: u64,
    /// Publishes the store writer may hold before new ones get `unavailable`.
    #[arg(long, env = "NEBULA_WRITER_QUEUE", default_value_t = 10_000)]
    pub writer_queue: usize,
}

impl Config {
    /// A configuration for tests and embedding: port 0 on loopback, the given data dir, limits
    /// at their defaults.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::parse_from(["nebula"]);
        config.listen = "127.0.0.1:0".parse().expect("static address");
        config.data_dir = data_dir.into();
        config
    }

    /// The graceful-shutdown deadline.
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    /// Checks what clap cannot: cross-flag rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_some() && self.secret.is_none() && self.secret_file.is_none() {
            return Err(ConfigError(
                "cluster mode (--redis / NEBULA_REDIS_URL) needs --secret / NEBULA_SECRET \
                 (or --secret-file / NEBULA_SECRET_FILE), the same on every node, so that a \
                 session cookie is valid on all of them"
                    .into(),
            ));
        }
        if let Some(secret) = &self.secret {
            check_secret(secret.as_bytes(), "--secret / NEBULA_SECRET")?;
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(ConfigError("--shards must be between 1 and 1024".into()));
        }
        if self.outbox_bytes < 2 * crate::protocol::MAX_REPLY_BYTES {
            return Err(ConfigError(format!(
                "--outbox-bytes must be at least {} (two of the largest replies)",
                2 * crate::protocol::MAX_REPLY_BYTES
            )));
        }
        Ok(())
    }

    /// The cookie key given by `--secret` or read from `--secret-file` (trimmed); `None` when
    /// neither is set (a single node then generates its own).
    pub fn given_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.as_bytes().to_vec()));
        }
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "--secret-file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        let secret = text.trim().as_bytes().to_vec();
        check_secret(&secret, &format!("--secret-file {}", path.display()))?;
        Ok(Some(secret))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("node_id", &self.node_id)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("secret_file", &self.secret_file)
            .field("allowed_origin", &self.allowed_origin)
            .field("session_ttl", &self.session_ttl)
            .field("publish_rate", &self.publish_rate)
            .field("connect_rate", &self.connect_rate)
            .field("shards", &self.shards)
            .field("fsync", &self.fsync)
            .field("recovery_window", &self.recovery_window)
            .field("outbox_bytes", &self.outbox_bytes)
            .field("ping_interval", &self.ping_interval)
            .field("writer_queue", &self.writer_queue)
            .finish_non_exhaustive()
    }
}

/// A URL with its password (if any) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

/// A cookie key shorter than this is refused at start: it could be guessed.
pub const MIN_SECRET_BYTES: usize = 32;

fn check_secret(secret: &[u8], from: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError(format!(
            "{from}: the cookie key must be at least {MIN_SECRET_BYTES} bytes (it has {}); \
             generate one with `head -c 32 /dev/urandom | base64`",
            secret.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        assert_eq!(
            redact_url("redis://app:s3cret@redis:6379/0"),
            "redis://app:***@redis:6379/0"
        );
        assert_eq!(redact_url("redis://redis:6379/"), "redis://redis:6379/");
        let mut c = Config::for_data_dir("/tmp/x");
        c.secret = Some("k".repeat(40));
        c.redis_url = Some("redis://:pw@h:1/".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("kkkk") && !shown.contains("pw@"), "{shown}");
    }

    #[test]
    fn short_secrets_are_refused() {
        let mut c = Config::for_data_dir("/tmp/x");
        c.secret = Some("short".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least 32 bytes"), "{e}");
        c.secret = Some("x".repeat(32));
        assert!(c.validate().is_ok());
    }
}
