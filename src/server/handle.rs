//! One request on the HTTPS listener: host, route, certificate check, authorization, forwarding, response.
//!
//! The snapshot is loaded once per request and kept to the end, so a reload never changes a request midway.
//! Every failure becomes a response through `error::respond`; nothing returned to hyper is an `Err`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use super::access::{AccessRecord, InnerBody, LoggedBody};
use super::listener::ConnInfo;
use crate::auth::{sign_in_redirect, AuthError, Endpoint, PortalContext};
use crate::config::Snapshot;
use crate::error::{respond, RequestError};
use crate::metrics::{DecisionKind, ServiceKindLabels, ServiceLabel};
use crate::proxy::{self, Peer};
use crate::router::Host;
use crate::state::Shared;

/// The service name used in logs and metrics for requests that matched no service.
const NO_SERVICE: &str = "-";

/// The service name in logs and metrics for the sign-in portal.
const PORTAL_SERVICE: &str = "portal";

/// The service name in logs for forward-auth calls on the portal host.
const FORWARD_AUTH_SERVICE: &str = "forward-auth";

/// [`NO_SERVICE`], allocated once.
static NO_SERVICE_LABEL: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from(NO_SERVICE));

/// Longest `X-Request-Id` accepted from a client; longer or odd ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// Handles one request; never fails.
pub(crate) async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Result<Response<LoggedBody>, Infallible> {
    let start = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    let path: Box<str> = req.uri().path().into();
    let raw_host = host_value(&req);
    let mut record = AccessRecord {
        method,
        host: raw_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-")
            .into(),
        path,
        status: http::StatusCode::OK,
        service: Arc::clone(&NO_SERVICE_LABEL),
        upstream: None,
        request_id: request_id.clone(),
        client: conn.peer,
        error: None,
        start,
        metrics: None,
    };
    // One configuration for the whole request, the response's `X-Request-Id` included, even across a reload.
    let snap = shared.snapshot.load_full();
    let result = route_and_forward(
        req,
        raw_host,
        &conn,
        &shared,
        &snap,
        &request_id,
        &mut record,
    )
    .await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            record.error = Some(err.reason());
            log_error(&err, &record, &shared);
            let id = request_id.to_str().unwrap_or("-");
            respond(&err, id).map(Either::Right)
        }
    };
    if snap.response_request_id.applies_to(resp.status()) {
        // Never indexed by HTTP/2's HPACK (see `proxy::prepare_for_hpack`): a fresh value per response would only
        // churn the connection's table, and h2 0.4 compares it with every value indexed under the name first.
        let mut request_id = request_id;
        request_id.set_sensitive(true);
        resp.headers_mut().insert(proxy::X_REQUEST_ID, request_id);
    }
    record.status = resp.status();
    Ok(resp.map(|b| LoggedBody::new(b, record, shared)))
}

async fn route_and_forward(
    req: Request<Incoming>,
    raw_host: Option<HeaderValue>,
    conn: &ConnInfo,
    shared: &Shared,
    snap: &Snapshot,
    request_id: &HeaderValue,
    record: &mut AccessRecord,
) -> Result<Response<InnerBody>, RequestError> {
    let raw_host = raw_host.ok_or(RequestError::MissingHost)?;
    let host = Host::parse(raw_host.to_str().map_err(|_| RequestError::MissingHost)?)?;
    if *record.host != *host.as_str() {
        record.host = host.as_str().into();
    }
    if let Some(o) = snap.auth.oidc() {
        if host.as_str() == o.portal() || req.uri().path() == "/oauth2/handoff" {
            covered(conn, &host)?;
            if host.as_str() == o.portal() {
                if let Some(endpoint) = Endpoint::from_path(req.uri().path()) {
                    record.service = Arc::from(FORWARD_AUTH_SERVICE);
                    // Rare, large futures are boxed here and in `auth`: the request future is copied on every
                    // request (and into every HTTP/2 stream's task), so it stays sized for the proxy path.
                    let resp =
                        Box::pin(super::authz::serve(endpoint, &req, conn.peer.ip(), shared)).await;
                    return Ok(resp.map(Either::Right));
                }
            }
            record.service = Arc::from(PORTAL_SERVICE);
            let router = &snap.router;
            let is_service_host = |h: &str| router.lookup(h).is_some();
            let ctx = PortalContext {
                https_port: shared.https_port(),
                is_service_host: &is_service_host,
            };
            let resp = Box::pin(shared.auth.portal(&snap.auth, req, &ctx)).await;
            return Ok(resp.map(Either::Right));
        }
    }
    if snap.forward_auth_hosts.iter().any(|h| h == host.as_str()) {
        covered(conn, &host)?;
        record.service = Arc::from(FORWARD_AUTH_SERVICE);
        let resp = match Endpoint::from_path(req.uri().path()) {
            Some(endpoint) => {
                Box::pin(super::authz::serve(endpoint, &req, conn.peer.ip(), shared)).await
            }
            None => crate::error::plain(
                http::StatusCode::NOT_FOUND,
                "not found: this host serves only the forward-auth endpoints\n",
            ),
        };
        return Ok(resp.map(Either::Right));
    }
    let route = snap
        .router
        .lookup(host.as_str())
        .ok_or_else(|| RequestError::UnknownHost {
            host: host.to_string(),
        })?;
    record.service = Arc::clone(&route.name_label);
    covered(conn, &host)?;
    if req.method() == http::Method::CONNECT && !proxy::is_h2_websocket(&req) {
        return Err(RequestError::Connect);
    }
    let decision = shared
        .auth
        .authorize(
            &snap.auth,
            &route.policy,
            req.method(),
            req.uri().path(),
            req.headers(),
        )
        .await;
    let kind = match &decision {
        Ok(p) if p.identity().is_some() => DecisionKind::Allow,
        Ok(_) => DecisionKind::Anonymous,
        Err(e) => match e.status() {
            http::StatusCode::UNAUTHORIZED => DecisionKind::Unauthenticated,
            http::StatusCode::FORBIDDEN => DecisionKind::Forbidden,
            http::StatusCode::BAD_REQUEST => DecisionKind::BadRequest,
            _ => DecisionKind::Error,
        },
    };
    route
        .metrics
        .decision(&shared.metrics, &route.name_label, kind)
        .inc();
    record.metrics = Some(Arc::clone(&route.metrics));
    let permit = match decision {
        Ok(p) => p,
        Err(AuthError::SignInRequired) => {
            let original = format!(
                "https://{}{}",
                raw_host.to_str().unwrap_or_default(),
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            match sign_in_redirect(
                &snap.auth,
                req.method(),
                req.headers(),
                &original,
                shared.https_port(),
            ) {
                Some(r) => return Ok(r.map(Either::Right)),
                None => return Err(RequestError::Auth(AuthError::SignInRequired)),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let mut req = req;
    if let Some(o) = snap.auth.oidc() {
        // The session cookie is the gateway's; the backend never sees it.
        o.strip_cookies(req.headers_mut());
    }
    let peer = Peer {
        ip: conn.peer.ip(),
        ip_header: conn.ip_header.clone(),
        trusted: snap.trusted_proxies.is_trusted(conn.peer.ip()),
    };
    record.upstream = Some(Arc::clone(&route.upstream_label));
    Ok(proxy::forward(
        req,
        route,
        &permit,
        peer,
        &raw_host,
        request_id,
        &shared.tunnels,
    )
    .await?
    .map(Either::Left))
}

/// The certificate presented on this connection must cover the host (RFC 9110 §15.5.20: 421 otherwise), so a
/// connection opened for one name cannot be reused for another service.
fn covered(conn: &ConnInfo, host: &Host) -> Result<(), RequestError> {
    match &conn.cert {
        Some(cert) if !cert.covers(host.as_str()) => Err(RequestError::Misdirected {
            host: host.to_string(),
            sni: conn.sni.clone(),
        }),
        Some(_) | None => Ok(()),
    }
}

/// The host the client addressed: the URI authority (HTTP/2 `:authority`, absolute-form) or the Host header.
fn host_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(auth) = req.uri().authority() {
        return HeaderValue::from_str(auth.as_str()).ok();
    }
    req.headers().get(header::HOST).cloned()
}

/// Propagates a well-formed client `X-Request-Id`, else makes a new one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(proxy::X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    HeaderValue::from_bytes(id.simple().encode_lower(&mut buf).as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn log_error(err: &RequestError, r: &AccessRecord, shared: &Shared) {
    let id = r.request_id.to_str().unwrap_or("-");
    match err {
        RequestError::Proxy(e) => {
            shared
                .metrics
                .upstream_errors
                .get_or_create(&ServiceKindLabels {
                    service: ServiceLabel(Arc::clone(&r.service)),
                    kind: e.kind(),
                })
                .inc();
            tracing::warn!(route.name = %r.service, request.id = id, error = %crate::error::chain(e), "upstream request failed")
        }
        // Our side cannot decide (store or issuer down): an operator must see the whole cause.
        RequestError::Auth(e) if e.status().is_server_error() => {
            tracing::warn!(route.name = %r.service, request.id = id, auth.decision = "deny", error = %crate::error::chain(e), "authentication unavailable")
        }
        RequestError::Auth(e) => {
            tracing::info!(route.name = %r.service, request.id = id, auth.decision = "deny", auth.reason = %e, "request refused")
        }
        RequestError::MissingHost
        | RequestError::BadHost(_)
        | RequestError::UnknownHost { .. }
        | RequestError::Misdirected { .. }
        | RequestError::Connect => {
            tracing::debug!(request.id = id, error = %err, "request refused")
        }
    }
}
