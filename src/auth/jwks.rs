//! JSON Web Key Sets (RFC 7517): fetching an issuer's keys (via OpenID Connect Discovery or an explicit
//! `jwks_uri`), parsing them once per fetch into verification keys, and the cached snapshot the
//! `Authenticator` keeps per issuer.
//!
//! Only public keys are accepted here (`RSA`, `EC` P-256/P-384, `OKP` Ed25519); symmetric `oct` keys in a JWKS
//! are ignored, so a shared-secret key can never come from the network.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::client::{is_allowed_scheme, HttpClient};
use super::error::FetchError;
use super::settings::{Issuer, JwksSource, JwksTuning};

/// The type of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyFamily {
    /// Whether a key of this type may verify `alg` (RFC 7518 §3.1).
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyFamily::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyFamily::P256 => alg == Algorithm::ES256,
            KeyFamily::P384 => alg == Algorithm::ES384,
            KeyFamily::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One verification key.
pub(crate) struct PublicKey {
    pub(crate) key: DecodingKey,
    pub(crate) family: KeyFamily,
    /// The JWK's `alg`, which then is the only algorithm it verifies.
    pub(crate) alg: Option<Algorithm>,
}

impl PublicKey {
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.family.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one successful fetch.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<PublicKey>>,
    unnamed: Vec<Arc<PublicKey>>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`; a token without `kid` is tried against the keys
    /// of the right type.
    pub(crate) fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<PublicKey>> {
        match kid {
            Some(k) => self.by_kid.get(k).into_iter().cloned().collect(),
            None => self
                .by_kid
                .values()
                .chain(&self.unnamed)
                .filter(|k| k.accepts(alg))
                .take(8)
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn has_kid(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(k) => self.by_kid.contains_key(k),
            None => true,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document; keys that are private-use, symmetric, of unsupported type or malformed are skipped.
///
/// # Errors
/// Invalid JSON, or no usable key at all.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<KeySet, FetchError> {
    let raw: RawSet = serde_json::from_slice(body).map_err(FetchError::Json)?;
    let mut set = KeySet::default();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyFamily::P256,
                EllipticCurve::P384 => KeyFamily::P384,
                EllipticCurve::P521 | EllipticCurve::Ed25519 => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyFamily::Ed25519
            }
            AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match ka.to_string().parse::<Algorithm>() {
                Ok(a) if family.fits(a) => Some(a),
                // A key declaring an algorithm its type cannot do, or one we do not know, is unusable.
                Ok(_) | Err(_) => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let pk = Arc::new(PublicKey { key, family, alg });
        match jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid, pk);
            }
            None => set.unnamed.push(pk),
        }
    }
    if set.len() == 0 {
        return Err(FetchError::NoUsableKey);
    }
    Ok(set)
}

/// What the cache holds for one issuer.
pub(crate) struct KeySnapshot {
    /// The last good keys, if any fetch ever succeeded.
    pub(crate) keys: Option<Arc<KeySet>>,
    /// Bumped on every change, so waiters can tell that someone else fetched meanwhile.
    pub(crate) generation: u64,
    /// Unix seconds after which the keys should be refetched before use.
    pub(crate) fresh_until: u64,
    /// Unix seconds after which a background refresh starts (three quarters of the TTL).
    pub(crate) refresh_at: u64,
    /// Unix seconds after which the keys are unusable if no refresh succeeded (`fresh_until + max_stale`).
    pub(crate) usable_until: u64,
    /// Unix seconds of the last fetch attempt, successful or not.
    pub(crate) last_attempt: u64,
    /// Whether that attempt failed.
    pub(crate) last_failed: bool,
    /// The discovered `jwks_uri`, reused until a fetch fails.
    pub(crate) jwks_uri: Option<Uri>,
    /// A background refresh is running.
    pub(crate) refreshing: AtomicBool,
}

/// A successful fetch.
pub(crate) struct Fetched {
    pub(crate) keys: KeySet,
    pub(crate) ttl: Duration,
    pub(crate) jwks_uri: Uri,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: Option<String>,
    jwks_uri: Option<String>,
}

/// Fetches an issuer's keys: discovery first unless `jwks_uri` is explicit or already discovered.
///
/// # Errors
/// Any fetch or document problem.
pub(crate) async fn fetch_keys(
    client: &HttpClient,
    issuer: &Issuer,
    source: &JwksSource,
    known: Option<&Uri>,
    tuning: &JwksTuning,
) -> Result<Fetched, FetchError> {
    let jwks_uri = match (source, known) {
        (JwksSource::Explicit(u), _) => u.clone(),
        (JwksSource::Discovery(_), Some(u)) => u.clone(),
        (JwksSource::Discovery(disc), None) => {
            let (body, _) = client
                .get(disc, tuning.fetch_timeout, tuning.max_bytes)
                .await?;
            let doc: Discovery = serde_json::from_slice(&body).map_err(FetchError::Json)?;
            if let Some(found) = doc.issuer {
                if found != issuer.url {
                    return Err(FetchError::IssuerMismatch { found });
                }
            }
            let raw = doc.jwks_uri.ok_or(FetchError::NoJwksUri)?;
            let uri: Uri = raw.parse().map_err(|_| FetchError::NoJwksUri)?;
            if !is_allowed_scheme(&uri) {
                return Err(FetchError::Insecure { url: raw });
            }
            uri
        }
    };
    let (body, headers) = client
        .get(&jwks_uri, tuning.fetch_timeout, tuning.max_bytes)
        .await?;
    let keys = parse_jwks(&body)?;
    let ttl = cache_ttl(&headers, tuning);
    Ok(Fetched {
        keys,
        ttl,
        jwks_uri,
    })
}

/// The TTL from `Cache-Control: max-age` (RFC 9111 §5.2.2.1), clamped to the configured bounds; `no-store` and
/// `no-cache` mean the minimum.
pub(crate) fn cache_ttl(headers: &http::HeaderMap, t: &JwksTuning) -> Duration {
    let mut ttl = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for directive in v.split(',') {
            let d = directive.trim().to_ascii_lowercase();
            if d == "no-store" || d == "no-cache" {
                ttl = Some(Duration::ZERO);
            } else if let Some(secs) = d.strip_prefix("max-age=") {
                if let Ok(s) = secs.trim_matches('"').parse::<u64>() {
                    ttl = ttl.or(Some(Duration::from_secs(s)));
                }
            }
        }
    }
    ttl.unwrap_or(t.default_ttl)
        .clamp(t.min_ttl, t.max_ttl.max(t.min_ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn ttl_is_clamped() {
        let t = JwksTuning::default();
        let mut h = http::HeaderMap::new();
        assert_eq!(cache_ttl(&h, &t), Duration::from_secs(300));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=5"),
        );
        assert_eq!(cache_ttl(&h, &t), t.min_ttl);
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=999999"),
        );
        assert_eq!(cache_ttl(&h, &t), t.max_ttl);
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=600"),
        );
        assert_eq!(cache_ttl(&h, &t), Duration::from_secs(600));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        assert_eq!(cache_ttl(&h, &t), t.min_ttl);
    }

    #[test]
    fn symmetric_and_mismatched_keys_are_skipped() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty":"OKP","crv":"Ed25519","kid":"e","alg":"RS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"ok","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"weird","kid":"w"}
        ]}"#;
        let set = parse_jwks(doc).expect("one usable key");
        assert_eq!(set.len(), 1);
        assert!(set.has_kid(Some("ok")) && !set.has_kid(Some("h")) && !set.has_kid(Some("e")));
        assert!(matches!(
            parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#),
            Err(FetchError::NoUsableKey)
        ));
    }
}
