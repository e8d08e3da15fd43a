//! One ACME account and one order: restore or create the account (persisted in the certificate directory), answer
//! the challenges of an order for one name, send the CSR and fetch the chain.
//!
//! Scheduling, backoff, logging and metrics are the task's; this file only performs the protocol steps, each
//! bounded by the HTTP client's timeouts and `instant-acme`'s retry policies.

use std::path::Path;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use serde::{Deserialize, Serialize};

use super::challenge::{tls_alpn_certificate, Challenges, Pending};
use super::settings::{AcmeSettings, ChallengeKind, DnsHook};
use super::AcmeError;
use crate::router::HostPattern;

/// Waiting for the server to validate the challenges; DNS-01 may need propagation time on real servers.
const READY_POLICY: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));
/// Waiting for the server to issue after finalization.
const CERT_POLICY: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(60));
/// One run of the dns-01 hook.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// The account file: the credentials and the directory they belong to.
#[derive(Serialize)]
struct StoredAccountRef<'a> {
    directory: &'a str,
    credentials: &'a AccountCredentials,
}

#[derive(Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The account for the configured directory: restored from `path` when it was made for that directory, else
/// registered (with the contact, agreeing to the terms of service) and written to `path` with mode 0600.
///
/// # Errors
/// The file cannot be read or written, or the server refuses or cannot be reached.
pub(crate) async fn account(settings: &AcmeSettings, path: &Path) -> Result<Account, AcmeError> {
    let directory = settings.directory.to_string();
    let builder = || Account::builder_with_http(Box::new(settings.client.clone()));
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<StoredAccount>(&bytes) {
            Ok(stored) if stored.directory == directory => {
                return Ok(builder().from_credentials(stored.credentials).await?);
            }
            Ok(stored) => tracing::info!(
                acme.account_file = %path.display(),
                acme.directory = %directory,
                acme.previous_directory = %stored.directory,
                "acme account file belongs to another directory; registering a new account"
            ),
            Err(e) => tracing::warn!(
                acme.account_file = %path.display(),
                error = %e,
                "acme account file is unreadable; registering a new account"
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AcmeError::ReadAccount {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let contact = [settings.contact.as_uri()];
    let (account, credentials) = builder()
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_vec_pretty(&StoredAccountRef {
        directory: &directory,
        credentials: &credentials,
    })
    .map_err(|source| AcmeError::EncodeAccount {
        path: path.to_path_buf(),
        source,
    })?;
    crate::tls::write_atomically(path, &json, true).map_err(AcmeError::Store)?;
    tracing::info!(acme.account = %account.id(), acme.directory = %directory, "acme account registered");
    Ok(account)
}

/// A certificate chain and its key, PEM, in the one-file form the certificate loader reads.
pub(crate) struct Issued {
    pub(crate) pem: String,
}

/// Orders a certificate for `host`, answering its challenges with `settings.challenge`. The order URL is written
/// to `order_url` as soon as the server assigns one, so a failure can be logged with it.
///
/// # Errors
/// Any protocol step fails, a challenge is not offered, validation fails, or the hook fails.
pub(crate) async fn order(
    account: &Account,
    settings: &AcmeSettings,
    challenges: &Challenges,
    host: &HostPattern,
    order_url: &mut Option<String>,
) -> Result<Issued, AcmeError> {
    let name = host.to_string();
    let identifiers = [Identifier::Dns(name.clone())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    *order_url = Some(order.url().to_owned());

    let mut pending = Pending::new(challenges);
    let mut dns_records: Vec<(String, String)> = Vec::new();
    let answered = answer(&mut order, settings, &mut pending, &mut dns_records).await;
    let ready = match answered {
        Ok(()) => order
            .poll_ready(&READY_POLICY)
            .await
            .map_err(AcmeError::from),
        Err(e) => Err(e),
    };
    // The responses are withdrawn whatever happened; a failed `clear` is only logged, the order's result stands.
    drop(pending);
    if let Some(hook) = &settings.dns_hook {
        for (domain, value) in &dns_records {
            if let Err(e) = run_hook(hook, "clear", domain, value).await {
                tracing::warn!(acme.host = %name, error = %crate::error::chain(&e), "dns_hook clear failed");
            }
        }
    }
    let status = ready?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::OrderNotReady {
            status,
            problem: order.state().error.clone(),
        });
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name])?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&CERT_POLICY).await?;
    let mut pem = chain;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(&key.serialize_pem());
    Ok(Issued { pem })
}

/// Puts a response in place for every pending authorization and tells the server it is ready.
async fn answer(
    order: &mut instant_acme::Order,
    settings: &AcmeSettings,
    pending: &mut Pending<'_>,
    dns_records: &mut Vec<(String, String)>,
) -> Result<(), AcmeError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order (RFC 8555 §7.1.4).
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Authorization {
                    identifier: authz.identifier().to_string(),
                    status,
                })
            }
        }
        let identifier = authz.identifier().to_string();
        let Some(mut challenge) = authz.challenge(settings.challenge.acme_type()) else {
            return Err(AcmeError::NoChallenge {
                identifier,
                kind: settings.challenge.as_str(),
            });
        };
        let key_authorization = challenge.key_authorization();
        match settings.challenge {
            ChallengeKind::Http01 => {
                pending.add_http(
                    challenge.token.clone(),
                    key_authorization.as_str().to_owned(),
                );
            }
            ChallengeKind::TlsAlpn01 => {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(key_authorization.digest().as_ref());
                pending.add_tls_alpn(
                    identifier.clone(),
                    tls_alpn_certificate(&identifier, &digest)?,
                );
            }
            ChallengeKind::Dns01 => {
                // The record is `_acme-challenge.<domain>`, for a wildcard too (RFC 8555 §8.4).
                let domain = identifier
                    .strip_prefix("*.")
                    .unwrap_or(&identifier)
                    .to_owned();
                let value = key_authorization.dns_value();
                if let Some(hook) = &settings.dns_hook {
                    run_hook(hook, "set", &domain, &value).await?;
                }
                dns_records.push((domain, value));
            }
        }
        challenge.set_ready().await?;
    }
    Ok(())
}

/// Runs `hook set|clear <domain> <value>` and waits for it (bounded); the hook must return once the record is
/// published.
async fn run_hook(
    hook: &DnsHook,
    action: &'static str,
    domain: &str,
    value: &str,
) -> Result<(), AcmeError> {
    let argv = hook.argv();
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .args([action, domain, value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(HOOK_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(source)) => return Err(AcmeError::HookSpawn { program, source }),
        Err(_) => return Err(AcmeError::HookTimeout { program, action }),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr: String = stderr.chars().take(1024).collect();
    tracing::warn!(acme.hook = %program, acme.hook_action = action, acme.hook_stderr = %stderr.trim_end(), "dns_hook failed");
    Err(AcmeError::HookFailed {
        program,
        action,
        status: output.status,
    })
}
