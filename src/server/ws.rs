//! The WebSocket handshake on `GET /ws`: session, origin, rate and readiness checks, the
//! subprotocol (codec) choice, then the upgraded socket becomes a session.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::App;
use super::answer::{Body, HttpError, secure};
use super::guard::{origin_allowed, rate_limited, session};
use crate::auth::Session;
use crate::conn::Closer;
use crate::protocol::Codec;
use crate::session::{self, SessionInfo};

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The codec of the first subprotocol the client offers that Nebula speaks, and whether the
/// answer names it; JSON when the client offers none.
fn choose_codec(req: &Request<Incoming>) -> (Codec, bool) {
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(Codec::from_subprotocol);
    match offered {
        Some(codec) => (codec, true),
        None => (Codec::Json, false),
    }
}

pub(super) fn upgrade(mut req: Request<Incoming>, ip: IpAddr, app: &Arc<App>) -> Response<Body> {
    if !app.limits.allow_connect(ip) {
        return rate_limited(app);
    }
    let Some(Session {
        user, expires_at, ..
    }) = session(app, &req)
    else {
        return HttpError::Unauthorized.answer("log in first (POST /api/login)");
    };
    if !origin_allowed(app, &req) {
        return HttpError::Forbidden.answer("origin not allowed");
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(accept), true, true, true) = (
        key,
        version_ok,
        header_has(&req, header::UPGRADE, "websocket"),
        header_has(&req, header::CONNECTION, "upgrade"),
    ) else {
        return HttpError::BadRequest.answer("expected a WebSocket upgrade (version 13)");
    };
    if !app.ready.load(Ordering::SeqCst) {
        return HttpError::Unavailable.answer("shutting down");
    }
    let (codec, named) = choose_codec(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let closer = Closer::child_of(&app.session_stop);
    let ctx = app.ctx.clone();
    let sessions = app.sessions.clone();
    app.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(session::websocket_config()),
        )
        .await;
        let info = SessionInfo {
            conn,
            user,
            codec,
            expires_at,
        };
        session::run(socket, info, closer, ctx, &sessions).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is ASCII"),
    );
    if named {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    secure(h);
    r
}
