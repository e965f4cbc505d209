//! The web chat page, the HTMX dashboard and their static files, built into the binary (no
//! build step).

/// The content type and bytes of a static asset, by request path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../static/index.html"),
        ),
        "/static/app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../static/app.js"),
        ),
        "/static/style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../static/style.css"),
        ),
        "/dashboard" => (
            "text/html; charset=utf-8",
            include_bytes!("../static/dashboard.html"),
        ),
        "/static/htmx.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../static/htmx.min.js"),
        ),
        _ => return None,
    })
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The dashboard's table of this node's figures (an HTML fragment for htmx).
pub fn dashboard_rows(rows: &[(&str, String)]) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn dashboard_escapes_values() {
        let html = super::dashboard_rows(&[("node", "<b>x</b>".into())]);
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(!html.contains("<b>"));
    }
}
