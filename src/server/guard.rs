//! The checks a request passes before it is served: its session (signed, not expired, not
//! logged out), its `Origin`, its client's rate.

use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;
use hyper::header;

use super::App;
use super::answer::{Body, HttpError};
use crate::auth::{self, Session};

/// The request's session, if its cookie is valid and not logged out.
pub(super) fn session(app: &App, req: &Request<Incoming>) -> Option<Session> {
    let header = req.headers().get(header::COOKIE)?.to_str().ok()?;
    let session = app
        .keys
        .verify_cookie_header(header, auth::now_secs())
        .ok()?;
    app.revocations.check(session).ok()
}

pub(super) fn rate_limited(app: &App) -> Response<Body> {
    app.metrics.rate_limited.inc();
    HttpError::RateLimited.answer("too many requests; slow down")
}

/// True when the request's `Origin` is this server's own (same host as the `Host` header) or
/// allowed by `--allowed-origin`; a request without `Origin` (not a browser) passes.
pub(super) fn origin_allowed(app: &App, req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    own.is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
        || app
            .allowed_origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin))
}
