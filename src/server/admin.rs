//! The plain-HTTP services: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`, and the
//! forward-auth endpoints, answered by `authz`) and the HTTP listener, which redirects everything to HTTPS except
//! health checks and ACME HTTP-01 challenges.
//!
//! Nothing here proxies or authenticates; `/config` shows the running configuration without secrets, and only
//! on the admin listener, which operators keep off public networks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::listener::Plain;
use crate::auth::Endpoint;
use crate::config::Summary;
use crate::error::plain;
use crate::router::Host;
use crate::state::Shared;

/// Handles a request on a plain listener.
pub(crate) async fn handle(
    req: Request<Incoming>,
    kind: Plain,
    peer: SocketAddr,
    https_port: u16,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if let (Plain::Admin, Some(endpoint)) = (kind, Endpoint::from_path(path)) {
        return Ok(super::authz::serve(endpoint, &req, peer.ip(), &shared).await);
    }
    let resp = match (kind, path) {
        (_, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (_, "/readyz") if shared.is_ready() => plain(StatusCode::OK, "ready\n"),
        (_, "/readyz") => plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (Plain::Admin, "/metrics") => {
            let (entries, bytes) = shared.auth.token_cache_usage();
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            shared.metrics.token_cache_entries.set(gauge(entries));
            shared.metrics.token_cache_bytes.set(gauge(bytes));
            let (entries, bytes) = shared.auth.introspection_cache_usage().await;
            shared
                .metrics
                .introspection_cache_entries
                .set(gauge(entries));
            shared.metrics.introspection_cache_bytes.set(gauge(bytes));
            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Plain::Admin, "/config") => config_summary(&shared),
        (Plain::Admin, _) => plain(StatusCode::NOT_FOUND, "not found\n"),
        (Plain::Redirect, p) if p.starts_with(ACME_CHALLENGE_PREFIX) => {
            acme_challenge(&shared, &p[ACME_CHALLENGE_PREFIX.len()..])
        }
        (Plain::Redirect, _) => redirect_to_https(&req, https_port),
    };
    Ok(resp)
}

/// The running snapshot's [`Summary`] as JSON, for `portcullis check --against`.
fn config_summary(shared: &Shared) -> Response<Full<Bytes>> {
    let summary = Summary::of(&shared.snapshot.load());
    match serde_json::to_vec_pretty(&summary) {
        Ok(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize the configuration summary");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// Where HTTP-01 responses live (RFC 8555 §8.3).
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The key authorization for a pending HTTP-01 token, as `application/octet-stream` (RFC 8555 §8.3).
fn acme_challenge(shared: &Shared, token: &str) -> Response<Full<Bytes>> {
    match shared.acme.http_response(token) {
        Some(key_authorization) => {
            let mut r = Response::new(Full::new(Bytes::from(key_authorization)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => plain(StatusCode::NOT_FOUND, "no acme challenge pending\n"),
    }
}

/// 308 keeps the method and body (RFC 9110 §15.4.9), so a POST is not turned into a GET.
fn redirect_to_https(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let Some(host) = host.and_then(|h| Host::parse(&h).ok()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "bad request: missing or invalid Host\n",
        );
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    let Ok(value) = HeaderValue::from_str(&location) else {
        return plain(StatusCode::BAD_REQUEST, "bad request\n");
    };
    let mut resp = plain(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
    resp.headers_mut().insert(header::LOCATION, value);
    resp
}
