//! Running the server: starts the accept loops and the watcher, marks the server ready, and on shutdown stops
//! accepting, drains open connections and tunnels for at most `server.shutdown_grace_secs`, and reports.

use std::future::Future;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listener::{accept_plain, accept_tls, Ctx, Listeners, Plain};
use crate::state::Shared;

/// Picks the certificate by SNI from the snapshot in force, so reloaded certificates are used by new handshakes;
/// a TLS-ALPN-01 validator (ALPN `acme-tls/1`) gets the pending challenge certificate for its SNI or nothing.
#[derive(Debug)]
pub struct SniResolver(pub Arc<Shared>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == crate::tls::ACME_TLS_ALPN))
        {
            return self.0.acme.tls_alpn_certificate(hello.server_name());
        }
        let snap = self.0.snapshot.load();
        snap.certs
            .find(hello.server_name())
            .map(|e| Arc::clone(&e.certified))
    }
}

/// How the shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Whether every connection and tunnel finished within the grace period.
    pub drained: bool,
}

/// Serves on the bound listeners until `shutdown` completes, then drains.
///
/// # Errors
/// The TLS configuration cannot be built.
pub async fn run(
    listeners: Listeners,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<DrainReport, crate::tls::TlsError> {
    let tls_config = crate::tls::server_config(Arc::new(SniResolver(Arc::clone(&shared))))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let stop = CancellationToken::new();
    let conns = TaskTracker::new();
    let https_port = listeners
        .https
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(443);
    shared.set_https_port(https_port);
    let ctx = Ctx {
        shared: Arc::clone(&shared),
        stop: stop.clone(),
        conns: conns.clone(),
        https_port,
    };
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(accept_tls(listeners.https, acceptor, ctx.clone()));
    if let Some(l) = listeners.http {
        loops.spawn(accept_plain(l, Plain::Redirect, ctx.clone()));
    }
    if let Some(l) = listeners.admin {
        loops.spawn(accept_plain(l, Plain::Admin, ctx.clone()));
    }
    if shared.snapshot.load().watch {
        loops.spawn(super::watch::watch(Arc::clone(&shared), stop.clone()));
    }
    if shared.snapshot.load().tls.acme.is_some() {
        loops.spawn(crate::acme::run(Arc::clone(&shared), stop.clone()));
    }
    shared.set_ready(true);
    tracing::info!(config.hash = %shared.snapshot.load().hash, "serving");

    shutdown.await;
    shared.set_ready(false);
    let grace = shared.snapshot.load().shutdown_grace;
    tracing::info!(
        grace_secs = grace.as_secs(),
        open = conns.len(),
        "shutting down: no new connections, draining open ones"
    );
    stop.cancel();
    while loops.join_next().await.is_some() {}
    conns.close();
    shared.tunnels.close();
    let drained = tokio::time::timeout(grace, async {
        conns.wait().await;
        shared.tunnels.wait().await;
    })
    .await
    .is_ok();
    if drained {
        tracing::info!("drain complete");
    } else {
        tracing::warn!(
            open = conns.len(),
            tunnels = shared.tunnels.len(),
            "drain incomplete: grace period over, closing the rest"
        );
    }
    Ok(DrainReport { drained })
}
