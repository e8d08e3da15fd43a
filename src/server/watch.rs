//! Polls the configuration file and the certificate directory and reloads when either changes.
//!
//! Polling (rather than inotify) also sees changes made through symlink swaps, as Kubernetes ConfigMaps and
//! secret mounts do. It never runs on the request path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// How often the file and directory are looked at.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(1);

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Runs until `stop` is cancelled.
pub(crate) async fn watch(shared: Arc<Shared>, stop: CancellationToken) {
    let stamp = |shared: &Shared| {
        let snap = shared.snapshot.load();
        (
            file_stamp(shared.config_path()),
            crate::tls::dir_fingerprint(&snap.tls.certs_dir),
        )
    };
    let mut last = stamp(&shared);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
        let now = stamp(&shared);
        if now != last {
            tracing::info!(config.file = %shared.config_path().display(), "configuration or certificates changed on disk; reloading");
            // Failures are logged by reload; the old snapshot keeps serving.
            let _ = shared.reload().await;
            last = stamp(&shared);
        }
    }
}
