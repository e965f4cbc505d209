//! The Grafana dashboard (deploy/grafana): every query names what /metrics exposes.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::common::*;
use crate::{Traffic, series};

const DASHBOARD: &str = "deploy/grafana/dashboards/nebula.json";
const DATASOURCE: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";

/// The metric names a PromQL expression selects: its identifiers, less function names (an
/// identifier before `(`), keywords, label names (inside `{}`, or the list after `by`,
/// `without`, `on`, `ignoring`, `group_left`, `group_right`), numbers, durations and strings.
fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "offset", "bool", "inf", "nan"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips to just past the `close` that ends what starts at `i` (an opening character).
    let skip = |i: usize, close: char| {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' {
                j += 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip(i, '}');
        } else if c == '[' {
            i = skip(i, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip(i, c);
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (le) (x)`: an aggregation before its grouping is no metric either.
            let rest: String = chars[next..].iter().collect();
            let before_grouping = ["by", "without"].iter().any(|g| {
                rest.strip_prefix(g)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
            let before_paren = chars.get(next) == Some(&'(') || before_grouping;
            if GROUPING.contains(&word.as_str()) {
                if before_paren {
                    i = skip(next, ')');
                }
            } else if !before_paren && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every query of the Grafana dashboard, with its panel's title.
pub(crate) fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{DASHBOARD} is not JSON"))?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        ensure!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().context("a target without expr")?;
            queries.push((title.clone(), expr.to_string()));
        }
    }
    Ok(queries)
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(metric_names("nebula_connections"), ["nebula_connections"]);
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (instance, le) (rate(nebula_ack_latency_seconds_bucket{job=\"nebula\", le!=\"+Inf\"}[1m])))"
        ),
        ["nebula_ack_latency_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum(rate(a_total[5m] offset 1m)) without (job) / on(instance) group_left(x) b > bool 1e3"
        ),
        ["a_total", "b"]
    );
    assert_eq!(
        metric_names("max_over_time(c:rule[1h:30s]) or Inf"),
        ["c:rule"]
    );
    assert_eq!(metric_names("sum without (job) (by_total)"), ["by_total"]);
}

/// The Grafana dashboard's every query names only series that /metrics exposes, and it has
/// the panels an operator needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_query_names_what_metrics_exposes() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let traffic = Traffic::start(s.addr, "lobby");
    eventually(WAIT, "acks and deliveries observed", || async {
        Ok(
            metric(s.addr, "nebula_ack_latency_seconds_count").await? > 0.0
                && metric(s.addr, "nebula_delivery_latency_seconds_count").await? > 0.0,
        )
    })
    .await?;
    traffic.stop().await?;
    let exposition = http(s.addr, "GET", "/metrics", &[], "").await?.body;
    let exposed = series(&exposition);
    let queries = dashboard_queries()?;
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        ensure!(!names.is_empty(), "panel {title:?}: no metric in {expr:?}");
        for name in names {
            ensure!(
                exposed.contains_key(&name),
                "panel {title:?} queries {name}, which /metrics does not expose ({expr})"
            );
            used.insert(name);
        }
    }
    // What an operator asked for: connections, messages/s, latency, tasks, memory and CPU,
    // the cluster's health, the store's and the slow clients'.
    for needed in [
        "nebula_connections",
        "nebula_messages_published_total",
        "nebula_messages_delivered_total",
        "nebula_delivery_latency_seconds_bucket",
        "nebula_ack_latency_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "nebula_tasks_alive",
        "nebula_redis_connected",
        "nebula_ingest_lag_milliseconds",
        "nebula_store_commit_failures_total",
        "nebula_slow_consumers_total",
    ] {
        ensure!(used.contains(needed), "no panel shows {needed}");
    }
    // Grafana finds its data source by the uid that provisioning gives it.
    let datasource =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DATASOURCE))?;
    ensure!(datasource.contains("uid: prometheus"), "{DATASOURCE}");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD),
    )?)?;
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        ensure!(panel["datasource"]["uid"] == "prometheus", "{panel}");
        ensure!(
            ids.insert(panel["id"].as_u64().context("a panel id")?),
            "ids repeat"
        );
        ensure!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
    }
    s.shutdown().await;
    Ok(())
}
