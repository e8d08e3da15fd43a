//! Serves the forward-auth endpoints (`auth::forward_auth`) on the admin listener and the portal host: loads the
//! snapshot once, tells the endpoint whether the peer is a trusted proxy and how to find a service, counts the
//! decision.
//!
//! No decision is made here; this only connects the server's state to `Authenticator::forward_auth`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use crate::auth::{Endpoint, ForwardAuthContext};
use crate::metrics::{ServiceKindLabels, ServiceLabel};
use crate::state::Shared;

/// The service label of forward-auth calls in metrics.
const FORWARD_AUTH_SERVICE: &str = "forward-auth";

/// Answers a forward-auth call from `peer`.
pub(crate) async fn serve<B>(
    endpoint: Endpoint,
    req: &Request<B>,
    peer: IpAddr,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let snap = shared.snapshot.load_full();
    let router = &snap.router;
    let lookup = |h: &str| router.lookup(h).map(|r| &r.policy);
    let ctx = ForwardAuthContext {
        https_port: shared.https_port(),
        peer,
        peer_trusted: snap.trusted_proxies.is_trusted(peer),
        config_hash: &snap.hash,
        lookup: &lookup,
    };
    let resp = shared
        .auth
        .forward_auth(
            &snap.auth,
            endpoint,
            req.method(),
            req.uri(),
            req.headers(),
            &ctx,
        )
        .await;
    let kind = match resp.status() {
        s if s.is_success() => "allow",
        StatusCode::UNAUTHORIZED | StatusCode::FOUND | StatusCode::SEE_OTHER => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "error",
    };
    shared
        .metrics
        .auth_decisions
        .get_or_create(&ServiceKindLabels {
            service: ServiceLabel(Arc::from(FORWARD_AUTH_SERVICE)),
            kind,
        })
        .inc();
    resp
}
