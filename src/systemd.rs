//! Service-manager notifications (`sd_notify`, systemd `Type=notify`): ready, reloading, stopping.
//!
//! Each call is a no-op when `NOTIFY_SOCKET` is unset, so the binary behaves the same outside systemd. Only the
//! binary calls these (the library's `run` never reads the environment): in-process test gateways and embedders
//! must not talk to a service manager that supervises someone else. A failed notification is logged and otherwise
//! ignored: the gateway serves either way, and systemd reports a readiness timeout by itself.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>], what: &'static str) {
    match sd_notify::notify(states) {
        Ok(()) => tracing::debug!(systemd.notify = what, "service manager notified"),
        Err(e) => {
            tracing::warn!(systemd.notify = what, error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}

/// `READY=1` with a status line: listeners are bound and serving (again, after a reload).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)], "ready");
}

/// `RELOADING=1` with `MONOTONIC_USEC=`, which systemd 253+ requires to match the reload to its request; follow it
/// with [`ready`] when the reload is over, whatever its outcome.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(
            &[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ],
            "reloading",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock; notifying the reload without it");
            send(&[NotifyState::Reloading], "reloading");
        }
    }
}

/// `STOPPING=1`: shutdown has begun, open connections are draining.
pub fn stopping() {
    send(
        &[
            NotifyState::Stopping,
            NotifyState::Status("draining connections"),
        ],
        "stopping",
    );
}
