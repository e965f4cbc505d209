//! The web chat page and its static files, built into the binary (no build step).

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
        _ => return None,
    })
}
