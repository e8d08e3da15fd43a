//! The challenge responses in flight: HTTP-01 key authorizations by token and TLS-ALPN-01 certificates by name.
//!
//! Lives in `Shared`, outside the snapshot, so a reload during an order does not lose them. The listeners only
//! read it (two short lookups); the ACME task inserts entries through a [`Pending`] guard that removes them when
//! the order ends, whichever way it ends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::AcmeError;

/// Challenge responses currently offered.
#[derive(Default)]
pub struct Challenges {
    http: RwLock<HashMap<String, String>>,
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let http = self
            .http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let tls = self
            .tls_alpn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Challenges")
            .field("http_01", &http)
            .field("tls_alpn_01", &tls)
            .finish()
    }
}

impl Challenges {
    /// The key authorization to answer `GET /.well-known/acme-challenge/<token>` with (RFC 8555 §8.3).
    pub fn http_response(&self, token: &str) -> Option<String> {
        self.http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// The validation certificate for a ClientHello offering `acme-tls/1` with this SNI (RFC 8737 §3).
    pub fn tls_alpn_certificate(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned()
    }
}

/// Entries one order put in place; dropping it withdraws them.
pub(crate) struct Pending<'a> {
    store: &'a Challenges,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl<'a> Pending<'a> {
    pub(crate) fn new(store: &'a Challenges) -> Self {
        Self {
            store,
            tokens: Vec::new(),
            names: Vec::new(),
        }
    }

    pub(crate) fn add_http(&mut self, token: String, key_authorization: String) {
        self.store
            .http
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), key_authorization);
        self.tokens.push(token);
    }

    pub(crate) fn add_tls_alpn(&mut self, name: String, cert: Arc<CertifiedKey>) {
        self.store
            .tls_alpn
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), cert);
        self.names.push(name);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut http = self
            .store
            .http
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for t in &self.tokens {
            http.remove(t);
        }
        drop(http);
        let mut tls = self
            .store
            .tls_alpn
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for n in &self.names {
            tls.remove(n);
        }
    }
}

/// The self-signed validation certificate of RFC 8737 §3: the name as its only subjectAltName and the critical
/// acmeIdentifier extension holding the SHA-256 of the key authorization.
///
/// # Errors
/// Key or certificate generation failed.
pub(crate) fn tls_alpn_certificate(
    name: &str,
    key_authorization_sha256: &[u8; 32],
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_authorization_sha256,
    )];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(AcmeError::ChallengeKey)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pending_entries_are_withdrawn_on_drop() {
        let store = Challenges::default();
        {
            let mut p = Pending::new(&store);
            p.add_http("tok".into(), "tok.thumb".into());
            let cert = tls_alpn_certificate("a.example.com", &[7; 32]).unwrap();
            p.add_tls_alpn("a.example.com".into(), cert);
            assert_eq!(store.http_response("tok").as_deref(), Some("tok.thumb"));
            assert!(store.tls_alpn_certificate(Some("A.Example.com.")).is_some());
            assert!(store.tls_alpn_certificate(Some("b.example.com")).is_none());
            assert!(store.tls_alpn_certificate(None).is_none());
        }
        assert!(store.http_response("tok").is_none());
        assert!(store.tls_alpn_certificate(Some("a.example.com")).is_none());
    }

    #[test]
    fn tls_alpn_certificate_carries_the_critical_acme_identifier() {
        let digest = [0xab; 32];
        let cert = tls_alpn_certificate("a.example.com", &digest).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        // id-pe-acmeIdentifier, RFC 8737 §6.1.
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
