//! The HTTP routes: health, readiness, metrics, the page and its files, the dashboard and its
//! fragments, login, logout and `me`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::answer::{Body, HttpError, json, response};
use super::guard::{origin_allowed, rate_limited, session};
use super::{App, HEADER_READ_TIMEOUT, ws};
use crate::auth::{self, User};
use crate::metrics::CONTENT_TYPE;
use crate::store::WriteOp;
use crate::web::{self, dashboard};

pub(super) async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    app: Arc<App>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => response(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => readyz(&app),
        (&Method::GET, "/metrics") => metrics(&app),
        (&Method::GET, "/dashboard/stats") => fragment(dashboard::stats(&dashboard_rows(&app))),
        (&Method::GET, "/dashboard/charts") => fragment(dashboard::charts(&app.metrics.trends())),
        (&Method::GET, "/dashboard/rooms") => fragment(dashboard::rooms(
            &app.ctx.hub.busiest(dashboard::BUSIEST).await,
        )),
        (&Method::GET, "/dashboard/nodes") => fragment(dashboard::nodes(
            &app.ctx.broker.nodes().await,
            &app.ctx.node_id,
            app.cluster,
        )),
        (&Method::POST, "/api/login") => login(req, peer.ip(), &app).await,
        (&Method::POST, "/api/logout") => logout(req, &app).await,
        (&Method::GET, "/api/me") => match session(&app, &req) {
            Some(s) => json(StatusCode::OK, serde_json::json!({ "user": s.user })),
            None => HttpError::Unauthorized.answer("not logged in"),
        },
        (&Method::GET, "/ws") => ws::upgrade(req, peer.ip(), &app),
        (&Method::GET, p) => match web::asset(p) {
            Some((content_type, body)) => {
                response(StatusCode::OK, content_type, Bytes::from_static(body))
            }
            None => HttpError::NotFound.answer("not found"),
        },
        _ => HttpError::NotFound.answer("not found"),
    }
}

fn readyz(app: &App) -> Response<Body> {
    let health = app.ctx.broker.health();
    let unready = if !app.ready.load(Ordering::SeqCst) {
        Some("shutting down\n")
    } else if !health.connected {
        Some("not following the cluster (redis unreachable); publishes get unavailable\n")
    } else if !health.caught_up {
        Some("catching up with the cluster\n")
    } else if !health.accepting {
        Some("repairing the cluster's numbering; publishes get unavailable\n")
    } else {
        None
    };
    match unready {
        None => response(StatusCode::OK, "text/plain", "ready\n"),
        Some(why) => response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
    }
}

fn metrics(app: &App) -> Response<Body> {
    let m = &app.metrics;
    let health = app.ctx.broker.health();
    m.tasks_alive.set(app.alive_tasks() as i64);
    m.ready.set(i64::from(
        app.ready.load(Ordering::SeqCst) && health.ready(),
    ));
    m.redis_connected
        .set(i64::from(app.cluster && health.connected));
    response(StatusCode::OK, CONTENT_TYPE, m.render())
}

/// A dashboard fragment (HTML that htmx swaps into the page).
fn fragment(html: String) -> Response<Body> {
    response(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn dashboard_rows(app: &App) -> Vec<(&'static str, String)> {
    let m = &app.metrics;
    let health = app.ctx.broker.health();
    let redis = match (app.cluster, health.connected) {
        (false, _) => "single node",
        (true, true) => "connected",
        (true, false) => "disconnected",
    };
    vec![
        ("node", app.ctx.node_id.to_string()),
        ("ready", app.ready.load(Ordering::SeqCst).to_string()),
        ("redis", redis.to_string()),
        ("connections", m.connections.get().to_string()),
        ("rooms with members here", m.rooms.get().to_string()),
        ("messages published", m.messages_published.get().to_string()),
        ("messages delivered", m.messages_delivered.get().to_string()),
        ("publishes refused", m.publishes_refused.get().to_string()),
        (
            "slow consumers closed (4008)",
            m.slow_consumers.get().to_string(),
        ),
        ("tasks alive", app.alive_tasks().to_string()),
    ]
}

async fn login(req: Request<Incoming>, ip: IpAddr, app: &App) -> Response<Body> {
    if !app.limits.allow_connect(ip) {
        return rate_limited(app);
    }
    if !origin_allowed(app, &req) {
        return HttpError::Forbidden.answer("origin not allowed");
    }
    let existing = session(app, &req).map(|s| s.user);
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // The header timeout covers only the headers: the body gets its own deadline.
    let body = Limited::new(req.into_body(), 4096).collect();
    let body = match tokio::time::timeout(HEADER_READ_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return HttpError::BadRequest.answer("body too large or unreadable"),
        Err(_) => return HttpError::Timeout.answer("the body did not arrive within 10 s"),
    };
    let name: Option<String> = if is_json {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned))
    } else {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.into_owned())
    };
    let Some(name) = name else {
        return HttpError::BadRequest.answer("name is missing");
    };
    let name = match auth::validate_name(&name) {
        Ok(n) => n,
        Err(e) => return HttpError::BadRequest.answer(&e.to_string()),
    };
    let id = existing.map_or_else(auth::new_user_id, |u| u.id);
    let generation = app.revocations.current(&id);
    let user = User {
        id,
        name: name.into(),
    };
    let mut r = json(StatusCode::OK, serde_json::json!({ "user": user }));
    let cookie = app.keys.set_cookie(&user, auth::now_secs(), generation);
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie is ASCII"),
    );
    r
}

/// Clears the cookie and logs the session out everywhere: every cookie of this user issued
/// before is refused afterwards, on every node.
async fn logout(req: Request<Incoming>, app: &App) -> Response<Body> {
    if !origin_allowed(app, &req) {
        return HttpError::Forbidden.answer("origin not allowed");
    }
    if let Some(session) = session(app, &req) {
        let user = session.user.id;
        let generation = app.revocations.revoke(&user);
        let op = WriteOp::Revoke {
            user: user.clone(),
            generation,
            at: auth::now_secs(),
        };
        if app.ctx.store.write(op).await.is_err() {
            tracing::warn!(
                "a logout was not stored (the store is closing); it holds until a restart"
            );
        }
        app.ctx.broker.revoked(&user, generation);
    }
    let mut r = json(StatusCode::OK, serde_json::json!({}));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&auth::clear_cookie()).expect("valid"),
    );
    r
}
