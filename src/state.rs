//! State shared by every connection: the current snapshot, long-lived caches and metrics, and reloading.
//!
//! The snapshot is swapped whole; caches that must outlive a reload (JWKS, sessions) live here, outside it.
//! Reload never runs on the request path: it is driven by SIGHUP or the file watcher.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::{Authenticator, AuthenticatorOptions};
use crate::config::{ConfigError, Mode, Snapshot};
use crate::metrics::{KindLabels, Metrics};

/// Everything the server shares across connections.
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub snapshot: ArcSwap<Snapshot>,
    /// Token and key caches.
    pub auth: Authenticator,
    /// Metric handles.
    pub metrics: Metrics,
    /// Whether listeners are bound and serving; observable so `main` can tell a service manager.
    ready: tokio::sync::watch::Sender<bool>,
    /// The bound HTTPS port, for URLs shown to browsers (0 until `run` binds).
    https_port: std::sync::atomic::AtomicU16,
    /// Upgraded connections (WebSockets) being tunnelled, drained on shutdown.
    pub tunnels: tokio_util::task::TaskTracker,
    /// ACME challenge responses in flight (HTTP-01 tokens, TLS-ALPN-01 certificates).
    pub acme: crate::acme::Challenges,
    config_path: PathBuf,
    reload_lock: tokio::sync::Mutex<()>,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid; the old one keeps serving.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The loader task failed.
    #[error("reload task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl Shared {
    /// Shared state around an initial snapshot loaded from `config_path`.
    pub fn new(snapshot: Snapshot, config_path: PathBuf) -> Arc<Self> {
        let auth = Authenticator::with_options(AuthenticatorOptions {
            verified_cache_bytes: snapshot.auth.token_cache_bytes(),
            introspection_cache_bytes: snapshot.auth.introspection_cache_bytes(),
            ..AuthenticatorOptions::default()
        });
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            auth,
            metrics: Metrics::new(),
            ready: tokio::sync::watch::Sender::new(false),
            https_port: std::sync::atomic::AtomicU16::new(443),
            tunnels: tokio_util::task::TaskTracker::new(),
            acme: crate::acme::Challenges::default(),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The config file this state reloads from.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Re-reads the configuration off the hot path and swaps it in atomically; an invalid file is logged and
    /// the current snapshot keeps serving. Requests in flight finish on the snapshot they loaded.
    ///
    /// # Errors
    /// The new file is invalid (every problem is in the error).
    pub async fn reload(&self) -> Result<Arc<Snapshot>, ReloadError> {
        let _serial = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            crate::config::load_with(&path, &|n| std::env::var(n).ok(), Mode::Serve)
        })
        .await
        .map_err(ReloadError::Task)?;
        match loaded {
            Ok(new) => {
                let new = Arc::new(new);
                let old = self.snapshot.load_full();
                if old.listen != new.listen {
                    tracing::warn!(
                        config.file = %self.config_path.display(),
                        "listener addresses changed in the configuration; they take effect only after a restart"
                    );
                }
                self.auth
                    .set_token_cache_bytes(new.auth.token_cache_bytes());
                self.auth
                    .set_introspection_cache_bytes(new.auth.introspection_cache_bytes());
                self.snapshot.store(Arc::clone(&new));
                self.metrics
                    .reloads
                    .get_or_create(&KindLabels { kind: "ok" })
                    .inc();
                tracing::info!(config.hash = %new.hash, config.services = new.routes.len(), certs.count = new.certs.entries().len(), "configuration reloaded");
                Ok(new)
            }
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&KindLabels { kind: "failed" })
                    .inc();
                tracing::error!(config.file = %self.config_path.display(), error = %e, "configuration reload rejected; the previous configuration keeps serving");
                Err(e.into())
            }
        }
    }

    /// The bound HTTPS port (443 until the server runs).
    pub fn https_port(&self) -> u16 {
        self.https_port.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the bound HTTPS port.
    pub(crate) fn set_https_port(&self, port: u16) {
        self.https_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `/readyz` answers ready.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Marks the server ready (listeners serving) or not (draining).
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// Completes once the server is ready (at once if it already is); for readiness notifications.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}
