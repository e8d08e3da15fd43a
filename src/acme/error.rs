//! Why an ACME order or account step failed. None of these reaches a client: they are logged by the task, which
//! backs off and tries again.

use std::path::PathBuf;

/// A failed ACME step.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused a request, or could not be reached.
    #[error("acme request failed")]
    Protocol(#[source] instant_acme::Error),
    /// The stored account cannot be read.
    #[error("cannot read acme account file {path}")]
    ReadAccount {
        /// `acme-account.json` in the certificate directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The account could not be serialized for storage.
    #[error("cannot encode acme account for {path}")]
    EncodeAccount {
        /// The account file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A certificate, key or account file could not be written.
    #[error("cannot store acme material")]
    Store(#[source] crate::tls::TlsError),
    /// A key, CSR or challenge certificate could not be made.
    #[error("cannot generate key material")]
    Generate(#[source] rcgen::Error),
    /// A generated challenge key was rejected by rustls.
    #[error("cannot load the tls-alpn-01 challenge key")]
    ChallengeKey(#[source] rustls::Error),
    /// The server offered no challenge of the configured type for an identifier.
    #[error("acme server offers no {kind} challenge for {identifier}")]
    NoChallenge {
        /// The identifier being authorized.
        identifier: String,
        /// The configured challenge type.
        kind: &'static str,
    },
    /// An authorization is in a state that cannot become valid.
    #[error("authorization for {identifier} is {status:?}")]
    Authorization {
        /// The identifier being authorized.
        identifier: String,
        /// Its state.
        status: instant_acme::AuthorizationStatus,
    },
    /// The order did not become ready after the challenges were answered.
    #[error("order ended {status:?}")]
    OrderNotReady {
        /// The order's state.
        status: instant_acme::OrderStatus,
        /// The server's explanation, when it gave one.
        #[source]
        problem: Option<instant_acme::Problem>,
    },
    /// The dns-01 hook could not be started.
    #[error("cannot run dns_hook {program}")]
    HookSpawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The dns-01 hook exited unsuccessfully.
    #[error("dns_hook {program} {action} exited with {status}")]
    HookFailed {
        /// The program.
        program: String,
        /// `set` or `clear`.
        action: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The dns-01 hook did not finish in time.
    #[error("dns_hook {program} {action} timed out")]
    HookTimeout {
        /// The program.
        program: String,
        /// `set` or `clear`.
        action: &'static str,
    },
    /// The whole order took longer than allowed.
    #[error("order timed out after {secs} s")]
    Timeout {
        /// The limit.
        secs: u64,
    },
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Protocol(e)
    }
}

impl From<rcgen::Error> for AcmeError {
    fn from(e: rcgen::Error) -> Self {
        AcmeError::Generate(e)
    }
}

impl AcmeError {
    /// Whether the server says the stored account no longer exists (a reset test CA, a deleted account).
    pub fn is_unknown_account(&self) -> bool {
        matches!(self, AcmeError::Protocol(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}
