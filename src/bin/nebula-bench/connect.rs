//! The `connect` scenario: open N connections, hold them, measure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use nebula::client::{WsOptions, source_for, ws_connect};

use crate::stats::{self, Latencies};
use crate::wire::{login_all, targets};
use crate::{ConnectArgs, Summary, Workers};

#[derive(Serialize, Deserialize)]
pub struct Report {
    connections: u64,
    failures: u64,
    connect_secs: f64,
    handshake: Latencies,
    first_error: Option<String>,
}

/// Logins per user: connections share cookies (presence is not what this scenario measures).
const USERS: usize = 200;

pub async fn worker(args: &ConnectArgs, index: usize, workers: usize) -> Result<Report> {
    let urls = targets(&args.common.url)?;
    let codec = args.common.codec();
    let mut cookies = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let names = (0..USERS)
            .map(|u| format!("bench-w{index}-u{i}-{u}"))
            .collect();
        cookies.push(login_all(*url, names, 1).await?);
    }
    let mine: Vec<usize> = (0..args.connections)
        .filter(|k| k % workers == index)
        .collect();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, k) in mine.into_iter().enumerate() {
        let url_index = k % urls.len();
        let target = urls[url_index];
        let cookie = cookies[url_index][n % USERS].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let t0 = Instant::now();
            let options = WsOptions {
                cookie: Some(&cookie),
                codec: Some(codec),
                source: source_for(target, k),
                ..WsOptions::default()
            };
            let mut ws = ws_connect(target, options).await?;
            // The handshake ends with the welcome frame.
            let first = tokio::time::timeout(Duration::from_secs(30), ws.next()).await?;
            anyhow::ensure!(matches!(first, Some(Ok(_))), "no welcome frame");
            anyhow::Ok((ws, t0.elapsed()))
        }));
    }
    let mut held = Vec::new();
    let mut failures = 0;
    let mut first_error = None;
    let mut h = stats::histogram();
    for t in tasks {
        match t.await? {
            Ok((ws, took)) => {
                h.saturating_record(took.as_micros() as u64);
                held.push(ws);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Keep reading (answers the server's pings) until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    let connections = held.len() as u64;
    for mut ws in held {
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    crate::ready_then_wait_for_go().await?;
    tokio::time::sleep(args.common.duration).await;
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    Ok(Report {
        connections,
        failures,
        connect_secs,
        handshake: Latencies::from_histogram(&h),
        first_error,
    })
}

pub fn parent(args: &ConnectArgs, pool: &mut Workers) -> Result<Summary> {
    let pids = &args.common.server_pid;
    let rss_before: u64 = pids.iter().filter_map(|p| stats::rss_bytes(*p)).sum();
    pool.wait_ready()?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_after: u64 = pids.iter().filter_map(|p| stats::rss_bytes(*p)).sum();
    let cpu_before: f64 = pids.iter().filter_map(|p| stats::cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    pool.go()?;
    let reports: Vec<Report> = pool.reports()?;
    let cpu_after: f64 = pids.iter().filter_map(|p| stats::cpu_seconds(*p)).sum();
    let idle_secs = t0.elapsed().as_secs_f64();
    let mut h = stats::histogram();
    let (mut connections, mut failures, mut connect_secs) = (0, 0, 0f64);
    let mut first_error = None;
    for r in reports {
        connections += r.connections;
        failures += r.failures;
        connect_secs = connect_secs.max(r.connect_secs);
        first_error = first_error.or(r.first_error);
        r.handshake.into_histogram(&mut h);
    }
    let p = stats::percentiles(&h);
    let mut json = json!({
        "scenario": "connect",
        "connections": connections,
        "failures": failures,
        "connect_secs": connect_secs,
        "connects_per_sec": connections as f64 / connect_secs.max(1e-9),
        "handshake_ms": { "p50": p.p50, "p99": p.p99, "max": p.max },
        "first_error": first_error,
    });
    let mut human = format!(
        "connect: {connections} connections ({failures} failed) in {connect_secs:.1} s = {:.0}/s; handshake p50 {:.2} ms, p99 {:.2} ms",
        connections as f64 / connect_secs.max(1e-9),
        p.p50,
        p.p99
    );
    if !pids.is_empty() && connections > 0 {
        let per = rss_after.saturating_sub(rss_before) as f64 / connections as f64;
        let cpu = (cpu_after - cpu_before) / idle_secs;
        json["server_rss_bytes_before"] = json!(rss_before);
        json["server_rss_bytes_after"] = json!(rss_after);
        json["server_rss_bytes_per_connection"] = json!(per);
        json["server_idle_cpu_cores"] = json!(cpu);
        human.push_str(&format!(
            "\nserver: RSS {:.1} MiB -> {:.1} MiB = {:.0} bytes per connection; idle CPU {:.3} cores over {idle_secs:.0} s",
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0,
            per,
            cpu
        ));
    }
    if let Some(e) = json["first_error"].as_str() {
        human.push_str(&format!("\nfirst error: {e}"));
    }
    Ok(Summary { human, json })
}
