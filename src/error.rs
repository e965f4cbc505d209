//! The crate's error type: one variant per module boundary.

use thiserror::Error;

/// Everything that can stop Nebula from starting or running.
#[derive(Debug, Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("could not catch up with the cluster through redis: {0}")]
    CatchUp(#[source] crate::broker::BrokerError),
    #[error("could not catch up with the cluster through redis within {0} s")]
    CatchUpTimeout(u64),
    #[error("shutdown missed its deadline: {sessions} sessions and {tasks} tasks still running")]
    ShutdownTimeout { sessions: usize, tasks: usize },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
