//! Automatic certificates (ACME, RFC 8555): settings, the challenge responses served by the listeners, and the
//! background task that orders and renews certificates into the certificate directory.
//!
//! The protocol itself is `instant-acme`'s; this module decides what to order and when, answers the challenges,
//! and writes `acme-<host>.pem` files that the ordinary certificate loader serves. It never touches the request
//! path beyond two lookups (HTTP-01 token, TLS-ALPN-01 certificate).

mod challenge;
mod client;
mod error;
mod issue;
mod settings;
mod task;

pub use crate::tls::ACME_TLS_ALPN;
pub use challenge::Challenges;
pub use client::AcmeClient;
pub use error::AcmeError;
pub use settings::{AcmeSettings, ChallengeKind, Contact, DnsHook};
pub use task::{run, ACCOUNT_FILE};
