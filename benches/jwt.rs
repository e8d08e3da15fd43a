//! How much does validating a Bearer JWT cost per request with the issuer's keys already cached, per
//! algorithm: a cold signature check versus a hit in the verified-claims cache? How close is the cold check to
//! the signature verification alone (`jwt-signature-only`: `jsonwebtoken::crypto::verify` with a key decoded
//! once; for HS256 ring's HMAC with its key made once, as the gateway verifies it), i.e. what do parsing, claims
//! and key lookup add? And what does the policy decision (path
//! normalization, rule matching, allow checks) add on top, and setting the identity headers the backend gets?
//!
//! No network: keys are generated at start (RSA with the `openssl` CLI, EC/Ed25519 with rcgen) and installed
//! with `Authenticator::seed_keys`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use portcullis::auth::{
    apply_identity, build_auth, build_service_policy, AuthSettings, Authenticator,
    AuthenticatorOptions, ServicePolicy,
};
use portcullis::config::file::FileConfig;
use portcullis::config::Problems;
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-bench";
const ISS: &str = "https://idp.example.com";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn rsa() -> (EncodingKey, Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let pem = std::fs::read(&path).unwrap();
    (
        EncodingKey::from_rsa_pem(&pem).unwrap(),
        json!({"kty": "RSA", "kid": "rsa", "n": b64(&n), "e": "AQAB"}),
    )
}

fn ec() -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    (
        EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
    )
}

fn ed() -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    (
        EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
        json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(kp.public_key_raw())}),
    )
}

fn decoding_key(jwk: &Value) -> DecodingKey {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    DecodingKey::from_jwk(&jwk).unwrap()
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, iss: &str) -> HeaderMap {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"iss": iss, "sub": "u1", "preferred_username": "ann", "aud": "api",
        "groups": ["staff"], "roles": ["staff"], "exp": exp});
    let t = jsonwebtoken::encode(&h, &claims, key).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    headers
}

fn setup() -> (AuthSettings, ServicePolicy, ServicePolicy) {
    let text = format!(
        r#"
[[auth.issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["api"]
[[auth.issuers]]
name = "inhouse"
issuer = "inhouse"
secret = "{SECRET}"
groups_claim = "roles"
[services.open]
[services.app]
allow_groups = ["staff"]
[[services.app.rules]]
paths = ["/public/*"]
policy = "bypass"
[[services.app.rules]]
paths = ["/admin/*"]
allow_groups = ["admin"]
[[services.app.rules]]
paths = ["/internal/*"]
policy = "deny"
"#
    );
    let file: FileConfig = toml::from_str(&text).unwrap();
    let mut p = Problems::default();
    let auth = build_auth(&file.auth, Path::new("."), &mut p);
    let open = build_service_policy("open", &file.services["open"], &auth, &mut p);
    let app = build_service_policy("app", &file.services["app"], &auth, &mut p);
    assert!(p.is_empty());
    (auth, open, app)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (auth, open, app) = setup();
    let (rsa_key, rsa_jwk) = rsa();
    let (ec_key, ec_jwk) = ec();
    let (ed_key, ed_jwk) = ed();
    let jwks = json!({"keys": [rsa_jwk, ec_jwk, ed_jwk]}).to_string();
    let cold = Authenticator::with_options(AuthenticatorOptions {
        verified_cache_bytes: 0,
        ..AuthenticatorOptions::default()
    });
    let warm = Authenticator::new();
    for a in [&cold, &warm] {
        rt.block_on(a.seed_keys(&auth, "idp", jwks.as_bytes()))
            .unwrap();
    }
    let hmac = EncodingKey::from_secret(SECRET.as_bytes());
    let cases = [
        ("HS256", token(Algorithm::HS256, "h", &hmac, "inhouse")),
        ("RS256", token(Algorithm::RS256, "rsa", &rsa_key, ISS)),
        ("PS256", token(Algorithm::PS256, "rsa", &rsa_key, ISS)),
        ("ES256", token(Algorithm::ES256, "ec", &ec_key, ISS)),
        ("EdDSA", token(Algorithm::EdDSA, "ed", &ed_key, ISS)),
    ];
    let mut g = c.benchmark_group("jwt");
    for (name, headers) in &cases {
        for (mode, a) in [("cold", &cold), ("cached", &warm)] {
            g.bench_function(format!("{name}/{mode}"), |b| {
                b.to_async(&rt).iter(|| async {
                    a.authorize(&auth, &open, &Method::GET, "/", headers)
                        .await
                        .unwrap()
                })
            });
        }
    }
    g.finish();

    // The floor for a cold check: the signature verification alone, key decoded once, nothing else.
    let keys = [
        DecodingKey::from_secret(SECRET.as_bytes()),
        decoding_key(&rsa_jwk),
        decoding_key(&rsa_jwk),
        decoding_key(&ec_jwk),
        decoding_key(&ed_jwk),
    ];
    let mut g = c.benchmark_group("jwt-signature-only");
    for ((name, headers), key) in cases.iter().zip(&keys) {
        let token = headers["authorization"]
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer ");
        let (message, signature) = token.rsplit_once('.').unwrap();
        let alg = jsonwebtoken::decode_header(token).unwrap().alg;
        if *name == "HS256" {
            // For a shared secret the floor is the MAC alone, with ring's key made once, as the gateway does.
            let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
            g.bench_function(format!("{name}/signature"), |b| {
                b.iter(|| {
                    let mac = URL_SAFE_NO_PAD.decode(signature).unwrap();
                    ring::hmac::verify(&hmac, message.as_bytes(), &mac).unwrap()
                })
            });
            continue;
        }
        g.bench_function(format!("{name}/signature"), |b| {
            b.iter(|| {
                assert!(
                    jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg).unwrap()
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy");
    let anon = HeaderMap::new();
    let staff = &cases[3].1;
    g.bench_function("bypass_rule_anonymous", |b| {
        b.to_async(&rt).iter(|| async {
            warm.authorize(&auth, &app, &Method::GET, "/public/a/b", &anon)
                .await
                .unwrap()
        })
    });
    g.bench_function("allow_groups_cached_token", |b| {
        b.to_async(&rt).iter(|| async {
            warm.authorize(&auth, &app, &Method::GET, "/api/items/42", staff)
                .await
                .unwrap()
        })
    });
    // The user and groups headers of a cached token's identity, onto a copy of its request's headers.
    let permit = rt
        .block_on(warm.authorize(&auth, &app, &Method::GET, "/api/items/42", staff))
        .unwrap();
    g.bench_function("identity_headers_cached_token", |b| {
        b.iter_batched_ref(
            || staff.clone(),
            |h| {
                apply_identity(&app, &permit, h);
                black_box(h.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("deny_rule_encoded_path", |b| {
        b.to_async(&rt).iter(|| async {
            warm.authorize(
                &auth,
                &app,
                &Method::GET,
                "/public/%2e%2e/internal/x",
                staff,
            )
            .await
            .unwrap_err()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
