//! End-to-end tests of the auth module against a real identity-provider stand-in: a small hyper server on
//! 127.0.0.1:0 serving discovery, JWKS and introspection from keys generated in the test.
//!
//! Time is an injected clock; nothing sleeps for expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::config::file::FileConfig;
use crate::config::Problems;

const T0: u64 = 1_700_000_000;

struct ManualClock(AtomicU64);
impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
impl ManualClock {
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- keys

struct TestKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn with_kid(&self, kid: &str) -> TestKey {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        TestKey {
            kid: kid.into(),
            alg: self.alg,
            enc: self.enc.clone(),
            jwk,
        }
    }
    fn with_alg(&self, alg: Algorithm) -> TestKey {
        TestKey {
            kid: self.kid.clone(),
            alg,
            enc: self.enc.clone(),
            jwk: self.jwk.clone(),
        }
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Two RSA keys made with the `openssl` CLI once per test run: (private PEM, modulus bytes).
fn rsa_material() -> &'static [(Vec<u8>, Vec<u8>); 2] {
    static KEYS: OnceLock<[(Vec<u8>, Vec<u8>); 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let one = |name: &str| {
            let path = dir.path().join(name);
            let st = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&path)
                .output()
                .unwrap();
            assert!(st.status.success(), "openssl genpkey failed");
            let m = std::process::Command::new("openssl")
                .args(["rsa", "-noout", "-modulus", "-in"])
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8(m.stdout).unwrap();
            let hex = text.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (std::fs::read(&path).unwrap(), n)
        };
        [one("a.pem"), one("b.pem")]
    })
}

fn rsa_key(which: usize, kid: &str, alg: Algorithm) -> TestKey {
    let (pem, n) = &rsa_material()[which];
    TestKey {
        kid: kid.into(),
        alg,
        enc: EncodingKey::from_rsa_pem(pem).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(n), "e": "AQAB"}),
    }
}

fn ec_key(kid: &str, alg: Algorithm) -> TestKey {
    let (rc, crv, len) = match alg {
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256", 32),
        _ => (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384", 48),
    };
    let kp = rcgen::KeyPair::generate_for(rc).unwrap();
    let raw = kp.public_key_raw();
    TestKey {
        kid: kid.into(),
        alg,
        enc: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(&raw[1..1 + len]), "y": b64(&raw[1 + len..])}),
    }
}

fn ed_key(kid: &str) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(kp.public_key_raw())}),
    }
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &key.enc).unwrap()
}

fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

// ---------------------------------------------------------------- IdP stand-in

#[derive(Default)]
struct Idp {
    base: String,
    jwks: Mutex<Value>,
    cache_control: Mutex<Option<String>>,
    down: AtomicBool,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    introspect_hits: AtomicUsize,
    /// token -> introspection answer
    opaque: Mutex<HashMap<String, Value>>,
    /// auth method the last introspection used
    seen_method: Mutex<Option<&'static str>>,
}

impl Idp {
    async fn start(keys: Value) -> Arc<Idp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Arc::new(Idp {
            base: format!("http://{addr}"),
            jwks: Mutex::new(keys),
            ..Idp::default()
        });
        let state = Arc::clone(&idp);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
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
        idp
    }

    fn set_keys(&self, keys: Value) {
        *self.jwks.lock().unwrap() = keys;
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let json = |v: Value| {
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .unwrap()
        };
        if self.down.load(Ordering::SeqCst) {
            return Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        match req.uri().path() {
            "/.well-known/openid-configuration" => {
                self.discovery_hits.fetch_add(1, Ordering::SeqCst);
                json(json!({"issuer": self.base, "jwks_uri": format!("{}/jwks", self.base)}))
            }
            "/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                // Let concurrent requests pile up behind this fetch.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let mut r = json(self.jwks.lock().unwrap().clone());
                if let Some(cc) = self.cache_control.lock().unwrap().clone() {
                    r.headers_mut()
                        .insert("cache-control", HeaderValue::from_str(&cc).unwrap());
                }
                r
            }
            "/redirect" => Response::builder()
                .status(StatusCode::FOUND)
                .header("location", format!("{}/jwks", self.base))
                .body(Full::new(Bytes::new()))
                .unwrap(),
            "/big" => json(json!({"keys": [], "pad": "x".repeat(300_000)})),
            "/introspect" => {
                self.introspect_hits.fetch_add(1, Ordering::SeqCst);
                let basic = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: HashMap<String, String> = String::from_utf8(body.to_vec())
                    .unwrap()
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.replace("%20", " ")))
                    .collect();
                let creds_ok = match (&basic, form.get("client_id")) {
                    (Some(b), None) => {
                        *self.seen_method.lock().unwrap() = Some("client_secret_basic");
                        b == &format!("Basic {}", STANDARD.encode("gateway:s3cret%20pw"))
                    }
                    (None, Some(id)) => {
                        *self.seen_method.lock().unwrap() = Some("client_secret_post");
                        id == "gateway"
                            && form.get("client_secret").map(String::as_str) == Some("s3cret pw")
                    }
                    _ => false,
                };
                if !creds_ok {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                }
                let token = form.get("token").cloned().unwrap_or_default();
                let answer = self
                    .opaque
                    .lock()
                    .unwrap()
                    .get(&token)
                    .cloned()
                    .unwrap_or(json!({"active": false}));
                json(answer)
            }
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        }
    }
}

// ---------------------------------------------------------------- config + harness

struct Setup {
    auth: AuthSettings,
    services: BTreeMap<String, ServicePolicy>,
    problems: Problems,
}

fn load_in(text: &str, dir: &Path) -> Setup {
    let file: FileConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut problems = Problems::default();
    let auth = build_auth(&file.auth, dir, &mut problems);
    let services = file
        .services
        .iter()
        .map(|(n, s)| (n.clone(), build_service_policy(n, s, &auth, &mut problems)))
        .collect();
    Setup {
        auth,
        services,
        problems,
    }
}

fn load(text: &str) -> Setup {
    let s = load_in(text, Path::new("."));
    let msgs: Vec<String> = s.problems.iter().map(ToString::to_string).collect();
    assert!(msgs.is_empty(), "unexpected problems: {msgs:?}");
    s
}

fn authn(clock: &Arc<ManualClock>) -> Authenticator {
    Authenticator::with_options(AuthenticatorOptions {
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        ..AuthenticatorOptions::default()
    })
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock(AtomicU64::new(T0)))
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn claims(iss: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "sub": "u-1", "preferred_username": "ann", "email": "ann@example.com",
        "aud": "api", "exp": T0 + 3600, "iat": T0});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

impl Setup {
    fn svc(&self, name: &str) -> &ServicePolicy {
        &self.services[name]
    }
}

async fn check(
    a: &Authenticator,
    s: &Setup,
    svc: &str,
    path: &str,
    h: &HeaderMap,
) -> Result<Permit, AuthError> {
    a.authorize(&s.auth, s.svc(svc), &Method::GET, path, h)
        .await
}

fn rejection(r: Result<Permit, AuthError>) -> TokenRejection {
    match r {
        Err(AuthError::InvalidToken { reason, .. }) => reason,
        other => panic!("expected invalid token, got {other:?}"),
    }
}

fn jwks_config(idp: &Idp, extra: &str) -> String {
    format!(
        r#"
[[auth.issuers]]
name = "idp"
issuer = "{base}"
audiences = ["api"]
leeway_secs = 0
{extra}
[auth.jwks]
min_ttl_secs = 60
max_ttl_secs = 600
unknown_kid_cooldown_secs = 30
max_stale_secs = 3600
[services.api]
"#,
        base = idp.base
    )
}

// ---------------------------------------------------------------- validation

#[tokio::test]
async fn every_algorithm_verifies_via_discovery() {
    let keys = [
        rsa_key(0, "rs256", Algorithm::RS256),
        rsa_key(0, "rs384", Algorithm::RS384),
        rsa_key(0, "rs512", Algorithm::RS512),
        rsa_key(0, "ps256", Algorithm::PS256),
        rsa_key(0, "ps384", Algorithm::PS384),
        rsa_key(0, "ps512", Algorithm::PS512),
        ec_key("es256", Algorithm::ES256),
        ec_key("es384", Algorithm::ES384),
        ed_key("eddsa"),
    ];
    let idp = Idp::start(jwks(&keys.iter().collect::<Vec<_>>())).await;
    let s = load(&jwks_config(&idp, ""));
    let c = clock();
    let a = authn(&c);
    for k in &keys {
        let token = sign(k, &claims(&idp.base, json!({})));
        let p = check(&a, &s, "api", "/", &bearer(&token)).await;
        let id = p.unwrap_or_else(|e| panic!("{:?}: {e:?}", k.alg));
        assert_eq!(id.identity().map(|i| i.user.as_str()), Some("ann"));
    }
    assert_eq!(idp.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn forged_signature_is_rejected() {
    let good = rsa_key(0, "k", Algorithm::RS256);
    let forger = rsa_key(1, "k", Algorithm::RS256);
    let idp = Idp::start(jwks(&[&good])).await;
    let s = load(&jwks_config(&idp, ""));
    let a = authn(&clock());
    let token = sign(&forger, &claims(&idp.base, json!({})));
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&token)).await),
        TokenRejection::BadSignature
    );
    // Tampered payload with the original signature.
    let token = sign(&good, &claims(&idp.base, json!({})));
    let mut parts: Vec<&str> = token.split('.').collect();
    let evil = b64(claims(&idp.base, json!({"preferred_username": "root"}))
        .to_string()
        .as_bytes());
    parts[1] = &evil;
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&parts.join("."))).await),
        TokenRejection::BadSignature
    );
}

#[tokio::test]
async fn claim_checks_reject_with_reason() {
    let k = ec_key("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&k])).await;
    let s = load(&jwks_config(&idp, ""));
    let a = authn(&clock());
    let cases = [
        (json!({"exp": T0 - 1}), TokenRejection::Expired),
        (json!({"nbf": T0 + 10}), TokenRejection::NotYetValid),
        (json!({"iat": T0 + 10}), TokenRejection::IssuedInFuture),
        (
            json!({"iss": "https://evil.example.com"}),
            TokenRejection::UntrustedIssuer,
        ),
        (json!({"iss": null}), TokenRejection::UntrustedIssuer),
        (json!({"aud": "other"}), TokenRejection::WrongAudience),
        (json!({"aud": null}), TokenRejection::WrongAudience),
        (json!({"exp": null}), TokenRejection::MissingExp),
    ];
    for (extra, want) in cases {
        let token = sign(&k, &claims(&idp.base, extra.clone()));
        assert_eq!(
            rejection(check(&a, &s, "api", "/", &bearer(&token)).await),
            want,
            "{extra}"
        );
    }
    let token = sign(&k, &claims(&idp.base, json!({"aud": ["x", "api"]})));
    assert!(check(&a, &s, "api", "/", &bearer(&token)).await.is_ok());
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let k = rsa_key(0, "k", Algorithm::RS256);
    let idp = Idp::start(jwks(&[&k])).await;
    let s = load(&jwks_config(&idp, ""));
    let a = authn(&clock());
    let header = b64(br#"{"alg":"none","typ":"JWT","kid":"k"}"#);
    let body = b64(claims(&idp.base, json!({})).to_string().as_bytes());
    for token in [format!("{header}.{body}."), format!("{header}.{body}.AAAA")] {
        let r = check(&a, &s, "api", "/", &bearer(&token)).await;
        let e = r.unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(
            matches!(
                e,
                AuthError::InvalidToken {
                    reason: TokenRejection::AlgorithmNotAllowed | TokenRejection::BadSignature,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn hmac_token_against_rsa_issuer_is_rejected() {
    let k = rsa_key(0, "k", Algorithm::RS256);
    let idp = Idp::start(jwks(&[&k])).await;
    let s = load(&jwks_config(&idp, ""));
    let a = authn(&clock());
    // The classic confusion: HS256 keyed with the issuer's public key material.
    let public = URL_SAFE_NO_PAD
        .decode(k.jwk["n"].as_str().unwrap())
        .unwrap();
    let forged = TestKey {
        kid: "k".into(),
        alg: Algorithm::HS256,
        enc: EncodingKey::from_secret(&public),
        jwk: json!({}),
    };
    let token = sign(&forged, &claims(&idp.base, json!({})));
    let r = rejection(check(&a, &s, "api", "/", &bearer(&token)).await);
    assert!(
        matches!(
            r,
            TokenRejection::AlgorithmNotAllowed | TokenRejection::AlgorithmKeyMismatch
        ),
        "{r:?}"
    );
    // An RS256 key in the JWKS cannot verify ES256 either.
    let es = ec_key("k", Algorithm::ES256);
    let token = sign(&es, &claims(&idp.base, json!({})));
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&token)).await),
        TokenRejection::AlgorithmKeyMismatch
    );
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-in-house";

fn hmac_config(extra: &str) -> String {
    format!(
        r#"
[[auth.issuers]]
name = "inhouse"
issuer = "daarion-auth"
secret = "{SECRET}"
groups_claim = "roles"
{extra}
[services.api]
allow_groups = ["admin"]
"#
    )
}

#[tokio::test]
async fn hmac_issuer_accepts_hs256_and_maps_roles() {
    let s = load(&hmac_config(""));
    let a = authn(&clock());
    let key = hs256_key();
    let c = json!({"iss": "daarion-auth", "sub": "9f1c", "email": "b@x.org", "name": "Bo", "roles": ["admin", "user"],
        "type": "access", "exp": T0 + 1800});
    let p = check(&a, &s, "api", "/", &bearer(&sign(&key, &c)))
        .await
        .unwrap();
    let id = p.identity().unwrap();
    assert_eq!(
        (id.user.as_str(), id.groups.clone()),
        ("9f1c", vec!["admin".to_string(), "user".into()])
    );
    // Wrong secret.
    let bad = TestKey {
        enc: EncodingKey::from_secret(b"another-secret-another-secret-123"),
        ..key.with_kid("x")
    };
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&sign(&bad, &c))).await),
        TokenRejection::BadSignature
    );
    // HS512 is not enabled by default for a 41-byte secret (RFC 7518 §3.2 key size).
    assert_eq!(
        rejection(
            check(
                &a,
                &s,
                "api",
                "/",
                &bearer(&sign(&key.with_alg(Algorithm::HS512), &c))
            )
            .await
        ),
        TokenRejection::AlgorithmNotAllowed
    );
}

#[tokio::test]
async fn rsa_token_against_hmac_issuer_is_rejected() {
    let s = load(&hmac_config(""));
    let a = authn(&clock());
    let k = rsa_key(0, "x", Algorithm::RS256);
    let c = json!({"iss": "daarion-auth", "sub": "9f1c", "roles": ["admin"], "exp": T0 + 1800});
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&sign(&k, &c))).await),
        TokenRejection::AlgorithmNotAllowed
    );
}

// ---------------------------------------------------------------- JWKS cache

#[tokio::test]
async fn kid_rotation_accepts_new_and_drops_old() {
    let old = ec_key("old", Algorithm::ES256);
    let new = ec_key("new", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&old])).await;
    let s = load(&jwks_config(&idp, ""));
    let c = clock();
    let a = authn(&c);
    let old_token = sign(&old, &claims(&idp.base, json!({})));
    assert!(check(&a, &s, "api", "/", &bearer(&old_token)).await.is_ok());
    // The issuer publishes the new key and stops publishing the old one.
    idp.set_keys(jwks(&[&new]));
    c.advance(31);
    let new_token = sign(&new, &claims(&idp.base, json!({})));
    assert!(check(&a, &s, "api", "/", &bearer(&new_token)).await.is_ok());
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 2);
    // The old key is gone from a successful fetch: even the cached verification is no longer accepted.
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&old_token)).await),
        TokenRejection::UnknownKey
    );
    let fresh_old = sign(&old, &claims(&idp.base, json!({"jti": "2"})));
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&fresh_old)).await),
        TokenRejection::UnknownKey
    );
}

#[tokio::test]
async fn idp_down_serves_last_keys_until_max_stale() {
    let k = ed_key("k");
    let idp = Idp::start(jwks(&[&k])).await;
    *idp.cache_control.lock().unwrap() = Some("max-age=120".into());
    let s = load(&jwks_config(&idp, ""));
    let c = clock();
    let a = authn(&c);
    let token = |n: u64| {
        sign(
            &k,
            &claims(&idp.base, json!({"jti": n, "exp": T0 + 100_000})),
        )
    };
    assert!(check(&a, &s, "api", "/", &bearer(&token(1))).await.is_ok());
    idp.down.store(true, Ordering::SeqCst);
    c.advance(121); // past the TTL: a refetch is tried, fails, and the last good keys serve
    assert!(check(&a, &s, "api", "/", &bearer(&token(2))).await.is_ok());
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        1,
        "the failed fetch never reached the JWKS"
    );
    c.advance(3600); // past max_stale
    let e = check(&a, &s, "api", "/", &bearer(&token(3)))
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::IssuerUnavailable { .. }), "{e:?}");
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Back up: keys are fetched again.
    idp.down.store(false, Ordering::SeqCst);
    c.advance(10);
    assert!(check(&a, &s, "api", "/", &bearer(&token(4))).await.is_ok());
}

#[tokio::test]
async fn unknown_kid_flood_costs_one_fetch_per_cooldown() {
    let k = rsa_key(0, "k", Algorithm::RS256);
    let idp = Idp::start(jwks(&[&k])).await;
    let s = Arc::new(load(&jwks_config(&idp, "")));
    let c = clock();
    let a = authn(&c);
    assert!(check(
        &a,
        &s,
        "api",
        "/",
        &bearer(&sign(&k, &claims(&idp.base, json!({}))))
    )
    .await
    .is_ok());
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1);
    let flood = |round: usize| {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (a, s) = (a.clone(), Arc::clone(&s));
            let token = sign(
                &k.with_kid(&format!("rnd-{round}-{i}")),
                &claims(&idp.base, json!({})),
            );
            tasks.push(tokio::spawn(async move {
                rejection(check(&a, &s, "api", "/", &bearer(&token)).await)
            }));
        }
        tasks
    };
    for t in flood(0) {
        assert_eq!(t.await.unwrap(), TokenRejection::UnknownKey);
    }
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        1,
        "within the cooldown: no refetch"
    );
    c.advance(31);
    for t in flood(1) {
        assert_eq!(t.await.unwrap(), TokenRejection::UnknownKey);
    }
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        2,
        "one refetch for the whole flood"
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let k = ec_key("k", Algorithm::ES384);
    let idp = Idp::start(jwks(&[&k])).await;
    let s = Arc::new(load(&jwks_config(&idp, "")));
    let a = authn(&clock());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (a, s) = (a.clone(), Arc::clone(&s));
        let token = sign(&k, &claims(&idp.base, json!({"jti": i})));
        tasks.push(tokio::spawn(async move {
            check(&a, &s, "api", "/", &bearer(&token)).await.is_ok()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1);
    assert_eq!(idp.discovery_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn same_kid_at_two_issuers_are_different_keys() {
    let ka = ec_key("shared", Algorithm::ES256);
    let kb = ec_key("shared", Algorithm::ES256);
    let ia = Idp::start(jwks(&[&ka])).await;
    let ib = Idp::start(jwks(&[&kb])).await;
    let s = load(&format!(
        r#"
[[auth.issuers]]
name = "a"
issuer = "{}"
[[auth.issuers]]
name = "b"
issuer = "{}"
jwks_uri = "{}/jwks"
[services.api]
[services.only-a]
issuers = ["a"]
"#,
        ia.base, ib.base, ib.base
    ));
    let a = authn(&clock());
    let ta = sign(&ka, &claims(&ia.base, json!({})));
    let tb = sign(&kb, &claims(&ib.base, json!({})));
    assert!(check(&a, &s, "api", "/", &bearer(&ta)).await.is_ok());
    assert!(check(&a, &s, "api", "/", &bearer(&tb)).await.is_ok());
    assert_eq!(
        ib.discovery_hits.load(Ordering::SeqCst),
        0,
        "explicit jwks_uri skips discovery"
    );
    // Issuer b's kid "shared" signed by a's key, claiming to be b.
    let cross = sign(&ka, &claims(&ib.base, json!({"jti": "x"})));
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &bearer(&cross)).await),
        TokenRejection::BadSignature
    );
    assert_eq!(
        rejection(check(&a, &s, "only-a", "/", &bearer(&tb)).await),
        TokenRejection::UntrustedIssuer
    );
}

#[tokio::test]
async fn fetch_limits_redirects_and_discovery_mismatch() {
    let k = ec_key("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&k])).await;
    let a = authn(&clock());
    for (path, want) in [("/redirect", "redirect"), ("/big", "larger than")] {
        let s = load(&format!(
            "[[auth.issuers]]\nissuer = \"{0}\"\njwks_uri = \"{0}{path}\"\n[services.api]\n",
            idp.base
        ));
        let e = check(
            &a,
            &s,
            "api",
            "/",
            &bearer(&sign(&k, &claims(&idp.base, json!({})))),
        )
        .await
        .unwrap_err();
        match e {
            AuthError::IssuerUnavailable { source, .. } => {
                assert!(source.to_string().contains(want), "{source}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Discovery naming another issuer (OpenID Connect Discovery §4.3).
    let s = load(&format!(
        "[[auth.issuers]]\nissuer = \"{}/\"\n[services.api]\n",
        idp.base
    ));
    let token = sign(&k, &claims(&format!("{}/", idp.base), json!({})));
    let e = check(&a, &s, "api", "/", &bearer(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            AuthError::IssuerUnavailable {
                source: FetchError::IssuerMismatch { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------- introspection

#[tokio::test]
async fn introspection_with_basic_and_post() {
    let idp = Idp::start(json!({"keys": []})).await;
    idp.opaque.lock().unwrap().insert(
        "opaque-good".into(),
        json!({"active": true, "sub": "z1", "username": "zed", "iss": idp.base, "aud": ["api"], "exp": T0 + 600,
               "urn:zitadel:iam:org:project:roles": {"admin": {"1": "org"}}}),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cs"), "s3cret pw\n").unwrap();
    for method in ["client_secret_basic", "client_secret_post"] {
        let text = format!(
            r#"
[[auth.issuers]]
issuer = "{base}"
audiences = ["api"]
groups_claim = "urn:zitadel:iam:org:project:roles"
introspection_endpoint = "{base}/introspect"
client_id = "gateway"
client_secret_file = "cs"
introspection_auth_method = "{method}"
[services.api]
allow_groups = ["admin"]
"#,
            base = idp.base
        );
        let s = load_in(&text, dir.path());
        assert!(s.problems.is_empty());
        let a = authn(&clock());
        let before = idp.introspect_hits.load(Ordering::SeqCst);
        let p = check(&a, &s, "api", "/", &bearer("opaque-good"))
            .await
            .unwrap();
        assert_eq!(p.identity().unwrap().user, "zed");
        assert_eq!(*idp.seen_method.lock().unwrap(), Some(method));
        // Cached: a second request does not introspect again.
        assert!(check(&a, &s, "api", "/", &bearer("opaque-good"))
            .await
            .is_ok());
        assert_eq!(idp.introspect_hits.load(Ordering::SeqCst), before + 1);
        assert_eq!(
            rejection(check(&a, &s, "api", "/", &bearer("opaque-unknown")).await),
            TokenRejection::Inactive
        );
    }
    // No introspection configured: an opaque token cannot be checked.
    let s = load(&hmac_config(""));
    assert_eq!(
        rejection(check(&authn(&clock()), &s, "api", "/", &bearer("opaque")).await),
        TokenRejection::NotIntrospectable
    );
}

// ---------------------------------------------------------------- policy

fn policy_config() -> String {
    hmac_config("").replace("[services.api]\nallow_groups = [\"admin\"]\n", "")
        + r#"
[services.app]
allow_groups = ["staff"]
cors_preflight = "bypass"
[[services.app.rules]]
paths = ["/public/*", "/health"]
policy = "bypass"
[[services.app.rules]]
paths = ["/admin/*"]
allow_groups = ["admin"]
[[services.app.rules]]
paths = ["/internal/*"]
policy = "deny"
[[services.app.rules]]
paths = ["/write/*"]
methods = ["post"]
allow_users = ["root"]

[services.mail]
allow_emails = ["*@Example.COM", "boss@other.org"]
require_claims = { tenant = ["acme", "globex"] }

[services.site]
bypass_auth = true
[[services.site.rules]]
paths = ["/account/*"]
"#
}

/// The in-house issuer's HS256 key (`SECRET`).
fn hs256_key() -> TestKey {
    TestKey {
        kid: "x".into(),
        alg: Algorithm::HS256,
        enc: EncodingKey::from_secret(SECRET.as_bytes()),
        jwk: json!({}),
    }
}

fn hs(extra: Value) -> String {
    let key = hs256_key();
    let mut c = json!({"iss": "daarion-auth", "sub": "u1", "preferred_username": "ann", "email": "ann@example.com",
        "roles": ["staff"], "tenant": "acme", "exp": T0 + 1800});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign(&key, &c)
}

#[tokio::test]
async fn path_rules_first_match_and_normalization_attacks() {
    let s = load(&policy_config());
    let a = authn(&clock());
    let none = HeaderMap::new();
    let staff = bearer(&hs(json!({})));
    // Encoded-slash readings must pass the service default too, so the admin is also staff.
    let admin = bearer(&hs(json!({"roles": ["admin", "staff"]})));
    // Bypass paths need nothing.
    for p in ["/public/x", "/public", "/health", "/public/./x"] {
        assert!(
            check(&a, &s, "app", p, &none)
                .await
                .unwrap()
                .identity()
                .is_none(),
            "{p}"
        );
    }
    // Attacks: none of these may ride the bypass rule to /admin or /internal.
    for p in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/public%2f..%2fadmin/x",
        "/public%2F..%2Fadmin/x",
        "/public\\..\\admin/x",
        "//admin/x",
        "/public//../admin/x",
        "/ADMIN/x",
        "/Admin/x",
    ] {
        let e = check(&a, &s, "app", p, &none).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{p}");
        let e = check(&a, &s, "app", p, &staff).await.unwrap_err();
        assert!(
            matches!(
                e,
                AuthError::Forbidden {
                    rule: RuleRef::Rule(1),
                    ..
                }
            ),
            "{p}: {e:?}"
        );
        assert!(check(&a, &s, "app", p, &admin).await.is_ok(), "{p}");
    }
    // Mixed case does not get the bypass: /PUBLIC is protected.
    assert_eq!(
        check(&a, &s, "app", "/PUBLIC/x", &none)
            .await
            .unwrap_err()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    for p in [
        "/internal/x",
        "/public/../internal/x",
        "/INTERNAL/x",
        "/public%2f..%2finternal",
    ] {
        let e = check(&a, &s, "app", p, &admin).await.unwrap_err();
        assert!(
            matches!(
                e,
                AuthError::Forbidden {
                    reason: DenyReason::DenyRule,
                    ..
                }
            ),
            "{p}: {e:?}"
        );
    }
    for p in ["/a%00b", "/a\0b", "/a%zz"] {
        assert_eq!(
            check(&a, &s, "app", p, &none).await.unwrap_err().status(),
            StatusCode::BAD_REQUEST,
            "{p}"
        );
    }
    // Method-scoped rule: POST /write needs user root; GET falls through to the service default.
    let post = a
        .authorize(&s.auth, s.svc("app"), &Method::POST, "/write/x", &staff)
        .await;
    assert!(matches!(
        post,
        Err(AuthError::Forbidden {
            rule: RuleRef::Rule(3),
            ..
        })
    ));
    assert!(check(&a, &s, "app", "/write/x", &staff).await.is_ok());
    // Service default: groups staff; others forbidden.
    let other = bearer(&hs(json!({"roles": "guest"})));
    assert!(matches!(
        check(&a, &s, "app", "/x", &other).await,
        Err(AuthError::Forbidden {
            rule: RuleRef::Service,
            reason: DenyReason::NotAllowed
        })
    ));
    // Bypass service with an allow rule: anonymous at /, authenticated at /account.
    assert!(check(&a, &s, "site", "/", &none).await.is_ok());
    assert_eq!(
        check(&a, &s, "site", "/account/me", &none)
            .await
            .unwrap_err()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(check(&a, &s, "site", "/account/me", &other).await.is_ok());
}

#[tokio::test]
async fn cors_preflight_bypass() {
    let s = load(&policy_config());
    let a = authn(&clock());
    let mut h = HeaderMap::new();
    h.insert(
        "access-control-request-method",
        HeaderValue::from_static("POST"),
    );
    assert!(a
        .authorize(&s.auth, s.svc("app"), &Method::OPTIONS, "/x", &h)
        .await
        .is_ok());
    // Not a preflight without the header, and never on a denied path.
    let plain = a
        .authorize(
            &s.auth,
            s.svc("app"),
            &Method::OPTIONS,
            "/x",
            &HeaderMap::new(),
        )
        .await;
    assert!(plain.is_err());
    assert!(a
        .authorize(&s.auth, s.svc("app"), &Method::OPTIONS, "/internal/x", &h)
        .await
        .is_err());
    // A service without the setting does not let preflights through.
    assert!(a
        .authorize(&s.auth, s.svc("mail"), &Method::OPTIONS, "/x", &h)
        .await
        .is_err());
}

#[tokio::test]
async fn emails_and_required_claims() {
    let s = load(&policy_config());
    let a = authn(&clock());
    let ok = |c: Value| bearer(&hs(c));
    assert!(check(
        &a,
        &s,
        "mail",
        "/",
        &ok(json!({"email": "ann@EXAMPLE.com"}))
    )
    .await
    .is_ok());
    assert!(check(
        &a,
        &s,
        "mail",
        "/",
        &ok(json!({"email": "boss@other.org", "tenant": ["x", "globex"]}))
    )
    .await
    .is_ok());
    for (c, want) in [
        (
            json!({"email": "ann@example.com.evil.org"}),
            DenyReason::NotAllowed,
        ),
        (
            json!({"email": "ann@example.com", "email_verified": false}),
            DenyReason::NotAllowed,
        ),
        (json!({"email": "x@other.org"}), DenyReason::NotAllowed),
        (
            json!({"tenant": "initech"}),
            DenyReason::ClaimMismatch {
                claim: "tenant".into(),
            },
        ),
    ] {
        match check(&a, &s, "mail", "/", &ok(c.clone())).await {
            Err(AuthError::Forbidden { reason, .. }) => assert_eq!(reason, want, "{c}"),
            other => panic!("{c}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn groups_claim_shapes() {
    let text = hmac_config("").replace(
        "allow_groups = [\"admin\"]",
        "allow_groups = [\"admin\"]\ngroups_claim = \"org.teams\"",
    );
    let s = load(&text);
    let a = authn(&clock());
    let k = hs256_key();
    let tok = |g: Value| {
        bearer(&sign(
            &k,
            &json!({"iss": "daarion-auth", "sub": "s", "exp": T0 + 60, "org": {"teams": g}}),
        ))
    };
    assert!(check(&a, &s, "api", "/", &tok(json!(["x", "admin"])))
        .await
        .is_ok());
    assert!(check(&a, &s, "api", "/", &tok(json!("admin")))
        .await
        .is_ok());
    assert!(
        check(&a, &s, "api", "/", &tok(json!({"admin": {"123": "org"}})))
            .await
            .is_ok()
    );
    assert!(check(&a, &s, "api", "/", &tok(json!(["administrator"])))
        .await
        .is_err());
    assert!(check(&a, &s, "api", "/", &tok(json!(7))).await.is_err());
}

#[test]
fn a_session_identity_is_remembered_only_for_its_own_claims_and_settings() {
    use super::claims::ClaimPath;
    use super::identity::IdentityMemo;

    // The issuer reads groups from `roles`; a service may read them from `groups` instead.
    let s = load(&hmac_config(""));
    let issuer = &s.auth.issuers[0];
    let claims = |groups: &[&str]| {
        Arc::new(
            json!({"sub": "s-1", "preferred_username": "bob", "roles": groups, "groups": ["r1"]})
                .as_object()
                .unwrap()
                .clone(),
        )
    };
    let memo = IdentityMemo::default();
    let staff = claims(&["staff"]);
    let first = memo.identity(&staff, issuer, None);
    assert_eq!(first.groups, ["staff"]);
    assert!(
        Arc::ptr_eq(&first, &memo.identity(&staff, issuer, None)),
        "remembered"
    );
    // Claims a refresh brought are read afresh, and so are equal ones in a new record.
    assert_eq!(
        memo.identity(&claims(&["admins"]), issuer, None).groups,
        ["admins"]
    );
    let equal = claims(&["staff"]);
    assert!(!Arc::ptr_eq(&first, &memo.identity(&equal, issuer, None)));
    // A service that reads groups from another claim gets its own reading, not the remembered one.
    let other = ClaimPath("groups".into());
    assert_eq!(memo.identity(&staff, issuer, Some(&other)).groups, ["r1"]);
    assert!(Arc::ptr_eq(&first, &memo.identity(&staff, issuer, None)));
    // A copied session record starts with nothing remembered.
    let copied = memo.clone();
    assert!(!Arc::ptr_eq(&first, &copied.identity(&staff, issuer, None)));
}

#[tokio::test]
async fn one_cached_token_is_read_by_each_service_with_its_own_groups_claim() {
    // The verified-token cache remembers the identity made from the token's claims: a service that reads groups
    // from another claim must not get the one made for another service, in either order, cached or not.
    let text = format!(
        "{}\n[services.teams]\nallow_groups = [\"admin\"]\ngroups_claim = \"org.teams\"\n",
        hmac_config("")
    );
    let s = load(&text);
    let a = authn(&clock());
    let k = hs256_key();
    let t = bearer(&sign(
        &k,
        &json!({"iss": "daarion-auth", "sub": "s", "exp": T0 + 60,
                "roles": ["admin"], "org": {"teams": ["ops"]}}),
    ));
    let groups = |p: &Permit| p.identity().unwrap().groups.clone();
    for _ in 0..2 {
        assert_eq!(
            groups(&check(&a, &s, "api", "/", &t).await.unwrap()),
            ["admin"]
        );
        assert!(matches!(
            check(&a, &s, "teams", "/", &t).await,
            Err(AuthError::Forbidden { .. })
        ));
    }
    let a = authn(&clock());
    for _ in 0..2 {
        assert!(check(&a, &s, "teams", "/", &t).await.is_err());
        assert_eq!(
            groups(&check(&a, &s, "api", "/", &t).await.unwrap()),
            ["admin"]
        );
    }
}

#[tokio::test]
async fn verified_cache_rechecks_time_with_the_clock() {
    let s = load(&hmac_config(""));
    let c = clock();
    let a = authn(&c);
    let k = hs256_key();
    let t = bearer(&sign(
        &k,
        &json!({"iss": "daarion-auth", "sub": "s", "roles": ["admin"], "exp": T0 + 100}),
    ));
    assert!(check(&a, &s, "api", "/", &t).await.is_ok());
    assert!(check(&a, &s, "api", "/", &t).await.is_ok());
    c.advance(161); // past exp + default leeway of 60 s
    assert_eq!(
        rejection(check(&a, &s, "api", "/", &t).await),
        TokenRejection::Expired
    );
}

// ---------------------------------------------------------------- errors and headers

#[tokio::test]
async fn missing_credentials_and_not_configured() {
    let s = load(&policy_config());
    let a = authn(&clock());
    let e = check(&a, &s, "app", "/x", &HeaderMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        e.www_authenticate().unwrap(),
        r#"Bearer realm="portcullis""#
    );
    let mut basic = HeaderMap::new();
    basic.insert("authorization", HeaderValue::from_static("Basic YTpi"));
    assert!(matches!(
        check(&a, &s, "app", "/x", &basic).await,
        Err(AuthError::NoCredentials)
    ));
    let e = check(&a, &s, "app", "/x", &bearer("a.b.c"))
        .await
        .unwrap_err();
    let v = e.www_authenticate().unwrap();
    assert_eq!(
        v,
        r#"Bearer realm="portcullis", error="invalid_token", error_description="the access token is invalid""#
    );
    let e = check(&a, &s, "app", "/x", &bearer(&hs(json!({"exp": T0 - 1000}))))
        .await
        .unwrap_err();
    assert!(e
        .www_authenticate()
        .unwrap()
        .to_str()
        .unwrap()
        .contains("expired"));
    // A protected service with no issuer fails closed.
    let s = load("[services.api]\n");
    let e = check(&a, &s, "api", "/", &bearer(&hs(json!({}))))
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::NotConfigured { .. }));
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert!(e.www_authenticate().is_some());
}

#[tokio::test]
async fn identity_headers_replace_spoofed_ones() {
    let s = load(
        &(policy_config()
            + r#"
[services.custom]
pass_authorization = true
[services.custom.identity_headers]
user = ["X-Forwarded-User", "X-Auth-Request-User"]
email = "X-Auth-Request-Email"
group_separator = "|"
claims = { "X-Tenant" = "tenant" }
"#),
    );
    let a = authn(&clock());
    let token = hs(json!({"roles": ["staff", "a|b"], "name": "Ann A"}));
    let mut h = bearer(&token);
    h.append("Remote-User", HeaderValue::from_static("root"));
    h.append("remote-user", HeaderValue::from_static("root2"));
    h.insert("X-Forwarded-User", HeaderValue::from_static("root"));
    h.insert("x-auth-request-groups", HeaderValue::from_static("admin"));
    h.insert("remote-groups", HeaderValue::from_static("admin"));
    h.insert("x-other", HeaderValue::from_static("kept"));
    h.insert(
        "connection",
        HeaderValue::from_static("remote-user, x-other"),
    );
    let p = check(&a, &s, "app", "/x", &h).await.unwrap();
    let mut out = h.clone();
    apply_identity(s.svc("app"), &p, &mut out);
    assert_eq!(
        out.get_all("remote-user").iter().collect::<Vec<_>>(),
        ["ann"]
    );
    assert_eq!(out.get("remote-email").unwrap(), "ann@example.com");
    assert_eq!(out.get("remote-name").unwrap(), "Ann A");
    assert_eq!(out.get("remote-groups").unwrap(), "staff,a|b");
    assert!(out.get("x-forwarded-user").is_none() && out.get("x-auth-request-groups").is_none());
    assert!(
        out.get("authorization").is_none(),
        "authorization is not passed by default"
    );
    assert_eq!(
        out.get("connection").unwrap(),
        "x-other",
        "a client cannot get our headers dropped"
    );
    assert_eq!(out.get("x-other").unwrap(), "kept");

    // Renamed set, custom separator (a group containing it is left out), claim header, Authorization passed.
    let p = check(&a, &s, "custom", "/x", &h).await.unwrap();
    let mut out = h.clone();
    apply_identity(s.svc("custom"), &p, &mut out);
    assert_eq!(out.get("x-forwarded-user").unwrap(), "ann");
    assert_eq!(out.get("x-auth-request-user").unwrap(), "ann");
    assert_eq!(out.get("x-auth-request-email").unwrap(), "ann@example.com");
    assert_eq!(out.get("remote-groups").unwrap(), "staff");
    assert_eq!(out.get("x-tenant").unwrap(), "acme");
    assert!(
        out.get("remote-user").is_none(),
        "spoofed default header stripped even when renamed"
    );
    assert!(out.get("authorization").is_some());

    // Bypass: anonymous permit, still stripped.
    let p = check(&a, &s, "app", "/public/x", &h).await.unwrap();
    let mut out = h.clone();
    apply_identity(s.svc("app"), &p, &mut out);
    assert!(out.get("remote-user").is_none() && out.get("remote-groups").is_none());
    assert!(out.get("authorization").is_none());
}

/// An identity's header values are made once and shared by its later requests, but only for the group separator
/// they were made with: a service with another separator gets its own groups value every time.
#[tokio::test]
async fn identity_header_values_follow_the_separator_of_each_service() {
    let s = load(
        &(policy_config()
            + r#"
[services.custom]
[services.custom.identity_headers]
group_separator = "|"
"#),
    );
    let a = authn(&clock());
    // A name with a control character cannot be a header value: it is left out, on every request.
    let token = hs(json!({"roles": ["staff", "a|b", "c,d"], "name": "Ann\u{7}A"}));
    let h = bearer(&token);
    // The first check verifies the token; the cached verification's identity serves those after it.
    check(&a, &s, "app", "/x", &h).await.unwrap();
    let first = check(&a, &s, "app", "/x", &h).await.unwrap();
    let other = check(&a, &s, "custom", "/x", &h).await.unwrap();
    assert!(
        std::ptr::eq(first.identity().unwrap(), other.identity().unwrap()),
        "both services share the cached token's identity, so they share its header values"
    );
    for svc in ["app", "custom", "app", "custom"] {
        let p = check(&a, &s, svc, "/x", &h).await.unwrap();
        let mut out = HeaderMap::new();
        apply_identity(s.svc(svc), &p, &mut out);
        let groups = if svc == "app" {
            "staff,a|b"
        } else {
            "staff|c,d"
        };
        assert_eq!(out.get("remote-groups").unwrap(), groups, "{svc}");
        assert_eq!(out.get("remote-user").unwrap(), "ann", "{svc}");
        assert_eq!(out.get("remote-email").unwrap(), "ann@example.com");
        assert!(out.get("remote-name").is_none(), "{svc}");
    }
}

#[test]
fn describe_and_is_bypass() {
    let s = load(&policy_config());
    assert_eq!(
        s.svc("app").describe(),
        "auth: groups staff; 4 path rules; cors preflight bypass"
    );
    assert_eq!(
        s.svc("mail").describe(),
        "auth: emails *@Example.COM,boss@other.org; claims tenant"
    );
    assert_eq!(s.svc("site").describe(), "bypass; 1 path rule");
    assert!(!s.svc("site").is_bypass());
    let s = load("[services.open]\nbypass_auth = true\n[services.any]\n");
    assert!(s.svc("open").is_bypass());
    assert_eq!(s.svc("open").describe(), "bypass");
    assert_eq!(s.svc("any").describe(), "auth: any user");
}

// ---------------------------------------------------------------- config validation, one case per rule

#[test]
fn config_rules_report_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "tooshort\n").unwrap();
    std::fs::write(dir.path().join("notpem"), "hello\n").unwrap();
    let iss = "[[auth.issuers]]\nissuer = \"https://idp.example.com\"\n";
    let sec = format!("[[auth.issuers]]\nissuer = \"in\"\nsecret = \"{SECRET}\"\n");
    let cases: Vec<(&str, String, &str)> = vec![
        ("issuer required", "[[auth.issuers]]\nname = \"x\"\n".into(), "auth.issuers.0.issuer"),
        ("issuer not https", "[[auth.issuers]]\nissuer = \"http://idp.example.com\"\n".into(), "auth.issuers.0.issuer"),
        ("jwks_uri not https", format!("{iss}jwks_uri = \"http://idp.example.com/k\"\n"), "auth.issuers.0.jwks_uri"),
        ("secret with jwks_uri", format!("{sec}jwks_uri = \"https://x.example.com/k\"\n"), "auth.issuers.0.jwks_uri"),
        ("unknown algorithm", format!("{iss}algorithms = [\"none\"]\n"), "auth.issuers.0.algorithms.0"),
        ("hmac alg on jwks issuer", format!("{iss}algorithms = [\"HS256\"]\n"), "auth.issuers.0.algorithms.0"),
        ("rsa alg on hmac issuer", format!("{sec}algorithms = [\"RS256\"]\n"), "auth.issuers.0.algorithms.0"),
        ("empty algorithms", format!("{iss}algorithms = []\n"), "auth.issuers.0.algorithms"),
        ("secret shorter than hash", format!("{sec}algorithms = [\"HS512\"]\n"), "auth.issuers.0.algorithms.0"),
        ("secret under 32 bytes", "[[auth.issuers]]\nissuer = \"in\"\nsecret_file = \"short\"\n".into(), "auth.issuers.0.secret"),
        ("empty audiences", format!("{iss}audiences = []\n"), "auth.issuers.0.audiences"),
        ("leeway too large", format!("{iss}leeway_secs = 3600\n"), "auth.issuers.0.leeway_secs"),
        ("bad groups_claim", format!("{iss}groups_claim = \".x\"\n"), "auth.issuers.0.groups_claim"),
        ("bad username_claim", format!("{iss}username_claim = \"\"\n"), "auth.issuers.0.username_claim"),
        ("ca_file missing", format!("{iss}ca_file = \"nope.pem\"\n"), "auth.issuers.0.ca_file"),
        ("ca_file without certs", format!("{iss}ca_file = \"notpem\"\n"), "auth.issuers.0.ca_file"),
        ("introspection key without endpoint", format!("{iss}client_id = \"x\"\n"), "auth.issuers.0.client_id"),
        ("introspection without client_id", format!("{iss}introspection_endpoint = \"https://idp.example.com/i\"\nclient_secret = \"s\"\n"), "auth.issuers.0.client_id"),
        ("introspection without secret", format!("{iss}introspection_endpoint = \"https://idp.example.com/i\"\nclient_id = \"x\"\n"), "auth.issuers.0.client_secret"),
        ("bad introspection method", format!("{iss}introspection_endpoint = \"https://idp.example.com/i\"\nclient_id = \"x\"\nclient_secret = \"s\"\nintrospection_auth_method = \"private_key_jwt\"\n"), "auth.issuers.0.introspection_auth_method"),
        ("duplicate name", format!("{iss}name = \"a\"\n[[auth.issuers]]\nissuer = \"https://b.example.com\"\nname = \"a\"\n"), "auth.issuers.1.name"),
        ("duplicate issuer", format!("{iss}{iss}"), "auth.issuers.1.issuer"),
        ("min_ttl above max_ttl", "[auth.jwks]\nmin_ttl_secs = 100\nmax_ttl_secs = 10\n".into(), "auth.jwks.min_ttl_secs"),
        ("zero fetch timeout", "[auth.jwks]\nfetch_timeout_secs = 0\n".into(), "auth.jwks.fetch_timeout_secs"),
        ("tiny max_bytes", "[auth.jwks]\nmax_bytes = 10\n".into(), "auth.jwks.max_bytes"),
        ("bypass with allow list", "[services.s]\nbypass_auth = true\nallow_users = [\"a\"]\n".into(), "services.s.allow_users"),
        ("empty allow list", "[services.s]\nallow_groups = []\n".into(), "services.s.allow_groups"),
        ("empty allow entry", "[services.s]\nallow_users = [\" \"]\n".into(), "services.s.allow_users.0"),
        ("bad email pattern", "[services.s]\nallow_emails = [\"*.example.com\"]\n".into(), "services.s.allow_emails.0"),
        ("wildcard in email domain", "[services.s]\nallow_emails = [\"*@*.example.com\"]\n".into(), "services.s.allow_emails.0"),
        ("empty require_claims values", "[services.s]\nrequire_claims = { t = [] }\n".into(), "services.s.require_claims.t"),
        ("bad require_claims path", "[services.s]\nrequire_claims = { \"a.\" = \"x\" }\n".into(), "services.s.require_claims"),
        ("service empty audiences", "[services.s]\naudiences = []\n".into(), "services.s.audiences"),
        ("unknown issuer name", format!("{iss}[services.s]\nissuers = [\"nope\"]\n"), "services.s.issuers.0"),
        ("empty issuers", "[services.s]\nissuers = []\n".into(), "services.s.issuers"),
        ("bad cors_preflight", "[services.s]\ncors_preflight = \"yes\"\n".into(), "services.s.cors_preflight"),
        ("bad service groups_claim", "[services.s]\ngroups_claim = \"\"\n".into(), "services.s.groups_claim"),
        ("rule without paths", "[[services.s.rules]]\npolicy = \"deny\"\n".into(), "services.s.rules.0.paths"),
        ("rule empty paths", "[[services.s.rules]]\npaths = []\n".into(), "services.s.rules.0.paths"),
        ("rule path not normalized", "[[services.s.rules]]\npaths = [\"/a/../b\"]\n".into(), "services.s.rules.0.paths.0"),
        ("rule star inside", "[[services.s.rules]]\npaths = [\"/a/*/b\"]\n".into(), "services.s.rules.0.paths.0"),
        ("rule bad method", "[[services.s.rules]]\npaths = [\"/a\"]\nmethods = [\"GE T\"]\n".into(), "services.s.rules.0.methods.0"),
        ("rule empty methods", "[[services.s.rules]]\npaths = [\"/a\"]\nmethods = []\n".into(), "services.s.rules.0.methods"),
        ("rule bad policy", "[[services.s.rules]]\npaths = [\"/a\"]\npolicy = \"maybe\"\n".into(), "services.s.rules.0.policy"),
        ("deny rule with allow keys", "[[services.s.rules]]\npaths = [\"/a\"]\npolicy = \"deny\"\nallow_users = [\"x\"]\n".into(), "services.s.rules.0.policy"),
        ("rule empty allow list", "[[services.s.rules]]\npaths = [\"/a\"]\nallow_groups = []\n".into(), "services.s.rules.0.allow_groups"),
        ("bad identity header name", "[services.s.identity_headers]\nuser = \"Remote User\"\n".into(), "services.s.identity_headers.user.0"),
        ("hop-by-hop identity header", "[services.s.identity_headers]\ngroups = [\"Connection\"]\n".into(), "services.s.identity_headers.groups.0"),
        ("authorization as identity header", "[services.s.identity_headers]\nemail = \"Authorization\"\n".into(), "services.s.identity_headers.email.0"),
        ("empty separator", "[services.s.identity_headers]\ngroup_separator = \"\"\n".into(), "services.s.identity_headers.group_separator"),
        ("claim header bad name", "[services.s.identity_headers]\nclaims = { \"a b\" = \"x\" }\n".into(), "services.s.identity_headers.claims"),
        ("claim header bad path", "[services.s.identity_headers]\nclaims = { \"X-A\" = \"\" }\n".into(), "services.s.identity_headers.claims.X-A"),
    ];
    for (name, text, path) in cases {
        let s = load_in(&text, dir.path());
        let paths: Vec<String> = s.problems.iter().map(|p| p.path.clone()).collect();
        assert!(
            paths.iter().any(|p| p == path),
            "{name}: expected a problem at {path}, got {paths:?}"
        );
    }
    // And a clean config has none.
    let s = load_in(&policy_config(), dir.path());
    assert!(s.problems.is_empty());
}
