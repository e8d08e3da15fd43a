//! The runtime form of `[tls.acme]`, built only by `config::validate`: parsed values and the HTTP client for the
//! directory. Nothing here reads files or talks to the network.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::client::AcmeClient;
use crate::router::HostPattern;

/// How the ACME server is shown control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// RFC 8555 §8.3: a token served on the plain HTTP listener.
    Http01,
    /// RFC 8737: a self-signed certificate served on the HTTPS listener to ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 §8.4: a TXT record set by the operator's hook; the only kind that can prove a wildcard.
    Dns01,
}

impl ChallengeKind {
    /// Parses the configuration spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "http-01" => Some(Self::Http01),
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            "dns-01" => Some(Self::Dns01),
            _ => None,
        }
    }

    /// The configuration (and RFC) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        }
    }

    pub(crate) fn acme_type(self) -> instant_acme::ChallengeType {
        match self {
            Self::Http01 => instant_acme::ChallengeType::Http01,
            Self::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
            Self::Dns01 => instant_acme::ChallengeType::Dns01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The account's contact, a `mailto:` URI (RFC 8555 §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact(String);

impl Contact {
    /// Accepts `user@domain` or `mailto:user@domain`.
    pub fn parse(raw: &str) -> Option<Self> {
        let addr = raw.strip_prefix("mailto:").unwrap_or(raw);
        let (local, domain) = addr.split_once('@')?;
        let ok = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && addr
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, ',' | '<' | '>' | '"' | '?'));
        ok.then(|| Self(format!("mailto:{addr}")))
    }

    /// The `mailto:` URI.
    pub fn as_uri(&self) -> &str {
        &self.0
    }
}

/// The dns-01 hook: a program and its leading arguments, run as `ARGS... set|clear <domain> <txt-value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHook(Vec<String>);

impl DnsHook {
    /// From the program and its leading arguments; `None` when empty.
    pub fn new(argv: Vec<String>) -> Option<Self> {
        (!argv.is_empty() && !argv[0].is_empty()).then_some(Self(argv))
    }

    /// Program first, then the leading arguments.
    pub fn argv(&self) -> &[String] {
        &self.0
    }
}

/// `[tls.acme]` after validation.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The directory URL (`https://`).
    pub directory: http::Uri,
    /// The account contact.
    pub contact: Contact,
    /// Extra CA certificates trusted for the directory.
    pub ca_file: Option<PathBuf>,
    /// The HTTP client for the directory, trusting `ca_file`.
    pub client: AcmeClient,
    /// The challenge type answered.
    pub challenge: ChallengeKind,
    /// The dns-01 hook.
    pub dns_hook: Option<DnsHook>,
    /// Names that get a certificate each (one certificate per name).
    pub hosts: Vec<HostPattern>,
    /// Renew this long before expiry (capped at a third of the certificate's lifetime).
    pub renew_before: Duration,
    /// First delay after a failed order.
    pub retry_initial: Duration,
    /// Upper bound of the doubling delay after failed orders.
    pub retry_max: Duration,
}

impl AcmeSettings {
    /// Whether ACME manages a certificate serving `host` (a route's exact name or wildcard probe).
    pub fn manages(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_forms() {
        assert_eq!(
            Contact::parse("ops@example.com").map(|c| c.as_uri().to_owned()),
            Some("mailto:ops@example.com".to_owned())
        );
        assert!(Contact::parse("mailto:ops@example.com").is_some());
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@",
            "ops@localhost",
            "a b@c.d",
            "a@b.c,d@e.f",
        ] {
            assert!(Contact::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn challenge_spellings_round_trip() {
        for k in [
            ChallengeKind::Http01,
            ChallengeKind::TlsAlpn01,
            ChallengeKind::Dns01,
        ] {
            assert_eq!(ChallengeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ChallengeKind::parse("HTTP-01"), None);
    }
}
