//! The dashboard's fragments, each an HTML snippet that `static/dashboard.html` swaps in every
//! 2 s with htmx: this node's figures, its charts, its busiest rooms, and every node of the
//! cluster. Every text that comes from outside the binary (a room name, a node id, a figure
//! another node wrote into Redis) goes through [`escape`].

use std::time::Duration;

use super::chart::{Line, Unit, chart};
use super::escape;
use crate::broker::NodeFigures;
use crate::hub::RoomSummary;
use crate::metrics::history::{EVERY, KEPT, Trends};

/// Rooms the dashboard lists.
pub const BUSIEST: usize = 10;

/// The span of the charts: the history the server has, rounded up to 30 s, 1, 2 or 3 minutes,
/// up to what it keeps (5 minutes), so that a node just started shows lines, not a corner.
fn span(t: &Trends) -> Duration {
    let kept = EVERY * KEPT as u32;
    let oldest = t.connections.first().map_or(Duration::ZERO, |p| p.ago);
    [30, 60, 120, 180]
        .into_iter()
        .map(Duration::from_secs)
        .find(|&span| span >= oldest && span < kept)
        .unwrap_or(kept)
}

/// This node's figures, as a two-column table.
pub fn stats(rows: &[(&str, String)]) -> String {
    let mut html = String::from("<table>");
    for (name, value) in rows {
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"v\">{}</td></tr>",
            escape(name),
            escape(value)
        ));
    }
    html.push_str("</table>");
    html
}

/// The charts of the last minutes: messages per second, connections, delivery and ack
/// latency, memory.
pub fn charts(t: &Trends) -> String {
    let span = span(t);
    let line = |label, points| Line { label, points };
    [
        chart(
            "Messages / s",
            Unit::PerSecond,
            span,
            &[
                line("published", &t.published),
                line("delivered", &t.delivered),
            ],
        ),
        chart(
            "Connections",
            Unit::Count,
            span,
            &[line("open", &t.connections)],
        ),
        chart(
            "Delivery latency (publish → push queued)",
            Unit::Seconds,
            span,
            &[line("p50", &t.delivery_p50), line("p99", &t.delivery_p99)],
        ),
        chart(
            "Ack latency (publish → ack)",
            Unit::Seconds,
            span,
            &[line("p50", &t.ack_p50), line("p99", &t.ack_p99)],
        ),
        chart(
            "Resident memory",
            Unit::Bytes,
            span,
            &[line("RSS", &t.resident_bytes)],
        ),
    ]
    .concat()
}

/// The busiest rooms with members on this node.
pub fn rooms(rooms: &[RoomSummary]) -> String {
    if rooms.is_empty() {
        return "<p class=\"muted\">No room has members on this node.</p>".into();
    }
    let mut html = String::from(
        "<table class=\"grid-table\"><thead><tr><th>room</th><th>users</th>\
         <th>connections</th><th>latest offset</th><th>delivered here</th></tr></thead><tbody>",
    );
    for r in rooms {
        html.push_str(&format!(
            "<tr><td class=\"name\">{}</td><td class=\"v\">{}</td><td class=\"v\">{}</td>\
             <td class=\"v\">{}</td><td class=\"v\">{}</td></tr>",
            escape(&r.name),
            r.users,
            r.connections,
            r.last,
            r.delivered
        ));
    }
    html.push_str("</tbody></table>");
    html
}

/// The figures every node of the cluster last published, this node's row marked; a single
/// node has none to show.
pub fn nodes(nodes: &[NodeFigures], this_node: &str, cluster: bool) -> String {
    if !cluster {
        return "<p class=\"muted\">A single node: its figures are above.</p>".into();
    }
    if nodes.is_empty() {
        return "<p class=\"muted\">No node's figures could be read from Redis.</p>".into();
    }
    // The fields a node writes, in this order; any other a newer node writes follows.
    let mut columns: Vec<&str> = vec!["connections", "rooms", "published", "delivered", "ready"];
    for n in nodes {
        for key in n.figures.keys() {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let mut html = String::from("<table class=\"grid-table\"><thead><tr><th>node</th>");
    for c in &columns {
        html.push_str(&format!("<th>{}</th>", escape(c)));
    }
    html.push_str("</tr></thead><tbody>");
    for n in nodes {
        let this = n.node == this_node;
        html.push_str(if this { "<tr class=\"this\">" } else { "<tr>" });
        html.push_str(&format!("<td class=\"name\">{}", escape(&n.node)));
        if this {
            html.push_str(" <span class=\"muted\">(this node)</span>");
        }
        html.push_str("</td>");
        for c in &columns {
            let value = n.figures.get(*c).map_or("", String::as_str);
            html.push_str(&format!("<td class=\"v\">{}</td>", escape(value)));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::metrics::Metrics;
    use crate::metrics::history::Sample;

    const HOSTILE: &str = "<script>alert('x')</script>&\"";

    fn no_markup_from(html: &str) {
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
    }

    #[test]
    fn stats_escape_values() {
        let html = stats(&[("node", HOSTILE.into())]);
        no_markup_from(&html);
        assert!(html.starts_with("<table>"));
    }

    #[test]
    fn rooms_list_the_busiest_escaped() {
        let html = rooms(&[RoomSummary {
            name: HOSTILE.into(),
            users: 2,
            connections: 3,
            last: 40,
            delivered: 12,
        }]);
        no_markup_from(&html);
        assert!(html.contains("<td class=\"v\">3</td>"));
        assert!(rooms(&[]).contains("No room"));
    }

    #[test]
    fn nodes_show_every_figure_escaped() {
        let figures = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let html = nodes(
            &[
                NodeFigures {
                    node: HOSTILE.into(),
                    figures: figures(&[("connections", "4"), ("ready", "1")]),
                },
                NodeFigures {
                    node: "n2".into(),
                    figures: figures(&[("connections", "5"), (HOSTILE, "<b>")]),
                },
            ],
            "n2",
            true,
        );
        no_markup_from(&html);
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("<tr class=\"this\"><td class=\"name\">n2 "));
        assert!(nodes(&[], "n1", false).contains("single node"));
    }

    #[test]
    fn charts_draw_what_the_server_measured() {
        let m = Metrics::new();
        let start = Instant::now();
        m.history.push(Sample {
            at: start,
            ..m.sample()
        });
        m.messages_published.inc_by(4);
        Metrics::observe(&m.delivery_latency, Duration::from_millis(2));
        Metrics::observe(&m.ack_latency, Duration::from_millis(3));
        m.history.push(Sample {
            at: start + Duration::from_secs(2),
            ..m.sample()
        });
        let html = charts(&m.trends());
        assert_eq!(html.matches("<svg").count(), 5, "{html}");
        for title in [
            "Messages / s",
            "Connections",
            "Delivery latency",
            "Ack latency",
        ] {
            assert!(html.contains(title), "{title}");
        }
        // Lines for every chart: one interval, so every series has a point.
        assert_eq!(html.matches("<path class=\"line").count(), 8, "{html}");
        assert!(html.contains("published <b>2/s</b>"), "{html}");
        assert!(!html.contains("style="));
    }
}
