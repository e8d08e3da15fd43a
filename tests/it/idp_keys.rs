//! An identity-provider stand-in for the Bearer tests: OpenID Connect discovery, a JWKS endpoint and RFC 7662
//! introspection served by a small hyper server on 127.0.0.1:0, plus signing keys generated at test time
//! (RSA via the `openssl` CLI, EC via rcgen) and token helpers.
//!
//! It speaks the real protocols over real sockets and counts the requests it serves, so tests can prove what the
//! gateway fetched. It must not be used as anything but a test fake: it checks nothing beyond client credentials.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Client id the introspection endpoint accepts (with [`INTROSPECTION_SECRET`], `client_secret_basic`).
pub(crate) const INTROSPECTION_CLIENT: &str = "gateway";
/// Client secret the introspection endpoint accepts.
pub(crate) const INTROSPECTION_SECRET: &str = "introspection-secret";

/// Unix seconds now (the gateway runs on the system clock).
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A signing key and its public JWK.
#[derive(Clone)]
pub(crate) struct TestKey {
    /// The key id put in tokens and the JWK.
    pub(crate) kid: String,
    /// The signing algorithm.
    pub(crate) alg: Algorithm,
    enc: EncodingKey,
    /// The public JWK.
    pub(crate) jwk: Value,
    /// The public key as SPKI PEM (RSA keys only; for the RS256 -> HS256 confusion attack).
    pub(crate) public_pem: Option<Vec<u8>>,
}

impl TestKey {
    /// The same key material under another key id.
    pub(crate) fn with_kid(&self, kid: &str) -> TestKey {
        let mut k = self.clone();
        k.kid = kid.to_owned();
        k.jwk["kid"] = json!(kid);
        k
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).expect("signing a test token")
    }
}

/// One RSA key: private PEM, public (SPKI) PEM, modulus bytes.
type RsaMaterial = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Two RSA-2048 keys made with the `openssl` CLI once per test run.
fn rsa_material() -> &'static [RsaMaterial; 2] {
    static KEYS: OnceLock<[RsaMaterial; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str], path: &std::path::Path| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .arg(path)
                .output()
                .expect("the openssl CLI is needed to generate RSA test keys");
            assert!(out.status.success(), "openssl {args:?} failed");
            out.stdout
        };
        let one = |name: &str| {
            let path = dir.path().join(name);
            run(
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ],
                &path,
            );
            let public = run(&["pkey", "-pubout", "-in"], &path);
            let text = String::from_utf8(run(&["rsa", "-noout", "-modulus", "-in"], &path))
                .expect("modulus is text");
            let hex = text.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (std::fs::read(&path).expect("read key"), public, n)
        };
        [one("a.pem"), one("b.pem")]
    })
}

/// RSA key `which` (0 or 1) as an RS256 key with this `kid`.
pub(crate) fn rsa_key(which: usize, kid: &str) -> TestKey {
    let (pem, public, n) = &rsa_material()[which];
    TestKey {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        enc: EncodingKey::from_rsa_pem(pem).expect("rsa pem"),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(n), "e": "AQAB"}),
        public_pem: Some(public.clone()),
    }
}

/// A fresh P-256 key for ES256.
pub(crate) fn es256_key(kid: &str) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256 key");
    let raw = kp.public_key_raw();
    TestKey {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"),
        jwk: json!({"kty": "EC", "kid": kid, "use": "sig", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        public_pem: None,
    }
}

/// A JWKS document of these keys.
pub(crate) fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// An HS256 token signed with `secret` (as an in-house auth service or an attacker would make it).
pub(crate) fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).expect("hs256 token")
}

/// An unsigned token (`alg: none`, empty signature, RFC 7519 §6).
pub(crate) fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// The identity-provider stand-in.
pub(crate) struct Idp {
    /// `http://127.0.0.1:PORT`, also the issuer URL it announces in discovery.
    pub(crate) base: String,
    keys: Mutex<Value>,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    introspect_hits: AtomicUsize,
    /// Milliseconds each introspection answer waits before it is sent.
    introspect_delay_ms: AtomicU64,
    /// Opaque token -> introspection answer; unknown tokens are inactive.
    opaque: Mutex<HashMap<String, Value>>,
}

impl Idp {
    /// Starts serving `keys` on 127.0.0.1:0.
    pub(crate) async fn start(keys: Value) -> Result<Arc<Idp>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let idp = Arc::new(Idp {
            base,
            keys: Mutex::new(keys),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            introspect_hits: AtomicUsize::new(0),
            introspect_delay_ms: AtomicU64::new(0),
            opaque: Mutex::new(HashMap::new()),
        });
        let state = Arc::clone(&idp);
        // The accept task lives as long as the test's runtime.
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(idp)
    }

    /// Replaces the published key set (rotation).
    pub(crate) fn set_keys(&self, keys: Value) {
        *self.keys.lock().expect("keys lock") = keys;
    }

    /// Registers an opaque token and the introspection answer for it.
    pub(crate) fn add_opaque(&self, token: &str, answer: Value) {
        self.opaque
            .lock()
            .expect("opaque lock")
            .insert(token.to_owned(), answer);
    }

    /// Makes each introspection answer wait `delay` (so concurrent requests overlap).
    pub(crate) fn set_introspect_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.introspect_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// JWKS documents served so far.
    pub(crate) fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    /// Discovery documents served so far.
    pub(crate) fn discovery_hits(&self) -> usize {
        self.discovery_hits.load(Ordering::SeqCst)
    }

    /// Introspection requests served so far.
    pub(crate) fn introspect_hits(&self) -> usize {
        self.introspect_hits.load(Ordering::SeqCst)
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let json = |v: Value| {
            let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        };
        let status = |s: StatusCode| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = s;
            r
        };
        match req.uri().path() {
            "/.well-known/openid-configuration" => {
                self.discovery_hits.fetch_add(1, Ordering::SeqCst);
                json(json!({
                    "issuer": self.base,
                    "jwks_uri": format!("{}/jwks", self.base),
                    "introspection_endpoint": format!("{}/introspect", self.base),
                }))
            }
            "/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                json(self.keys.lock().expect("keys lock").clone())
            }
            "/introspect" => {
                self.introspect_hits.fetch_add(1, Ordering::SeqCst);
                let delay = self.introspect_delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let expected = format!(
                    "Basic {}",
                    STANDARD.encode(format!("{INTROSPECTION_CLIENT}:{INTROSPECTION_SECRET}"))
                );
                let authorized = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                if !authorized {
                    return status(StatusCode::UNAUTHORIZED);
                }
                let Ok(body) = req.into_body().collect().await else {
                    return status(StatusCode::BAD_REQUEST);
                };
                let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                let token = body
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "token")
                    .map(|(_, v)| v.to_owned())
                    .unwrap_or_default();
                let answer = self
                    .opaque
                    .lock()
                    .expect("opaque lock")
                    .get(&token)
                    .cloned()
                    .unwrap_or(json!({"active": false}));
                json(answer)
            }
            _ => status(StatusCode::NOT_FOUND),
        }
    }
}

/// Writes a shared HMAC secret to a file in `dir` and returns its absolute path (for `secret_file`).
pub(crate) fn write_secret(dir: &std::path::Path, secret: &str) -> Result<String> {
    ensure!(secret.len() >= 32, "HMAC secrets must be at least 32 bytes");
    let path = dir.join("hmac-secret");
    std::fs::write(&path, format!("{secret}\n"))?;
    Ok(path.display().to_string())
}
