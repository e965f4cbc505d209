//! Metrics an operator can use, checked against what reads them: a real Prometheus (Debian's
//! `prometheus`, started here on a free port with its own directory, and stopped here) scrapes
//! an in-process Nebula and must know every family's TYPE and HELP and answer every query of
//! the Grafana dashboard; each of those queries names only series that /metrics exposes; and
//! the HTMX dashboard's fragments (charts, busiest rooms, every node of a cluster) render,
//! escaped, under the page's Content-Security-Policy.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const DASHBOARD: &str = "deploy/grafana/dashboards/nebula.json";
const DATASOURCE: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";

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
fn dashboard_queries() -> Result<Vec<(String, String)>> {
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

/// What the page must never carry under its CSP: inline styles, inline scripts, event
/// handler attributes. Escaped text has no `<`, so every `<` here opens a real tag.
fn assert_csp_clean(what: &str, html: &str) -> Result<()> {
    ensure!(
        !html.contains("<style"),
        "{what} has a <style> element: {html}"
    );
    for tag in html.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        ensure!(
            !tag.contains("style="),
            "{what} has a style attribute: <{tag}>"
        );
        ensure!(
            !tag.split_whitespace()
                .skip(1)
                .any(|attr| attr.starts_with("on")),
            "{what} has an event handler: <{tag}>"
        );
        ensure!(
            !tag.starts_with("script") || tag.contains(" src="),
            "{what} has an inline script: <{tag}>"
        );
    }
    Ok(())
}

/// The dashboard's fragments over HTTP: charts as SVG with lines, the busiest rooms first,
/// this node's figures with a hostile node id escaped, and no inline style or script anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_charts_and_lists_the_busiest_rooms() -> Result<()> {
    const NODE: &str = "<img src=x onerror=alert(1)>&'\"";
    let mut s = TestServer::start(|c| c.node_id = Some(NODE.into())).await;
    let page = http(s.addr, "GET", "/dashboard", &[], "").await?;
    ensure!(page.status == 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    ensure!(
        csp.contains("script-src 'self'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    for fragment in ["charts", "stats", "rooms", "nodes"] {
        ensure!(
            page.body
                .contains(&format!("hx-get=\"/dashboard/{fragment}\"")),
            "{fragment}"
        );
    }
    assert_csp_clean("/dashboard", &page.body)?;
    ensure!(
        page.body
            .contains("<script src=\"/static/htmx.min.js\"></script>")
    );
    ensure!(page.body.contains("\"includeIndicatorStyles\": false"));

    let mut c = Client::login(s.addr, "carol").await?;
    c.join("busy-room").await?;
    for i in 0..30 {
        c.publish("busy-room", &format!("m{i}")).await?;
    }
    c.join("quiet-room").await?;
    c.publish("quiet-room", "just one").await?;
    // Every series has a point once two samples (2 s apart) hold the traffic.
    let charts = until(
        Duration::from_secs(10),
        "every chart has its lines",
        || async {
            let charts = http(s.addr, "GET", "/dashboard/charts", &[], "")
                .await?
                .body;
            Ok((charts.matches("<path class=\"line").count() == 8, charts))
        },
    )
    .await?;
    ensure!(charts.matches("<svg").count() == 5, "{charts}");
    for title in [
        "Messages / s",
        "Connections",
        "Delivery latency",
        "Ack latency",
        "Resident memory",
    ] {
        ensure!(charts.contains(title), "no chart {title}");
    }
    ensure!(charts.contains("p99 <b>"), "{charts}");
    assert_csp_clean("/dashboard/charts", &charts)?;

    let rooms = http(s.addr, "GET", "/dashboard/rooms", &[], "").await?.body;
    let busy = rooms
        .find(">busy-room<")
        .context("busy-room is not listed")?;
    let quiet = rooms
        .find(">quiet-room<")
        .context("quiet-room is not listed")?;
    ensure!(busy < quiet, "the busiest room comes first: {rooms}");
    ensure!(
        rooms.contains("<td class=\"name\">busy-room</td><td class=\"v\">1</td><td class=\"v\">1</td><td class=\"v\">30</td><td class=\"v\">30</td>"),
        "busy-room: 1 user, 1 connection, offset 30, 30 delivered: {rooms}"
    );
    assert_csp_clean("/dashboard/rooms", &rooms)?;

    let stats = http(s.addr, "GET", "/dashboard/stats", &[], "").await?.body;
    ensure!(
        !stats.contains("<img"),
        "the node id was not escaped: {stats}"
    );
    ensure!(
        stats.contains("&lt;img src=x onerror=alert(1)&gt;&amp;&#39;&quot;"),
        "{stats}"
    );
    let nodes = http(s.addr, "GET", "/dashboard/nodes", &[], "").await?.body;
    ensure!(nodes.contains("single node"), "{nodes}");
    drop(c);
    s.shutdown().await;
    Ok(())
}

/// In a cluster every node's dashboard shows every node's figures, this node marked and each
/// id escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_of_a_cluster_shows_every_node() -> Result<()> {
    const SECRET: &str = "metrics-test-secret-of-32-bytes-at-least";
    let redis = RedisServer::start()?;
    let node = |id: &'static str| {
        let url = redis.url();
        TestServer::start(move |c| {
            c.redis_url = Some(url);
            c.secret = Some(SECRET.into());
            c.node_id = Some(id.into());
        })
    };
    let mut a = node("alpha<1>").await;
    let mut b = node("beta&2").await;
    let carol = Client::login(b.addr, "carol").await?;
    let nodes = until(
        Duration::from_secs(10),
        "both nodes on alpha's dashboard",
        || async {
            let nodes = http(a.addr, "GET", "/dashboard/nodes", &[], "").await?.body;
            // beta's figures: carol's one connection.
            let both = nodes.contains("alpha&lt;1&gt; <span class=\"muted\">(this node)</span>")
                && nodes.contains("<td class=\"name\">beta&amp;2</td><td class=\"v\">1</td>");
            Ok((both, nodes))
        },
    )
    .await?;
    ensure!(
        nodes.contains("<tr class=\"this\"><td class=\"name\">alpha&lt;1&gt;"),
        "{nodes}"
    );
    ensure!(!nodes.contains("<1>"), "{nodes}");
    assert_csp_clean("/dashboard/nodes", &nodes)?;
    // And beta's dashboard marks beta.
    let from_b = http(b.addr, "GET", "/dashboard/nodes", &[], "").await?.body;
    ensure!(
        from_b.contains("<tr class=\"this\"><td class=\"name\">beta&amp;2"),
        "{from_b}"
    );
    drop(carol);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
