//! A real Prometheus (Debian's `prometheus`) scrapes an in-process Nebula.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::common::*;
use crate::grafana::dashboard_queries;
use crate::{Traffic, families, until};

/// A real `prometheus` scraping one target every second, in its own temp dir.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: nebula\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "prometheus is missing: `apt-get install --no-install-recommends prometheus` \
                 (Debian's package; scripts/prereqs.sh installs it)",
            )?;
        let mut p = Prometheus { child, addr, dir };
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    p.log()
                );
            }
            if let Ok(r) = http(addr, "GET", "/-/ready", &[], "").await
                && r.status == 200
            {
                return Ok(p);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("prometheus was not ready within 30 s:\n{}", p.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of an API answer (`status: success`).
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let r = http(self.addr, "GET", &format!("{path}?{query}"), &[], "").await?;
        let body = r.json();
        ensure!(
            r.status == 200 && body["status"] == "success",
            "{path} {params:?}: {} {}",
            r.status,
            r.body
        );
        Ok(body["data"].clone())
    }

    /// The series of an instant query.
    async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        ensure!(data["resultType"] == "vector", "{promql}: {data}");
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGTERM lets it close its TSDB; SIGKILL if it takes longer than 5 s.
        let _term = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus scrapes Nebula: the target is up, every family's TYPE and HELP are known
/// to it, the histograms and the process series answer queries, and so does every query of
/// the Grafana dashboard, per node (with an `instance`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_knows_every_family_and_answers_the_dashboard() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let traffic = Traffic::start(s.addr, "lobby");
    let prometheus = Prometheus::start(s.addr).await?;
    let instance = s.addr.to_string();
    let up = until(Duration::from_secs(30), "the target is up", || async {
        let targets = prometheus.api("/api/v1/targets", &[]).await?;
        let target = targets["activeTargets"][0].clone();
        Ok((target["health"] == "up", target))
    })
    .await;
    up.with_context(|| prometheus.log())?;

    // Every family, with the type and help /metrics gives it, as this target's metadata and
    // in Prometheus's metadata of all targets.
    let exposition = http(s.addr, "GET", "/metrics", &[], "").await?.body;
    let families = families(&exposition);
    ensure!(families.len() > 20, "{families:?}");
    let target_metadata = prometheus
        .api(
            "/api/v1/targets/metadata",
            &[("match_target", "{job=\"nebula\"}")],
        )
        .await?;
    let known: BTreeMap<String, (String, String)> = target_metadata
        .as_array()
        .context("metadata")?
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (s("metric"), (s("type"), s("help")))
        })
        .collect();
    let all_metadata = prometheus.api("/api/v1/metadata", &[]).await?;
    for (name, (kind, help)) in &families {
        ensure!(
            !kind.is_empty() && !help.is_empty(),
            "{name} lacks TYPE or HELP"
        );
        ensure!(
            known.get(name) == Some(&(kind.clone(), help.clone())),
            "prometheus knows {name} as {:?}, /metrics says ({kind:?}, {help:?})",
            known.get(name)
        );
        let entry = &all_metadata[name.as_str()][0];
        ensure!(
            entry["type"] == kind.as_str() && entry["help"] == help.as_str(),
            "/api/v1/metadata has {name} as {entry}"
        );
    }
    ensure!(families["nebula_delivery_latency_seconds"].0 == "histogram");
    ensure!(families["nebula_ack_latency_seconds"].0 == "histogram");
    ensure!(families["process_cpu_seconds"].0 == "counter");

    // The histograms and the process series are queryable, with sensible values.
    for (promql, what) in [
        (
            "nebula_delivery_latency_seconds_count > 0",
            "deliveries observed",
        ),
        ("nebula_ack_latency_seconds_count > 0", "acks observed"),
        ("nebula_ack_latency_seconds_sum > 0", "ack latencies summed"),
        (
            "count(nebula_delivery_latency_seconds_bucket) == 15",
            "every delivery bucket",
        ),
        (
            "nebula_delivery_latency_seconds_bucket{le=\"+Inf\"} > 0",
            "the +Inf bucket",
        ),
        (
            "histogram_quantile(0.99, rate(nebula_ack_latency_seconds_bucket[1m])) > 0",
            "ack p99",
        ),
        ("process_resident_memory_bytes > 1e6", "resident memory"),
        ("process_cpu_seconds_total > 0", "CPU time"),
        ("process_open_fds > 0", "open fds"),
        ("process_max_fds > 0", "max fds"),
        ("process_start_time_seconds > 1.6e9", "start time"),
        ("nebula_tasks_alive > 0", "tasks alive"),
        ("nebula_connections >= 2", "connections"),
    ] {
        eventually(Duration::from_secs(20), what, || async {
            Ok(!prometheus.query(promql).await?.is_empty())
        })
        .await
        .with_context(|| promql.to_string())?;
    }

    // Every query of the Grafana dashboard answers a number for this node. A rate needs two
    // scrapes in its window, hence the wait.
    for (title, expr) in dashboard_queries()? {
        let answer = until(
            Duration::from_secs(20),
            &format!("{title}: {expr}"),
            || async {
                let answer = prometheus.query(&expr).await?;
                let numbers = answer.iter().all(|series| {
                    series["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                });
                Ok((!answer.is_empty() && numbers, answer))
            },
        )
        .await?;
        for series in &answer {
            ensure!(
                series["metric"]["instance"] == instance.as_str(),
                "panel {title:?}: {expr} loses the node (instance): {series}"
            );
        }
    }
    traffic.stop().await?;
    drop(prometheus);
    s.shutdown().await;
    Ok(())
}
