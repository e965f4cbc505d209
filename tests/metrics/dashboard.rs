//! The HTMX dashboard's fragments over HTTP, on one node and in a cluster.

use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::common::*;
use crate::until;

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
