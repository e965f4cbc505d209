//! How the server answers HTTP: the response builder with the security headers every answer
//! carries, and the errors, whose bodies carry a `code` as WebSocket errors do.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

pub(super) type Body = Full<Bytes>;

/// Errors of the HTTP routes, each with the `code` its body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HttpError {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Timeout,
    RateLimited,
    Unavailable,
}

impl HttpError {
    fn status(self) -> StatusCode {
        match self {
            HttpError::BadRequest => StatusCode::BAD_REQUEST,
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden => StatusCode::FORBIDDEN,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::Timeout => StatusCode::REQUEST_TIMEOUT,
            HttpError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            HttpError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(self) -> &'static str {
        match self {
            HttpError::BadRequest => "bad_request",
            HttpError::Unauthorized => "unauthorized",
            HttpError::Forbidden => "forbidden",
            HttpError::NotFound => "not_found",
            HttpError::Timeout => "timeout",
            HttpError::RateLimited => "rate_limited",
            HttpError::Unavailable => "unavailable",
        }
    }

    /// The answer: `{"error": message, "code": code}`.
    pub(super) fn answer(self, message: &str) -> Response<Body> {
        let mut r = json(
            self.status(),
            serde_json::json!({ "error": message, "code": self.code() }),
        );
        match self {
            HttpError::RateLimited => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            HttpError::Timeout => {
                // The body did not arrive in time: the connection is not reused.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

/// The page allows only its own scripts, styles and connections, and no framing by others.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

pub(super) fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("valid header"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(h);
    r
}

/// The security headers of every answer.
pub(super) fn secure(h: &mut hyper::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

pub(super) fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    response(status, "application/json", value.to_string())
}
