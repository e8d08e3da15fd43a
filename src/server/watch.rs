//! Polls the configuration file and the certificate directory and reloads when either changes.
//!
//! Polling (rather than inotify) also sees changes made through symlink swaps, as Kubernetes ConfigMaps and
//! secret mounts do. It never runs on the request path.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// How often the file and directory are looked at.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(1);

/// What is on disk now: the config text's hash and the certificate directory's fingerprint.
fn on_disk(shared: &Shared) -> (Option<String>, u64) {
    let snap = shared.snapshot.load();
    let text = std::fs::read_to_string(shared.config_path()).ok();
    (
        text.as_deref().map(crate::config::text_hash),
        crate::tls::dir_fingerprint(&snap.tls.certs_dir),
    )
}

/// What the snapshot in force was built from.
fn loaded(shared: &Shared) -> (Option<String>, u64) {
    let snap = shared.snapshot.load();
    (Some(snap.hash.clone()), snap.tls.certs_fingerprint)
}

/// Runs until `stop` is cancelled. Compares the disk with what the snapshot in force was built from (not with
/// the previous poll), so a change made before the watcher started is seen too; a state that failed to load is
/// not retried until it changes again.
pub(crate) async fn watch(shared: Arc<Shared>, stop: CancellationToken) {
    let mut failed: Option<(Option<String>, u64)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
        let now = on_disk(&shared);
        if now == loaded(&shared) || failed.as_ref() == Some(&now) {
            continue;
        }
        tracing::info!(config.file = %shared.config_path().display(), "configuration or certificates changed on disk; reloading");
        // Failures are logged by reload; the old snapshot keeps serving.
        failed = match shared.reload().await {
            Ok(_) => None,
            Err(_) => Some(now),
        };
    }
}
