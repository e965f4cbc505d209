//! The `fanout` scenario: R rooms of M members; every member publishes on a fixed schedule
//! (open loop) so that the total is `--rate` messages per second; every delivery's latency is
//! measured from the scheduled send time carried in the body; offsets reveal losses and
//! duplicates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use nebula::client::{WsOptions, source_for, ws_connect};

use crate::stats::{self, Latencies};
use crate::wire::{self, Event, login_all, targets};
use crate::{FanoutArgs, Summary, Workers};

#[derive(Serialize, Deserialize, Default)]
pub struct Report {
    connections: u64,
    failures: u64,
    published: u64,
    acked: u64,
    errors: u64,
    deliveries: u64,
    /// Payload bytes of the message pushes received.
    delivered_bytes: u64,
    lost: u64,
    duplicated: u64,
    latency: Latencies,
    ack_latency: Latencies,
    /// Deliveries whose publisher is connected to another node (another URL) than the receiver.
    cross_node_latency: Latencies,
    first_error: Option<String>,
}

#[derive(Default)]
struct Member {
    published: u64,
    acked: u64,
    errors: u64,
    deliveries: u64,
    delivered_bytes: u64,
    duplicated: u64,
    /// Offsets skipped in what this member received.
    gaps: u64,
    /// The next offset this member expects.
    expected: u64,
    /// The highest offset acked to this member.
    max_acked: u64,
    /// Scheduled send times of publishes not answered yet (answers come in order).
    in_flight: std::collections::VecDeque<u64>,
}

pub async fn worker(args: &FanoutArgs, index: usize, workers: usize) -> Result<Report> {
    let urls = targets(&args.common.url)?;
    let codec = args.common.codec();
    let total = args.rooms * args.members;
    // This worker's members: every member of its rooms.
    let mine: Vec<(usize, usize)> = (0..args.rooms)
        .filter(|r| r % workers == index)
        .flat_map(|r| (0..args.members).map(move |m| (r, r * args.members + m)))
        .collect();
    let mut cookies = vec![String::new(); mine.len()];
    for (u, url) in urls.iter().enumerate() {
        let idx: Vec<usize> = (0..mine.len())
            .filter(|&i| mine[i].1 % urls.len() == u)
            .collect();
        let names = idx.iter().map(|&i| format!("fan-{}", mine[i].1)).collect();
        for (i, c) in idx.into_iter().zip(login_all(*url, names, 8).await?) {
            cookies[i] = c;
        }
    }
    // Connect and join.
    let gate = Arc::new(Semaphore::new(256));
    let mut connecting = Vec::new();
    for (i, &(room, k)) in mine.iter().enumerate() {
        let target = urls[k % urls.len()];
        let cookie = cookies[i].clone();
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let options = WsOptions {
                cookie: Some(&cookie),
                codec: Some(codec),
                source: source_for(target, k),
                ..WsOptions::default()
            };
            let mut ws = ws_connect(target, options).await?;
            ws.send(wire::join(codec, 1, &format!("fan{room}"))).await?;
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await?
                    .context("closed")??;
                if let Event::Joined { offset } = wire::decode(codec, &frame) {
                    return anyhow::Ok((ws, room, k, offset));
                }
            }
        }));
    }
    let mut report = Report::default();
    let mut conns = Vec::new();
    for c in connecting {
        match c.await? {
            Ok(c) => conns.push(c),
            Err(e) => {
                report.failures += 1;
                report.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    report.connections = conns.len() as u64;
    crate::ready_then_wait_for_go().await?;

    let go = Instant::now();
    let go_us = stats::now_us();
    let interval = Duration::from_secs_f64(total as f64 / args.rate);
    let publish_until = go + args.common.duration;
    let read_until = publish_until + Duration::from_secs(args.drain);
    let histogram = Arc::new(Mutex::new(stats::histogram()));
    let ack_histogram = Arc::new(Mutex::new(stats::histogram()));
    let cross_histogram = Arc::new(Mutex::new(stats::histogram()));
    let url_count = urls.len();
    let padding = "x".repeat(args.body_bytes.saturating_sub(28));
    let mut tasks = Vec::new();
    for (mut ws, room, k, joined_offset) in conns {
        let histogram = histogram.clone();
        let ack_histogram = ack_histogram.clone();
        let cross_histogram = cross_histogram.clone();
        let padding = padding.clone();
        let phase = interval.mul_f64(k as f64 / total as f64);
        tasks.push(tokio::spawn(async move {
            let mut m = Member { expected: joined_offset + 1, ..Member::default() };
            let room_name = format!("fan{room}");
            let mut next_send = go + phase;
            let mut id = 10u64;
            loop {
                let deadline = if next_send < publish_until { next_send } else { read_until };
                tokio::select! {
                    frame = ws.next() => {
                        let Some(Ok(frame)) = frame else { break };
                        match wire::decode(codec, &frame) {
                            Event::Delivered { offset, sent_us, publisher } => {
                                let now = stats::now_us();
                                if offset < m.expected {
                                    m.duplicated += 1;
                                    continue;
                                }
                                m.gaps += offset - m.expected;
                                m.expected = offset + 1;
                                m.deliveries += 1;
                                m.delivered_bytes += frame.len() as u64;
                                if let Some(sent) = sent_us {
                                    let took = now.saturating_sub(sent).max(1);
                                    histogram.lock().expect("histogram").saturating_record(took);
                                    let publisher = publisher.unwrap_or(k as u64) as usize;
                                    if publisher % url_count != k % url_count {
                                        cross_histogram.lock().expect("histogram").saturating_record(took);
                                    }
                                }
                            }
                            Event::Ack { offset } => {
                                m.acked += 1;
                                if let Some(sent) = m.in_flight.pop_front() {
                                    let took = stats::now_us().saturating_sub(sent).max(1);
                                    ack_histogram.lock().expect("histogram").saturating_record(took);
                                }
                                m.max_acked = m.max_acked.max(offset);
                            }
                            Event::Error => {
                                m.errors += 1;
                                m.in_flight.pop_front();
                            }
                            Event::Joined { .. } | Event::Other => {}
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        if Instant::now() >= read_until {
                            break;
                        }
                        if next_send < publish_until {
                            // The body carries the scheduled time, not the actual one: a late send
                            // shows as latency (no coordinated omission).
                            let scheduled = go_us + (next_send - go).as_micros() as u64;
                            let req = wire::publish(codec, id, &room_name, wire::body(scheduled, k, &padding));
                            id += 1;
                            m.published += 1;
                            m.in_flight.push_back(scheduled);
                            if ws.send(req).await.is_err() {
                                break;
                            }
                            next_send += interval;
                        }
                    }
                }
            }
            let _ = ws.close(None).await;
            (room, m)
        }));
    }
    let mut rooms: std::collections::HashMap<usize, Vec<Member>> = Default::default();
    for t in tasks {
        let (room, m) = t.await?;
        rooms.entry(room).or_default().push(m);
    }
    for members in rooms.values() {
        // The room's last offset: the highest any member acked or received.
        let last = members
            .iter()
            .map(|m| m.max_acked.max(m.expected.saturating_sub(1)))
            .max()
            .unwrap_or(0);
        for m in members {
            report.published += m.published;
            report.acked += m.acked;
            report.errors += m.errors;
            report.deliveries += m.deliveries;
            report.delivered_bytes += m.delivered_bytes;
            report.duplicated += m.duplicated;
            report.lost += m.gaps + last.saturating_sub(m.expected.saturating_sub(1));
        }
    }
    report.latency = Latencies::from_histogram(&histogram.lock().expect("histogram"));
    report.ack_latency = Latencies::from_histogram(&ack_histogram.lock().expect("histogram"));
    report.cross_node_latency =
        Latencies::from_histogram(&cross_histogram.lock().expect("histogram"));
    Ok(report)
}

pub fn parent(args: &FanoutArgs, pool: &mut Workers) -> Result<Summary> {
    pool.wait_ready()?;
    let pids = &args.common.server_pid;
    let cpu_before: f64 = pids.iter().filter_map(|p| stats::cpu_seconds(*p)).sum();
    let t0 = std::time::Instant::now();
    pool.go()?;
    let reports: Vec<Report> = pool.reports()?;
    let cpu = (pids
        .iter()
        .filter_map(|p| stats::cpu_seconds(*p))
        .sum::<f64>()
        - cpu_before)
        / t0.elapsed().as_secs_f64();
    let mut h = stats::histogram();
    let mut acks = stats::histogram();
    let mut cross = stats::histogram();
    let mut sum = Report::default();
    for r in reports {
        sum.connections += r.connections;
        sum.failures += r.failures;
        sum.published += r.published;
        sum.acked += r.acked;
        sum.errors += r.errors;
        sum.deliveries += r.deliveries;
        sum.delivered_bytes += r.delivered_bytes;
        sum.lost += r.lost;
        sum.duplicated += r.duplicated;
        sum.first_error = sum.first_error.or(r.first_error);
        r.latency.into_histogram(&mut h);
        r.ack_latency.into_histogram(&mut acks);
        r.cross_node_latency.into_histogram(&mut cross);
    }
    let p = stats::percentiles(&h);
    let a = stats::percentiles(&acks);
    let x = stats::percentiles(&cross);
    let secs = args.common.duration.as_secs_f64();
    let json = json!({
        "scenario": "fanout",
        "urls": args.common.url,
        "rooms": args.rooms,
        "members": args.members,
        "connections": sum.connections,
        "failures": sum.failures,
        "rate": args.rate,
        "body_bytes": args.body_bytes,
        "codec": if args.common.proto { "proto" } else { "json" },
        "duration_secs": secs,
        "published": sum.published,
        "acked": sum.acked,
        "errors": sum.errors,
        "deliveries": sum.deliveries,
        "deliveries_per_sec": sum.deliveries as f64 / secs,
        "bytes_per_delivery": sum.delivered_bytes as f64 / sum.deliveries.max(1) as f64,
        "latency_ms": { "p50": p.p50, "p95": p.p95, "p99": p.p99, "max": p.max },
        "ack_latency_ms": { "p50": a.p50, "p95": a.p95, "p99": a.p99, "max": a.max },
        "acks_per_sec": sum.acked as f64 / secs,
        "cross_node_latency_ms": { "p50": x.p50, "p95": x.p95, "p99": x.p99, "max": x.max, "count": x.count },
        "lost": sum.lost,
        "duplicated": sum.duplicated,
        "server_cpu_cores": if pids.is_empty() { serde_json::Value::Null } else { json!(cpu) },
        "first_error": sum.first_error,
    });
    let human = format!(
        "fanout: {} connections ({} failed), {} rooms x {}, {:.0} msg/s for {secs:.0} s\n\
         published {} acked {} errors {}; deliveries {} = {:.0}/s, {:.1} bytes each\n\
         delivery latency p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms; lost {} duplicated {}{}\n\
         ack latency p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n\
         cross-node deliveries {}: p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        sum.connections,
        sum.failures,
        args.rooms,
        args.members,
        args.rate,
        sum.published,
        sum.acked,
        sum.errors,
        sum.deliveries,
        sum.deliveries as f64 / secs,
        sum.delivered_bytes as f64 / sum.deliveries.max(1) as f64,
        p.p50,
        p.p95,
        p.p99,
        p.max,
        sum.lost,
        sum.duplicated,
        if pids.is_empty() {
            String::new()
        } else {
            format!("; server CPU {cpu:.2} cores")
        },
        a.p50,
        a.p95,
        a.p99,
        a.max,
        x.count,
        x.p50,
        x.p95,
        x.p99,
        x.max,
    );
    Ok(Summary { human, json })
}
