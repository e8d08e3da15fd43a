//! The background task: finds the configured names whose certificate is missing or due for renewal, orders them
//! one by one, writes `acme-<name>.pem` (chain and key, 0600) into the certificate directory and reloads, so new
//! handshakes get the certificate without a restart. A failed order backs off per name, doubling from
//! `retry_initial_secs` up to `retry_max_secs`; each order is logged and counted.
//!
//! It reads the settings from the snapshot in force on every round, so a reload that changes hosts or timings is
//! followed; enabling ACME where it was off needs a restart, as the task is started by `run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::issue;
use super::settings::AcmeSettings;
use super::AcmeError;
use crate::config::Snapshot;
use crate::metrics::ResultLabels;
use crate::router::HostPattern;
use crate::state::Shared;
use crate::tls::CertStore;

/// File name of the ACME account (key and URL), in the certificate directory, mode 0600.
pub const ACCOUNT_FILE: &str = "acme-account.json";
/// Longest sleep between two looks at the certificates, so configuration changes are followed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How often a task whose `[tls.acme]` was removed by a reload looks again.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// Upper bound on one whole order, whatever the server does.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The file an ACME certificate for `host` is stored in (`*` is not used in file names).
pub(crate) fn cert_file_name(host: &HostPattern) -> String {
    match host {
        HostPattern::Exact(name) => format!("acme-{name}.pem"),
        HostPattern::Wildcard(suffix) => format!("acme-_.{suffix}.pem"),
    }
}

/// Per-name retry state after failures.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next_attempt: Instant,
}

/// What the task remembers between rounds.
#[derive(Debug, Default)]
struct TaskState {
    backoff: HashMap<String, Backoff>,
    /// Renewal times of certificates this task wrote, so a reload that fails (a broken config file) does not make
    /// it order the same name again and again.
    issued: HashMap<String, SystemTime>,
}

/// Runs until `stop` is cancelled; an order in flight is abandoned (its challenge responses are withdrawn).
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut state = TaskState::default();
    loop {
        let snap = shared.snapshot.load_full();
        let (due, wait) = match snap.tls.acme.as_ref() {
            Some(settings) => plan(
                &snap.certs,
                settings,
                &state,
                SystemTime::now(),
                Instant::now(),
            ),
            None => (Vec::new(), IDLE_RECHECK),
        };
        match snap.tls.acme.as_ref() {
            Some(settings) if !due.is_empty() => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = round(&shared, &snap, settings, &due, &mut state) => {}
                }
            }
            Some(_) | None => {
                tracing::debug!(acme.next_check_secs = wait.as_secs(), "acme: nothing due");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The names to order now, and how long to sleep when there are none.
fn plan(
    certs: &CertStore,
    settings: &AcmeSettings,
    state: &TaskState,
    now: SystemTime,
    mono: Instant,
) -> (Vec<HostPattern>, Duration) {
    let mut due = Vec::new();
    let mut wait = MAX_SLEEP;
    for host in &settings.hosts {
        let key = host.to_string();
        if let Some(b) = state.backoff.get(&key) {
            if b.next_attempt > mono {
                wait = wait.min(b.next_attempt - mono);
                continue;
            }
        }
        let stored = renewal_in_store(certs, host, settings.renew_before);
        let renew_at = match (stored, state.issued.get(&key)) {
            (Some(a), Some(b)) => Some(a.max(*b)),
            (a, b) => a.or(b.copied()),
        };
        match renew_at.and_then(|t| t.duration_since(now).ok()) {
            Some(left) if !left.is_zero() => wait = wait.min(left),
            _ => due.push(host.clone()),
        }
    }
    (due, wait)
}

/// When the certificate currently served for `host` is due for renewal; `None` when none covers it.
fn renewal_in_store(
    certs: &CertStore,
    host: &HostPattern,
    renew_before: Duration,
) -> Option<SystemTime> {
    let probe = match host {
        HostPattern::Exact(name) => name.clone(),
        HostPattern::Wildcard(suffix) => format!("portcullis-probe.{suffix}"),
    };
    let entry = certs.covering(&probe)?;
    let not_before = entry
        .certified
        .cert
        .first()
        .and_then(|der| validity(der.as_ref()))
        .map(|(nb, _)| nb);
    Some(renewal_time(not_before, entry.not_after, renew_before))
}

/// `not_after` minus `renew_before`, but never earlier than two thirds into the lifetime, so that a CA issuing
/// short-lived certificates does not make every certificate due the moment it arrives.
fn renewal_time(
    not_before: Option<SystemTime>,
    not_after: SystemTime,
    renew_before: Duration,
) -> SystemTime {
    let lead = match not_before.and_then(|nb| not_after.duration_since(nb).ok()) {
        Some(lifetime) => renew_before.min(lifetime / 3),
        None => renew_before,
    };
    not_after
        .checked_sub(lead)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The validity period of a DER certificate.
fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let to_time = |secs: i64| {
        u64::try_from(secs)
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    };
    Some((
        to_time(cert.validity().not_before.timestamp())?,
        to_time(cert.validity().not_after.timestamp())?,
    ))
}

/// Orders every due name with one account, then reloads once if anything was written.
async fn round(
    shared: &Shared,
    snap: &Snapshot,
    settings: &AcmeSettings,
    due: &[HostPattern],
    state: &mut TaskState,
) {
    let account_file = account_path(&snap.tls.certs_dir);
    let account = match issue::account(settings, &account_file).await {
        Ok(a) => a,
        Err(e) => {
            for host in due {
                failed(shared, settings, state, host, None, &e);
            }
            return;
        }
    };
    let mut written = false;
    for host in due {
        let mut order_url = None;
        let result = match tokio::time::timeout(
            ORDER_TIMEOUT,
            issue::order(&account, settings, &shared.acme, host, &mut order_url),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(AcmeError::Timeout {
                secs: ORDER_TIMEOUT.as_secs(),
            }),
        };
        let path = snap.tls.certs_dir.join(cert_file_name(host));
        let result = result.and_then(|issued| {
            crate::tls::write_atomically(&path, issued.pem.as_bytes(), true)
                .map_err(AcmeError::Store)?;
            Ok(issued)
        });
        match result {
            Ok(issued) => {
                written = true;
                let key = host.to_string();
                state.backoff.remove(&key);
                let period = rustls_pemfile::certs(&mut issued.pem.as_bytes())
                    .next()
                    .and_then(Result::ok)
                    .and_then(|der| validity(der.as_ref()));
                let not_after_unix = period
                    .and_then(|(_, na)| na.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                if let Some((nb, na)) = period {
                    state
                        .issued
                        .insert(key, renewal_time(Some(nb), na, settings.renew_before));
                }
                shared
                    .metrics
                    .acme_orders
                    .get_or_create(&ResultLabels { result: "issued" })
                    .inc();
                tracing::info!(
                    acme.host = %host,
                    acme.order = order_url.as_deref().unwrap_or("-"),
                    acme.challenge = %settings.challenge,
                    acme.result = "issued",
                    tls.cert_path = %path.display(),
                    tls.not_after_unix = not_after_unix,
                    "acme certificate issued"
                );
            }
            Err(e) => {
                if e.is_unknown_account() {
                    // The server forgot the account (a reset test CA): register again on the next attempt.
                    let _ = std::fs::remove_file(&account_file);
                }
                failed(shared, settings, state, host, order_url.as_deref(), &e);
            }
        }
    }
    if written {
        // A failure is logged by reload; the previous snapshot keeps serving and the watcher retries.
        let _ = shared.reload().await;
    }
}

/// Logs and counts a failed order and schedules the next attempt for `host`.
fn failed(
    shared: &Shared,
    settings: &AcmeSettings,
    state: &mut TaskState,
    host: &HostPattern,
    order_url: Option<&str>,
    error: &AcmeError,
) {
    let key = host.to_string();
    let delay = match state.backoff.get(&key) {
        Some(b) => (b.delay * 2).min(settings.retry_max),
        None => settings.retry_initial.min(settings.retry_max),
    };
    state.backoff.insert(
        key,
        Backoff {
            delay,
            next_attempt: Instant::now() + delay,
        },
    );
    shared
        .metrics
        .acme_orders
        .get_or_create(&ResultLabels { result: "failed" })
        .inc();
    tracing::warn!(
        acme.host = %host,
        acme.order = order_url.unwrap_or("-"),
        acme.challenge = %settings.challenge,
        acme.result = "failed",
        acme.retry_in_secs = delay.as_secs(),
        error = %crate::error::chain(error),
        "acme order failed; backing off"
    );
}

/// Where the account file of a certificate directory is.
pub(crate) fn account_path(certs_dir: &std::path::Path) -> PathBuf {
    certs_dir.join(ACCOUNT_FILE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_renew_before_or_two_thirds_into_short_lifetimes() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        // 90 days, renew 30 days before.
        assert_eq!(
            renewal_time(Some(nb), nb + 90 * day, 30 * day),
            nb + 60 * day
        );
        // 60 s lifetime: renewed after 40 s, not immediately.
        let short = Duration::from_secs(60);
        assert_eq!(
            renewal_time(Some(nb), nb + short, 30 * day),
            nb + Duration::from_secs(40)
        );
        // Unknown start: plain renew_before.
        assert_eq!(renewal_time(None, nb + 90 * day, 30 * day), nb + 60 * day);
    }

    fn settings(hosts: &[&str]) -> AcmeSettings {
        AcmeSettings {
            directory: "https://acme.example.net/dir".parse().unwrap(),
            contact: super::super::Contact::parse("ops@example.com").unwrap(),
            ca_file: None,
            client: super::super::AcmeClient::new(None).unwrap(),
            challenge: super::super::ChallengeKind::Http01,
            dns_hook: None,
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            renew_before: Duration::from_secs(30 * 86_400),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
        }
    }

    #[test]
    fn plan_orders_missing_names_unless_backing_off_or_just_issued() {
        let s = settings(&["a.example.com", "b.example.com", "c.example.com"]);
        let certs = CertStore::empty();
        let now = SystemTime::now();
        let mono = Instant::now();
        let mut state = TaskState::default();
        let (due, wait) = plan(&certs, &s, &state, now, mono);
        assert_eq!(due.len(), 3);
        assert_eq!(wait, MAX_SLEEP);

        state.backoff.insert(
            "a.example.com".into(),
            Backoff {
                delay: Duration::from_secs(60),
                next_attempt: mono + Duration::from_secs(60),
            },
        );
        state
            .issued
            .insert("b.example.com".into(), now + Duration::from_secs(600));
        let (due, wait) = plan(&certs, &s, &state, now, mono);
        assert_eq!(due, [HostPattern::Exact("c.example.com".into())]);
        assert_eq!(wait, Duration::from_secs(60));

        // A backoff that has run out makes the name due again.
        let (due, _) = plan(&certs, &s, &state, now, mono + Duration::from_secs(61));
        assert_eq!(due.len(), 2);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            cert_file_name(&HostPattern::Exact("a.example.com".into())),
            "acme-a.example.com.pem"
        );
        assert_eq!(
            cert_file_name(&HostPattern::Wildcard("example.com".into())),
            "acme-_.example.com.pem"
        );
        assert_eq!(
            account_path(std::path::Path::new("/c")),
            PathBuf::from("/c/acme-account.json")
        );
    }
}
