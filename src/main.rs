//! The `nebula` binary: parse the configuration, run the server until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use nebula::{Config, Nebula};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let server = Nebula::start(config).await.context("starting nebula")?;
        // One stable line on stdout, for people and for scripts that wait for the server.
        println!(
            "nebula listening on http://{} (node {})",
            server.local_addr(),
            server.node_id()
        );
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        server.shutdown().await.context("graceful shutdown")?;
        tracing::info!("bye");
        anyhow::Ok(())
    })
}
