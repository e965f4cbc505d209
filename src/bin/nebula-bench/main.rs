//! `nebula-bench`: Nebula's load generator.
//!
//! ```text
//! nebula-bench connect --url http://127.0.0.1:8080 --connections 19000 --duration 30s --server-pid PID
//! nebula-bench fanout  --url URL[,URL...] --rooms 400 --members 50 --rate 1000 --body-bytes 100 --duration 30s [--proto]
//! ```
//!
//! Sockets are spread over source addresses 127.0.0.2..9 and, past 18,000 connections, over
//! several worker processes (a process may hold at most 20,000 open files here). Workers are this
//! same binary with `--worker I/W`; they report JSON on stdout and the parent merges it.
#![forbid(unsafe_code)]

mod connect;
mod fanout;
mod stats;
mod wire;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

/// Connections one worker process holds at most.
const PER_WORKER: usize = 18_000;

#[derive(Parser, Debug, Clone)]
#[command(name = "nebula-bench", about = "Load generator for Nebula")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// Open N connections and hold them: connect rate, handshake latency, server memory and CPU.
    Connect(ConnectArgs),
    /// Rooms of M members publishing at a fixed total rate: delivery latency, loss, duplicates.
    Fanout(FanoutArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server URL(s), comma-separated; connections are spread round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// How long to hold (connect) or publish (fanout), e.g. 30s, 2m.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// PIDs of the server processes, for memory and CPU readings.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Write every figure to this JSON file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Worker processes (default: one per 18,000 connections).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Speak Protobuf (subprotocol `nebula.v1.proto`) instead of JSON.
    #[arg(long)]
    pub proto: bool,
    /// Internal: this process is worker I of W.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

impl Common {
    pub fn codec(&self) -> nebula::protocol::Codec {
        if self.proto {
            nebula::protocol::Codec::Proto
        } else {
            nebula::protocol::Codec::Json
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Handshakes in flight at once per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Messages per second published in total (open loop: sends follow a schedule).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Seconds to wait after publishing stops, for deliveries in flight.
    #[arg(long, default_value_t = 3)]
    pub drain: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `I/W` of a worker.
fn worker_slot(common: &Common) -> Result<Option<(usize, usize)>> {
    let Some(w) = &common.worker else {
        return Ok(None);
    };
    let (i, n) = w.split_once('/').context("--worker I/W")?;
    Ok(Some((i.parse()?, n.parse()?)))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let common = match &cli.scenario {
        Scenario::Connect(a) => &a.common,
        Scenario::Fanout(a) => &a.common,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some((index, workers)) = worker_slot(common)? {
        // A worker: do this slice, print "ready", wait for "go", finish, print the report.
        return runtime.block_on(async {
            let report = match &cli.scenario {
                Scenario::Connect(a) => {
                    serde_json::to_string(&connect::worker(a, index, workers).await?)?
                }
                Scenario::Fanout(a) => {
                    serde_json::to_string(&fanout::worker(a, index, workers).await?)?
                }
            };
            println!("{report}");
            Ok(())
        });
    }
    let connections = match &cli.scenario {
        Scenario::Connect(a) => a.connections,
        Scenario::Fanout(a) => a.rooms * a.members,
    };
    let workers = common
        .workers
        .unwrap_or(connections.div_ceil(PER_WORKER))
        .max(1);
    let mut pool = Workers::spawn(workers)?;
    let summary = match &cli.scenario {
        Scenario::Connect(a) => connect::parent(a, &mut pool)?,
        Scenario::Fanout(a) => fanout::parent(a, &mut pool)?,
    };
    println!("{}", summary.human);
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary.json)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// What a scenario prints and writes.
pub struct Summary {
    pub human: String,
    pub json: serde_json::Value,
}

/// The worker processes of a run.
pub struct Workers {
    children: Vec<(std::process::Child, BufReader<std::process::ChildStdout>)>,
}

impl Workers {
    fn spawn(n: usize) -> Result<Workers> {
        let exe = std::env::current_exe()?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut children = Vec::new();
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg("--worker")
                .arg(format!("{i}/{n}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawning a worker")?;
            let out = BufReader::new(child.stdout.take().context("worker stdout")?);
            children.push((child, out));
        }
        Ok(Workers { children })
    }

    /// Waits until every worker printed `ready`.
    pub fn wait_ready(&mut self) -> Result<()> {
        for (i, (_, out)) in self.children.iter_mut().enumerate() {
            let mut line = String::new();
            out.read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("worker {i} failed before it was ready: {line:?}");
            }
        }
        Ok(())
    }

    /// Tells every worker to go.
    pub fn go(&mut self) -> Result<()> {
        for (child, _) in &mut self.children {
            writeln!(child.stdin.as_mut().context("worker stdin")?, "go")?;
        }
        Ok(())
    }

    /// Every worker's JSON report.
    pub fn reports<T: serde::de::DeserializeOwned>(&mut self) -> Result<Vec<T>> {
        let mut reports = Vec::new();
        for (i, (child, out)) in self.children.iter_mut().enumerate() {
            let mut line = String::new();
            out.read_line(&mut line)?;
            let status = child.wait()?;
            if !status.success() {
                bail!("worker {i} exited with {status}");
            }
            reports.push(
                serde_json::from_str(&line)
                    .with_context(|| format!("worker {i} report {line:?}"))?,
            );
        }
        Ok(reports)
    }
}

/// In a worker: print `ready`, then wait for the parent's `go`.
pub async fn ready_then_wait_for_go() -> Result<()> {
    println!("ready");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| ())
    })
    .await??;
    Ok(())
}
