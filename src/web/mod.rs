//! The web chat page, the HTMX dashboard and their static files, built into the binary (no
//! build step). The dashboard's fragments ([`dashboard`]) and charts ([`chart`]) are HTML the
//! server renders; the page only swaps them in.

pub mod chart;
pub mod dashboard;

/// The content type and bytes of a static asset, by request path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../static/index.html"),
        ),
        "/static/app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../static/app.js"),
        ),
        "/static/style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../static/style.css"),
        ),
        "/dashboard" => (
            "text/html; charset=utf-8",
            include_bytes!("../../static/dashboard.html"),
        ),
        "/static/htmx.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../static/htmx.min.js"),
        ),
        _ => return None,
    })
}

/// Escapes text for HTML, in element content and in quoted attribute values alike.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_covers_text_and_attributes() {
        assert_eq!(
            super::escape(r#"<a href="x" title='y'>&amp;</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
    }
}
