//! Metrics an operator can use, checked against what reads them: a real Prometheus (Debian's
//! `prometheus`, started here on a free port with its own directory, and stopped here) scrapes
//! an in-process Nebula and must know every family's TYPE and HELP and answer every query of
//! the Grafana dashboard; each of those queries names only series that /metrics exposes; and
//! the HTMX dashboard's fragments (charts, busiest rooms, every node of a cluster) render,
//! escaped, under the page's Content-Security-Policy.
//!
//! `prometheus` scrapes with a real Prometheus, `grafana` checks the Grafana dashboard's
//! queries, `dashboard` the HTMX page's fragments.

#[path = "../common/mod.rs"]
mod common;
mod dashboard;
mod grafana;
mod prometheus;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::*;
use tokio_util::sync::CancellationToken;

/// Two users in a room: one publishes every 100 ms and both receive, until [`Traffic::stop`].
struct Traffic {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, room: &'static str) -> Traffic {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut alice = Client::login(addr, "alice").await?;
            let mut bob = Client::login(addr, "bob").await?;
            alice.join(room).await?;
            bob.join(room).await?;
            for i in 1.. {
                let step = async {
                    let ack = alice.publish(room, &format!("tick {i}")).await?;
                    ensure!(ack["type"] == "ack", "{ack}");
                    bob.next_of("message").await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(())
                };
                tokio::select! {
                    _ = token.cancelled() => break,
                    done = step => done?,
                }
            }
            Ok(())
        });
        Traffic { stop, task }
    }

    /// Stops it; its error, if it met one.
    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await?.context("traffic")
    }
}

/// Polls `probe` every 100 ms until it says done, and returns what it saw then; fails after
/// `within` with what it saw last.
async fn until<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> Result<T>
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(bool, T)>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (done, seen) = probe().await?;
        if done {
            return Ok(seen);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {within:?}; last seen: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each family of an OpenMetrics exposition: name to (type, help).
fn families(exposition: &str) -> BTreeMap<String, (String, String)> {
    let mut families: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in exposition.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some("#"), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rest = parts.next().unwrap_or_default().to_string();
        let entry = families.entry(name.to_string()).or_default();
        match kind {
            "TYPE" => entry.0 = rest,
            "HELP" => entry.1 = rest,
            _ => {}
        }
    }
    families
}

/// The names of the series an exposition holds (`nebula_x_total`, `nebula_y_bucket`...), with
/// the first value of each.
fn series(exposition: &str) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        series.entry(line[..name_end].to_string()).or_insert(value);
    }
    series
}
