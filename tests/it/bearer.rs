//! Issue 3 end to end: API clients with Bearer tokens, through real TLS to the gateway and the echo upstream.
//!
//! Keys are generated in the test and served by the `idp_keys` stand-in (discovery, JWKS, introspection); an
//! in-house HMAC issuer reads its secret from a file. Every security test names the property it guards and
//! fails if that property breaks; denials also prove the upstream was never contacted (the counting relay in
//! front of the echo server sees no connection).

use std::sync::Arc;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{Echo, EchoReport, Gateway, TestGateway};
use crate::idp_keys::{
    es256_key, jwks, now, rsa_key, sign_hs256, unsigned, write_secret, Idp, TestKey,
    INTROSPECTION_CLIENT, INTROSPECTION_SECRET,
};

const API: &str = "api.example.test";
/// The in-house service's `iss` (field notes §3).
const INHOUSE_ISS: &str = "daarion-auth";
const INHOUSE_SECRET: &str = "dev-only-hmac-secret-0123456789-abcdefghij";

/// `[[auth.issuers]]` for the stand-in, keys by discovery, audience `api`.
fn idp_issuer(idp: &Idp) -> String {
    format!(
        "[[auth.issuers]]\nname = \"idp\"\nissuer = {:?}\naudiences = [\"api\"]\n",
        idp.base
    )
}

/// `[[auth.issuers]]` for the in-house HS256 service: `roles` are the groups.
fn inhouse_issuer(secret_file: &str) -> String {
    format!(
        "[[auth.issuers]]\nname = \"inhouse\"\nissuer = {INHOUSE_ISS:?}\nsecret_file = {secret_file:?}\ngroups_claim = \"roles\"\n"
    )
}

/// A protected service on `upstream` with extra keys.
fn protected(upstream: &str, extra: &str) -> String {
    format!("upstream = {upstream:?}\n{extra}")
}

/// Ann's claims from the stand-in, valid for ten minutes; `extra` overrides (a `null` removes the claim).
fn claims(iss: &str, extra: Value) -> Value {
    let t = now();
    let mut c = json!({
        "iss": iss, "sub": "u-1", "preferred_username": "ann", "email": "ann@example.com",
        "name": "Ann Example", "groups": ["staff", "ops"], "aud": "api", "iat": t, "exp": t + 600,
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

/// The stand-in and a gateway with its issuer (plus `top`) and these services.
async fn setup(
    keys: &[&TestKey],
    top: &str,
    services: &[(&str, String)],
) -> Result<(Arc<Idp>, Gateway)> {
    let idp = Idp::start(jwks(keys)).await?;
    let mut b = TestGateway::new().top_level(&idp_issuer(&idp));
    if !top.is_empty() {
        b = b.top_level(top);
    }
    for (name, body) in services {
        b = b.service(name, body);
    }
    Ok((idp, b.spawn().await?))
}

async fn get(
    gw: &Gateway,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<reqwest::Response> {
    let mut req = gw.client.get(gw.url(host, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Ok(req.send().await?)
}

/// GET with a token, requiring 200, and the echo's report.
async fn echo_with(gw: &Gateway, host: &str, path: &str, token: &str) -> Result<EchoReport> {
    let resp = get(gw, host, path, Some(token)).await?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "GET {host}{path}: {status} {body}"
    );
    Ok(serde_json::from_str(&body)?)
}

/// Asserts an RFC 6750 `invalid_token` challenge and the fixed short body.
async fn assert_invalid_token(resp: reqwest::Response, what: &str) -> Result<String> {
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"portcullis\"")
            && challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
    assert_eq!(resp.text().await?, "unauthorized\n", "{what}");
    Ok(challenge)
}

/// Sends a hand-written request to `host` (path and header names exactly as written, nothing normalized).
async fn raw(
    gw: &Gateway,
    host: &str,
    method: &str,
    path: &str,
    headers: &[&str],
) -> Result<(u16, Vec<u8>)> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let (status, _, body) = gw.raw_request(host, &head).await?;
    Ok((status, body))
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_reach_the_backend_with_identity_headers() -> Result<()> {
    let echo = Echo::start().await?;
    let (rsa, ec) = (rsa_key(0, "rsa-1"), es256_key("ec-1"));
    let (idp, gw) = setup(&[&rsa, &ec], "", &[("api", protected(&echo.url(), ""))]).await?;
    for key in [&rsa, &ec] {
        let token = key.sign(&claims(&idp.base, json!({})));
        let seen = echo_with(&gw, API, "/whoami", &token).await?;
        assert_eq!(seen.all("remote-user"), ["ann"], "{:?}", key.alg);
        assert_eq!(seen.header("remote-email"), Some("ann@example.com"));
        assert_eq!(seen.header("remote-groups"), Some("staff,ops"));
        assert_eq!(seen.header("remote-name"), Some("Ann Example"));
        // Guards: the token is not leaked to the backend unless the service asks for it.
        assert_eq!(seen.header("authorization"), None, "{:?}", seen.headers);
    }
    assert_eq!(
        idp.discovery_hits(),
        1,
        "keys come from discovery, fetched once"
    );
    Ok(())
}

#[tokio::test]
async fn authorization_reaches_the_backend_only_with_pass_authorization() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (idp, gw) = setup(
        &[&rsa],
        "",
        &[
            ("api", protected(&echo.url(), "")),
            ("pass", protected(&echo.url(), "pass_authorization = true")),
        ],
    )
    .await?;
    let token = rsa.sign(&claims(&idp.base, json!({})));
    let seen = echo_with(&gw, API, "/", &token).await?;
    assert_eq!(seen.header("authorization"), None);
    let seen = echo_with(&gw, "pass.example.test", "/", &token).await?;
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(seen.header("remote-user"), Some("ann"));
    Ok(())
}

#[tokio::test]
async fn bad_tokens_get_401_invalid_token_and_never_reach_the_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (idp, gw) = setup(&[&rsa], "", &[("api", protected(&echo.counted_url(), ""))]).await?;
    let t = now();
    let good = claims(&idp.base, json!({}));
    let public_pem = rsa.public_pem.clone().unwrap_or_default();
    let attacks = [
        // Guards the signature check: another key under the published kid.
        ("forged", rsa_key(1, "rsa-1").sign(&good)),
        // Guards `exp` (beyond the 60 s default leeway).
        (
            "expired",
            rsa.sign(&claims(
                &idp.base,
                json!({"iat": t - 7200, "exp": t - 3600}),
            )),
        ),
        // Guards `aud` against the issuer's accepted audiences.
        (
            "wrong audience",
            rsa.sign(&claims(&idp.base, json!({"aud": "other-api"}))),
        ),
        // Guards `iss`: a token naming an issuer nobody configured.
        (
            "unknown issuer",
            rsa.sign(&claims("https://evil.test", json!({}))),
        ),
        // Guards against unsigned tokens (`alg: none`).
        ("alg none", unsigned("rsa-1", &good)),
        // Guards against RS256 -> HS256 key confusion: HMAC keyed with the RSA public key the JWKS publishes.
        (
            "hs256 with rsa public key",
            sign_hs256(&public_pem, Some("rsa-1"), &good),
        ),
        // Guards `exp` being required.
        ("no exp", rsa.sign(&claims(&idp.base, json!({"exp": null})))),
        ("garbage", "not-a-jwt.at-all.really".to_owned()),
    ];
    for (what, token) in &attacks {
        let challenge = assert_invalid_token(get(&gw, API, "/", Some(token)).await?, what).await?;
        if *what == "expired" {
            assert!(challenge.contains("expired"), "{challenge}");
        }
    }
    assert_eq!(
        echo.connections(),
        0,
        "a rejected token must never reach the upstream"
    );
    // The counter works: a good token does reach it.
    echo_with(&gw, API, "/", &rsa.sign(&good)).await?;
    assert!(echo.connections() >= 1);
    Ok(())
}

#[tokio::test]
async fn no_token_gets_401_with_a_bare_bearer_challenge() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (_idp, gw) = setup(&[&rsa], "", &[("api", protected(&echo.counted_url(), ""))]).await?;
    // RFC 6750 §3.1: no credentials means no error code in the challenge.
    for resp in [
        get(&gw, API, "/", None).await?,
        gw.client
            .get(gw.url(API, "/"))
            .basic_auth("ann", Some("pw"))
            .send()
            .await?,
    ] {
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"portcullis\"")
        );
        assert_eq!(resp.text().await?, "unauthorized\n");
    }
    assert_eq!(
        echo.connections(),
        0,
        "an anonymous request must never reach a protected upstream"
    );
    Ok(())
}

#[tokio::test]
async fn allow_lists_answer_403_with_a_short_body_when_not_matched() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (idp, gw) = setup(
        &[&rsa],
        "",
        &[
            (
                "admins",
                protected(&echo.counted_url(), "allow_groups = [\"admins\"]"),
            ),
            (
                "corp",
                protected(&echo.counted_url(), "allow_emails = [\"*@example.com\"]"),
            ),
        ],
    )
    .await?;
    let staff = rsa.sign(&claims(&idp.base, json!({})));
    let outsider = rsa.sign(&claims(&idp.base, json!({"email": "eve@example.org"})));
    // Guards allow_groups / allow_emails: authenticated but not allowed is 403, not a pass and not a 401.
    for (host, token) in [
        ("admins.example.test", &staff),
        ("corp.example.test", &outsider),
    ] {
        let resp = get(&gw, host, "/", Some(token)).await?;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{host}");
        assert!(resp.headers().get("www-authenticate").is_none());
        assert_eq!(resp.text().await?, "forbidden\n");
    }
    assert_eq!(
        echo.connections(),
        0,
        "a forbidden request must never reach the upstream"
    );
    let admin = rsa.sign(&claims(&idp.base, json!({"groups": ["staff", "admins"]})));
    assert_eq!(
        echo_with(&gw, "admins.example.test", "/", &admin)
            .await?
            .header("remote-groups"),
        Some("staff,admins")
    );
    echo_with(&gw, "corp.example.test", "/", &staff).await?;
    Ok(())
}

#[tokio::test]
async fn a_service_trusts_only_the_issuers_it_names() -> Result<()> {
    let echo = Echo::start().await?;
    let dir = tempfile::tempdir()?;
    let secret_file = write_secret(dir.path(), INHOUSE_SECRET)?;
    let rsa = rsa_key(0, "rsa-1");
    let (idp, gw) = setup(
        &[&rsa],
        &inhouse_issuer(&secret_file),
        &[
            ("api", protected(&echo.url(), "")),
            (
                "internal",
                protected(&echo.counted_url(), "issuers = [\"inhouse\"]"),
            ),
        ],
    )
    .await?;
    let idp_token = rsa.sign(&claims(&idp.base, json!({})));
    let inhouse_token = sign_hs256(
        INHOUSE_SECRET.as_bytes(),
        None,
        &json!({"iss": INHOUSE_ISS, "sub": "u-2", "exp": now() + 600}),
    );
    // Guards `issuers`: a valid token from an issuer the service does not trust is refused.
    assert_invalid_token(
        get(&gw, "internal.example.test", "/", Some(&idp_token)).await?,
        "idp token on an inhouse-only service",
    )
    .await?;
    assert_eq!(echo.connections(), 0);
    echo_with(&gw, "internal.example.test", "/", &inhouse_token).await?;
    // Without `issuers`, every configured issuer is trusted.
    echo_with(&gw, API, "/", &idp_token).await?;
    echo_with(&gw, API, "/", &inhouse_token).await?;
    Ok(())
}

#[tokio::test]
async fn path_rules_match_the_normalized_path_through_the_gateway() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let rules = r#"
[[services.app.rules]]
paths = ["/public/*"]
policy = "bypass"

[[services.app.rules]]
paths = ["/admin/*"]
policy = "deny"
"#;
    let (idp, gw) = setup(
        &[&rsa],
        "",
        &[("app", protected(&echo.counted_url(), rules))],
    )
    .await?;
    let host = "app.example.test";
    let token = rsa.sign(&claims(&idp.base, json!({})));
    let auth = format!("Authorization: Bearer {token}");
    // Guards path normalization: no spelling of a path outside /public/ gets the bypass. Paths that resolve to
    // /admin hit the deny rule (403) even anonymously; paths that resolve to /private need a token (401).
    for (path, want) in [
        ("/public/../admin", 403),
        ("/public/%2e%2e/admin", 403),
        ("/public/%2E%2E/admin/x", 403),
        ("/public/..%2fadmin", 403),
        ("/public/..%2Fadmin", 403),
        ("//admin", 403),
        ("/public/../private", 401),
        ("/public/%2e%2e/private", 401),
        ("/public/..%2fprivate", 401),
        ("/public/.%2e/private", 401),
        ("/public/..\\private", 401),
        // Bypass matches case-sensitively: only the exact spelling escapes authentication.
        ("/PUBLIC/x", 401),
        ("/private", 401),
    ] {
        let (status, body) = raw(&gw, host, "GET", path, &[]).await?;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
    }
    // Guards the deny rule for authenticated users too, in any case (`/ADMIN` on a case-insensitive backend).
    for path in ["/admin/x", "/ADMIN/x", "/public/../admin/x"] {
        let (status, _) = raw(&gw, host, "GET", path, &[&auth]).await?;
        assert_eq!(status, 403, "{path} with a token");
    }
    assert_eq!(
        echo.connections(),
        0,
        "no refused path may reach the upstream"
    );
    // The bypass itself works anonymously, and the rest of the service with a token.
    let seen = gw.echo(host, "/public/index.html").await?;
    assert_eq!(seen.header("remote-user"), None);
    assert_eq!(
        echo_with(&gw, host, "/private", &token)
            .await?
            .header("remote-user"),
        Some("ann")
    );
    Ok(())
}

#[tokio::test]
async fn cors_preflight_bypass_admits_only_real_preflights() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (_idp, gw) = setup(
        &[&rsa],
        "",
        &[
            (
                "cors",
                protected(&echo.counted_url(), "cors_preflight = \"bypass\""),
            ),
            ("strict", protected(&echo.counted_url(), "")),
        ],
    )
    .await?;
    let preflight = [
        "Origin: https://app.example.test",
        "Access-Control-Request-Method: POST",
    ];
    // Guards the preflight bypass from widening: a plain OPTIONS, a GET, or a preflight to a service without
    // `cors_preflight = "bypass"` still needs a token.
    assert_eq!(
        raw(
            &gw,
            "cors.example.test",
            "OPTIONS",
            "/api",
            &["Origin: https://app.example.test"]
        )
        .await?
        .0,
        401
    );
    assert_eq!(
        raw(&gw, "cors.example.test", "GET", "/api", &preflight)
            .await?
            .0,
        401
    );
    assert_eq!(
        raw(&gw, "strict.example.test", "OPTIONS", "/api", &preflight)
            .await?
            .0,
        401
    );
    assert_eq!(echo.connections(), 0);
    let (status, body) = raw(&gw, "cors.example.test", "OPTIONS", "/api", &preflight).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: EchoReport = serde_json::from_slice(&body)?;
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(seen.header("remote-user"), None, "a preflight is anonymous");
    Ok(())
}

#[tokio::test]
async fn client_identity_headers_are_replaced_by_the_tokens_identity() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (idp, gw) = setup(
        &[&rsa],
        "",
        &[
            ("api", protected(&echo.url(), "")),
            (
                "open",
                format!("upstream = {:?}\nbypass_auth = true", echo.url()),
            ),
        ],
    )
    .await?;
    let token = rsa.sign(&claims(&idp.base, json!({})));
    let auth = format!("Authorization: Bearer {token}");
    let spoof = [
        "remote-user: mallory",
        "REMOTE-USER: mallory2",
        "Remote-Groups: admins",
        "Remote-Email: mallory@example.com",
        "X-Forwarded-User: mallory",
        "X-Auth-Request-User: mallory",
        // Names listed in Connection are hop-by-hop: they must not drop the identity headers set after.
        "Connection: remote-user, Remote-Groups",
    ];
    let mut headers: Vec<&str> = spoof.to_vec();
    headers.push(&auth);
    let (status, body) = raw(&gw, API, "GET", "/", &headers).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: EchoReport = serde_json::from_slice(&body)?;
    // Guards header spoofing: exactly the token's identity, once, whatever case the client used.
    assert_eq!(seen.all("remote-user"), ["ann"], "{:?}", seen.headers);
    assert_eq!(seen.all("remote-groups"), ["staff,ops"]);
    assert_eq!(seen.all("remote-email"), ["ann@example.com"]);
    assert!(
        seen.all("x-forwarded-user").is_empty(),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.all("x-auth-request-user").is_empty(),
        "{:?}",
        seen.headers
    );
    // On a bypass service the client's copies are removed too, and nothing is set.
    let (status, body) = raw(&gw, "open.example.test", "GET", "/", &spoof).await?;
    assert_eq!(status, 200);
    let seen: EchoReport = serde_json::from_slice(&body)?;
    for name in [
        "remote-user",
        "remote-groups",
        "remote-email",
        "x-forwarded-user",
        "x-auth-request-user",
    ] {
        assert!(
            seen.all(name).is_empty(),
            "{name} reached a bypass upstream: {:?}",
            seen.headers
        );
    }
    Ok(())
}

#[tokio::test]
async fn renamed_identity_headers_and_group_separator() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let renamed = r#"
[services.app.identity_headers]
user = ["X-Forwarded-User"]
groups = "X-Auth-Request-Groups"
group_separator = "|"
"#;
    let (idp, gw) = setup(&[&rsa], "", &[("app", protected(&echo.url(), renamed))]).await?;
    let token = rsa.sign(&claims(&idp.base, json!({})));
    let auth = format!("Authorization: Bearer {token}");
    let (status, body) = raw(
        &gw,
        "app.example.test",
        "GET",
        "/",
        &[
            &auth,
            "X-Forwarded-User: mallory",
            "Remote-User: mallory",
            "x-auth-request-groups: admins",
        ],
    )
    .await?;
    assert_eq!(status, 200);
    let seen: EchoReport = serde_json::from_slice(&body)?;
    assert_eq!(seen.all("x-forwarded-user"), ["ann"], "{:?}", seen.headers);
    assert_eq!(seen.all("x-auth-request-groups"), ["staff|ops"]);
    // Unmapped defaults stay; the renamed ones are not also sent under their default names.
    assert_eq!(seen.header("remote-email"), Some("ann@example.com"));
    assert_eq!(seen.header("remote-name"), Some("Ann Example"));
    assert!(seen.all("remote-user").is_empty(), "{:?}", seen.headers);
    assert!(seen.all("remote-groups").is_empty(), "{:?}", seen.headers);
    Ok(())
}

#[tokio::test]
async fn in_house_hs256_issuer_maps_roles_to_groups() -> Result<()> {
    let echo = Echo::start().await?;
    let dir = tempfile::tempdir()?;
    let secret_file = write_secret(dir.path(), INHOUSE_SECRET)?;
    let rsa = rsa_key(0, "rsa-1");
    let svc = "issuers = [\"inhouse\"]\nallow_groups = [\"admin\"]\n[services.app.require_claims]\ntype = \"access\"";
    let (_idp, gw) = setup(
        &[&rsa],
        &inhouse_issuer(&secret_file),
        &[("app", protected(&echo.counted_url(), svc))],
    )
    .await?;
    let host = "app.example.test";
    let t = now();
    // The claims the in-house FastAPI service issues (field notes §3).
    let token = |roles: Value, kind: &str| {
        json!({
            "sub": "6f1c2a9e-4b7d-4c1e-9a55-0d3f8e2b7c11", "email": "olena@daarion.test", "name": "Olena K",
            "roles": roles, "type": kind, "iss": INHOUSE_ISS, "iat": t, "exp": t + 1800,
        })
    };
    let access = sign_hs256(
        INHOUSE_SECRET.as_bytes(),
        None,
        &token(json!(["user", "admin"]), "access"),
    );
    // Guards the shared secret: the same claims signed with another secret are refused.
    let wrong_secret = sign_hs256(
        b"another-secret-of-at-least-32-bytes!!",
        None,
        &token(json!(["admin"]), "access"),
    );
    assert_invalid_token(
        get(&gw, host, "/", Some(&wrong_secret)).await?,
        "wrong secret",
    )
    .await?;
    // Guards key-kind separation: an RS256 token claiming the HMAC issuer is refused.
    let rs = rsa.sign(&token(json!(["admin"]), "access"));
    assert_invalid_token(
        get(&gw, host, "/", Some(&rs)).await?,
        "rs256 at an hmac issuer",
    )
    .await?;
    // Guards `require_claims`: a refresh token (same key, same issuer) is not an access token.
    let refresh = sign_hs256(
        INHOUSE_SECRET.as_bytes(),
        None,
        &token(json!(["admin"]), "refresh"),
    );
    assert_eq!(
        get(&gw, host, "/", Some(&refresh)).await?.status(),
        StatusCode::FORBIDDEN
    );
    // Guards `groups_claim = "roles"`: without the role the user is not allowed.
    let user = sign_hs256(
        INHOUSE_SECRET.as_bytes(),
        None,
        &token(json!(["user"]), "access"),
    );
    assert_eq!(
        get(&gw, host, "/", Some(&user)).await?.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(echo.connections(), 0);
    let seen = echo_with(&gw, host, "/api/me", &access).await?;
    assert_eq!(
        seen.header("remote-user"),
        Some("6f1c2a9e-4b7d-4c1e-9a55-0d3f8e2b7c11")
    );
    assert_eq!(seen.header("remote-email"), Some("olena@daarion.test"));
    assert_eq!(seen.header("remote-name"), Some("Olena K"));
    assert_eq!(seen.header("remote-groups"), Some("user,admin"));
    Ok(())
}

#[tokio::test]
async fn zitadel_project_roles_object_maps_to_groups() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let svc = "groups_claim = \"urn:zitadel:iam:org:project:roles\"\nallow_groups = [\"admin\"]";
    let (idp, gw) = setup(&[&rsa], "", &[("app", protected(&echo.url(), svc))]).await?;
    let host = "app.example.test";
    let roles = |r: Value| {
        rsa.sign(&claims(
            &idp.base,
            json!({"groups": null, "urn:zitadel:iam:org:project:roles": r}),
        ))
    };
    let admin = roles(
        json!({"admin": {"2233": "acme.example.test"}, "viewer": {"2233": "acme.example.test"}}),
    );
    let seen = echo_with(&gw, host, "/", &admin).await?;
    let mut groups: Vec<&str> = seen
        .header("remote-groups")
        .unwrap_or_default()
        .split(',')
        .collect();
    groups.sort_unstable();
    assert_eq!(groups, ["admin", "viewer"]);
    // Guards the object shape: the role names are the keys, so a viewer is not an admin.
    let viewer = roles(json!({"viewer": {"2233": "acme.example.test"}}));
    assert_eq!(
        get(&gw, host, "/", Some(&viewer)).await?.status(),
        StatusCode::FORBIDDEN
    );
    Ok(())
}

#[tokio::test]
async fn opaque_tokens_are_validated_by_introspection() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let idp = Idp::start(jwks(&[&rsa])).await?;
    let issuer = introspection_issuer(&idp);
    let gw = TestGateway::new()
        .top_level(&issuer)
        .service(
            "app",
            &protected(&echo.counted_url(), "allow_groups = [\"dev\"]"),
        )
        .spawn()
        .await?;
    let host = "app.example.test";
    idp.add_opaque(
        "opaque-ann",
        json!({"active": true, "iss": idp.base, "sub": "u-9", "username": "ann", "groups": ["dev"], "exp": now() + 600}),
    );
    // Guards introspection: an unknown (inactive) opaque token is invalid, not a pass.
    assert_invalid_token(
        get(&gw, host, "/", Some("opaque-unknown")).await?,
        "inactive opaque",
    )
    .await?;
    assert_eq!(echo.connections(), 0);
    let seen = echo_with(&gw, host, "/", "opaque-ann").await?;
    assert_eq!(seen.header("remote-user"), Some("ann"));
    assert_eq!(seen.header("remote-groups"), Some("dev"));
    let hits = idp.introspect_hits();
    echo_with(&gw, host, "/", "opaque-ann").await?;
    assert_eq!(
        idp.introspect_hits(),
        hits,
        "the answer is cached until exp or the configured bound"
    );
    Ok(())
}

#[tokio::test]
async fn jwks_key_rotation_is_observed_through_the_gateway() -> Result<()> {
    let echo = Echo::start().await?;
    let (old, new) = (rsa_key(0, "2024-old"), rsa_key(1, "2025-new"));
    // No cooldown, so each unknown kid refetches at once (the default 30 s would need a clock).
    let (idp, gw) = setup(
        &[&old],
        "[auth.jwks]\nunknown_kid_cooldown_secs = 0",
        &[("api", protected(&echo.url(), ""))],
    )
    .await?;
    let old_token = old.sign(&claims(&idp.base, json!({})));
    echo_with(&gw, API, "/", &old_token).await?;
    assert_eq!(idp.jwks_hits(), 1);
    // A new kid appears: the first token signed with it triggers one refetch and is accepted.
    idp.set_keys(jwks(&[&old, &new]));
    let new_token = new.sign(&claims(&idp.base, json!({})));
    echo_with(&gw, API, "/", &new_token).await?;
    assert_eq!(
        idp.jwks_hits(),
        2,
        "an unknown kid refetches the key set once"
    );
    echo_with(&gw, API, "/", &old_token).await?;
    assert_eq!(idp.jwks_hits(), 2, "known kids are served from the cache");
    // The old kid disappears; the next fetch (here triggered by another unknown kid) drops it.
    idp.set_keys(jwks(&[&new]));
    let stranger = new
        .with_kid("unpublished")
        .sign(&claims(&idp.base, json!({})));
    assert_invalid_token(get(&gw, API, "/", Some(&stranger)).await?, "unknown kid").await?;
    assert_eq!(idp.jwks_hits(), 3);
    // Guards key removal: a token signed by the withdrawn key is refused, even though the same token was
    // verified (and cached) before.
    assert_invalid_token(get(&gw, API, "/", Some(&old_token)).await?, "withdrawn key").await?;
    echo_with(&gw, API, "/", &new_token).await?;
    Ok(())
}

#[tokio::test]
async fn a_reload_keeps_the_jwks_cache() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let (idp, mut gw) = setup(&[&rsa], "", &[("api", protected(&echo.url(), ""))]).await?;
    echo_with(&gw, API, "/", &rsa.sign(&claims(&idp.base, json!({})))).await?;
    let (jwks_before, discovery_before) = (idp.jwks_hits(), idp.discovery_hits());
    assert_eq!((jwks_before, discovery_before), (1, 1));
    let hash_before = gw.shared.snapshot.load().hash.clone();
    gw.update(|c| {
        c.service("other", &protected(&echo.url(), "allow_groups = [\"ops\"]"));
    })?;
    gw.reload().await?;
    assert_ne!(
        gw.shared.snapshot.load().hash,
        hash_before,
        "the reload took effect"
    );
    // A token not seen before, so its signature must be checked with the cached keys, on both services.
    let fresh = rsa.sign(&claims(&idp.base, json!({"jti": "after-reload"})));
    echo_with(&gw, API, "/", &fresh).await?;
    echo_with(&gw, "other.example.test", "/", &fresh).await?;
    // Guards the cache living outside the snapshot: a reload neither refetches keys nor rediscovers.
    assert_eq!(idp.jwks_hits(), jwks_before, "reload refetched the JWKS");
    assert_eq!(
        idp.discovery_hits(),
        discovery_before,
        "reload repeated discovery"
    );
    Ok(())
}

/// The verified-token cache holds what `auth.token_cache_mib` allows, by the estimated size of each token's
/// claims, and a reload that changes the budget takes effect (tokens keep verifying without the cache).
#[tokio::test]
async fn token_cache_stays_within_its_budget_and_follows_reloads() -> Result<()> {
    let echo = Echo::start().await?;
    let dir = tempfile::tempdir()?;
    let secret_file = write_secret(dir.path(), INHOUSE_SECRET)?;
    let mut gw = TestGateway::new()
        .top_level("[auth]\ntoken_cache_mib = 1")
        .top_level(&inhouse_issuer(&secret_file))
        .service("app", &protected(&echo.url(), "issuers = [\"inhouse\"]"))
        .spawn()
        .await?;
    let host = "app.example.test";
    let t = now();
    // Sixty groups make each entry about 9 KiB, so 1 MiB holds about a hundred of the 300 tokens.
    let groups: Vec<String> = (0..60).map(|g| format!("team-{g:04}-members")).collect();
    let token = |n: usize| {
        sign_hs256(
            INHOUSE_SECRET.as_bytes(),
            None,
            &json!({"sub": format!("user-{n}"), "roles": groups, "iss": INHOUSE_ISS, "iat": t, "exp": t + 600}),
        )
    };
    for n in 0..300 {
        assert_eq!(
            get(&gw, host, "/", Some(&token(n))).await?.status(),
            StatusCode::OK
        );
    }
    assert_filled_by_weight(cache_usage(&gw, TOKEN_CACHE).await?, "tokens");

    reload_with_budget(&mut gw, "token_cache_mib", 0).await?;
    twice_ok(&gw, host, &token(1)).await?;
    assert_eq!(
        cache_usage(&gw, TOKEN_CACHE).await?,
        (0, 0),
        "token_cache_mib = 0 keeps no token"
    );

    reload_with_budget(&mut gw, "token_cache_mib", 2).await?;
    twice_ok(&gw, host, &token(1)).await?;
    let (entries, bytes) = cache_usage(&gw, TOKEN_CACHE).await?;
    assert_eq!(
        entries, 1,
        "a new budget starts an empty cache; {bytes} bytes"
    );
    Ok(())
}

/// The introspection cache holds what `auth.introspection_cache_mib` allows, by the estimated size of each
/// answer, and a reload that changes the budget takes effect: 0 introspects every request, a new budget starts
/// empty.
#[tokio::test]
async fn introspection_cache_stays_within_its_budget_and_follows_reloads() -> Result<()> {
    let echo = Echo::start().await?;
    let rsa = rsa_key(0, "rsa-1");
    let idp = Idp::start(jwks(&[&rsa])).await?;
    let issuer = introspection_issuer(&idp);
    let mut gw = TestGateway::new()
        .top_level("[auth]\nintrospection_cache_mib = 1")
        .top_level(&issuer)
        .service("app", &protected(&echo.url(), ""))
        .spawn()
        .await?;
    let host = "app.example.test";
    // 120 groups make each answer about 9 KiB, so 1 MiB holds about a hundred of the 300 tokens.
    let groups: Vec<String> = (0..120).map(|g| format!("team-{g:04}-members")).collect();
    let token = |n: usize| format!("opaque-{n}");
    for n in 0..300 {
        idp.add_opaque(
            &token(n),
            json!({"active": true, "iss": idp.base, "sub": format!("u-{n}"), "groups": groups, "exp": now() + 600}),
        );
    }
    for n in 0..300 {
        assert_eq!(
            get(&gw, host, "/", Some(&token(n))).await?.status(),
            StatusCode::OK
        );
    }
    assert_eq!(idp.introspect_hits(), 300);
    assert_filled_by_weight(cache_usage(&gw, INTROSPECTION_CACHE).await?, "answers");

    reload_with_budget(&mut gw, "introspection_cache_mib", 0).await?;
    let hits = idp.introspect_hits();
    twice_ok(&gw, host, &token(1)).await?;
    assert_eq!(
        idp.introspect_hits(),
        hits + 2,
        "introspection_cache_mib = 0 asks the issuer on every request"
    );
    assert_eq!(cache_usage(&gw, INTROSPECTION_CACHE).await?, (0, 0));

    reload_with_budget(&mut gw, "introspection_cache_mib", 2).await?;
    let hits = idp.introspect_hits();
    twice_ok(&gw, host, &token(1)).await?;
    assert_eq!(
        idp.introspect_hits(),
        hits + 1,
        "a new budget starts an empty cache, which keeps the answer"
    );
    assert_eq!(cache_usage(&gw, INTROSPECTION_CACHE).await?.0, 1);
    Ok(())
}

/// Concurrent requests with one opaque token the cache has not seen share one introspection; with
/// `introspection_cache_mib = 0` each request asks the issuer.
#[tokio::test]
async fn concurrent_requests_with_one_opaque_token_share_one_introspection() -> Result<()> {
    let echo = Echo::start().await?;
    let idp = Idp::start(jwks(&[])).await?;
    let mut gw = TestGateway::new()
        .top_level("[auth]\nintrospection_cache_mib = 16")
        .top_level(&introspection_issuer(&idp))
        .service("app", &protected(&echo.url(), ""))
        .spawn()
        .await?;
    let host = "app.example.test";
    for token in ["opaque-shared", "opaque-uncached"] {
        idp.add_opaque(
            token,
            json!({"active": true, "iss": idp.base, "sub": "u-1", "exp": now() + 600}),
        );
    }
    // Long enough that all eight requests arrive while the first introspection is still waiting.
    idp.set_introspect_delay(std::time::Duration::from_millis(500));
    all_ok(&gw, host, &["opaque-shared"; 8]).await?;
    assert_eq!(
        idp.introspect_hits(),
        1,
        "eight requests, one introspection"
    );

    reload_with_budget(&mut gw, "introspection_cache_mib", 0).await?;
    all_ok(&gw, host, &["opaque-uncached"; 8]).await?;
    assert_eq!(
        idp.introspect_hits(),
        9,
        "without a cache each request asks"
    );
    Ok(())
}

/// One request per token, all at once; each must be accepted.
async fn all_ok(gw: &Gateway, host: &str, tokens: &[&str]) -> Result<()> {
    let requests = tokens.iter().map(|t| get(gw, host, "/", Some(t)));
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp?.status(), StatusCode::OK);
    }
    Ok(())
}

/// An issuer for opaque tokens, introspected at the stand-in `idp`.
fn introspection_issuer(idp: &Idp) -> String {
    format!(
        "[[auth.issuers]]\nname = \"zitadel\"\nissuer = {base:?}\nintrospection_endpoint = \"{base}/introspect\"\nclient_id = {INTROSPECTION_CLIENT:?}\nclient_secret = {INTROSPECTION_SECRET:?}\n",
        base = idp.base
    )
}

/// After 300 entries of about 9 KiB each went through a 1 MiB budget: the cache is within it, more than half full,
/// and holds some but not all of them.
fn assert_filled_by_weight((entries, bytes): (u64, u64), what: &str) {
    assert!(
        bytes <= 1 << 20,
        "over budget: {entries} {what}, {bytes} bytes"
    );
    // Guards the weighing: counted by entries, all 300 would stay and their "bytes" would be 300.
    assert!(
        bytes > 1 << 19,
        "the budget was not used: {entries} {what}, {bytes} bytes"
    );
    assert!(
        (50..300).contains(&entries),
        "{entries} {what}, {bytes} bytes"
    );
}

/// Rewrites `[auth] <key>` (the first top-level block of the test's config) and reloads.
async fn reload_with_budget(gw: &mut Gateway, key: &str, mib: u64) -> Result<()> {
    gw.update(|c| c.top_level[0] = format!("[auth]\n{key} = {mib}"))?;
    gw.reload().await
}

/// The token is accepted on a first request and on a second, which a cache that keeps it answers.
async fn twice_ok(gw: &Gateway, host: &str, token: &str) -> Result<()> {
    for _ in 0..2 {
        assert_eq!(
            get(gw, host, "/", Some(token)).await?.status(),
            StatusCode::OK
        );
    }
    Ok(())
}

/// Metric prefix of the verified-token cache.
const TOKEN_CACHE: &str = "portcullis_token_cache";
/// Metric prefix of the introspection cache.
const INTROSPECTION_CACHE: &str = "portcullis_introspection_cache";

/// `<prefix>_entries` and `<prefix>_bytes` from the admin listener.
async fn cache_usage(gw: &Gateway, prefix: &str) -> Result<(u64, u64)> {
    let text = gw.metrics().await?;
    let read = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in\n{text}"))
    };
    Ok((
        read(&format!("{prefix}_entries"))?,
        read(&format!("{prefix}_bytes"))?,
    ))
}
