//! Unit tests of the forward-auth contracts: metadata parsing per endpoint, statuses and headers per decision,
//! path tricks deciding exactly like the front door, the decision cache and its invalidation by sign-out.
//!
//! Credentials are HS256 tokens of a shared-secret issuer and sessions put straight into the memory store; no
//! network is used.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::auth::{build_auth, build_oidc, build_service_policy};
use crate::config::file::FileConfig;
use crate::config::Problems;

const SECRET: &str = "forward-auth-unit-test-secret-of-32+bytes";
const PORT: u16 = 8443;

const CONFIG: &str = r#"
domain = "example.test"

[[auth.issuers]]
name = "corp"
issuer = "corp-auth"
secret = "forward-auth-unit-test-secret-of-32+bytes"
audiences = ["api"]

[oidc]
issuer = "https://idp.example.test"
client_id = "gateway"
client_secret = "s3cret"

[session]
secret = "0123456789abcdef0123456789abcdef-session"

[services.app]
upstream = "http://127.0.0.1:1"
allow_groups = ["staff"]
cors_preflight = "bypass"

[[services.app.rules]]
paths = ["/public/*", "/health"]
policy = "bypass"

[[services.app.rules]]
paths = ["/admin/*"]
allow_groups = ["admins"]

[[services.app.rules]]
paths = ["/api/*"]
methods = ["DELETE"]
policy = "deny"

[services.open]
upstream = "http://127.0.0.1:1"
bypass_auth = true

[services.custom]
upstream = "http://127.0.0.1:1"
allow_groups = ["staff"]
[services.custom.identity_headers]
user = "X-Forwarded-User"
groups = "X-Forwarded-Groups"
group_separator = "|"
"#;

struct Setup {
    auth: AuthSettings,
    services: BTreeMap<String, ServicePolicy>,
    authn: Authenticator,
}

fn setup() -> Setup {
    let file: FileConfig = toml::from_str(CONFIG).unwrap();
    let mut problems = Problems::default();
    let mut auth = build_auth(&file.auth, Path::new("."), &mut problems);
    build_oidc(
        file.oidc.as_ref(),
        file.session.as_ref(),
        file.domain.as_deref(),
        Path::new("."),
        &mut auth,
        &mut problems,
    );
    let services = file
        .services
        .iter()
        .map(|(n, s)| (n.clone(), build_service_policy(n, s, &auth, &mut problems)))
        .collect();
    let msgs: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(msgs.is_empty(), "unexpected problems: {msgs:?}");
    Setup {
        auth,
        services,
        authn: Authenticator::new(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(groups: &[&str]) -> String {
    let claims = json!({"iss": "corp-auth", "sub": "u-1", "preferred_username": "ann",
        "email": "ann@example.test", "name": "Ann Example", "aud": "api", "groups": groups,
        "exp": now() + 3600, "iat": now()});
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// Forward-auth metadata for `https://<host><uri>` with `method`.
fn fwd(method: &str, host: &str, uri: &str) -> Vec<(String, String)> {
    vec![
        ("x-forwarded-method".into(), method.into()),
        ("x-forwarded-proto".into(), "https".into()),
        ("x-forwarded-host".into(), host.into()),
        ("x-forwarded-uri".into(), uri.into()),
    ]
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Setup {
    async fn call_as(
        &self,
        endpoint: Endpoint,
        method: Method,
        uri: &str,
        h: HeaderMap,
        trusted: bool,
    ) -> Answer {
        let services = &self.services;
        let lookup = |host: &str| match host {
            "app.example.test" => services.get("app"),
            "open.example.test" => services.get("open"),
            "custom.example.test" => services.get("custom"),
            _ => None,
        };
        let ctx = ForwardAuthContext {
            https_port: PORT,
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            peer_trusted: trusted,
            config_hash: "test",
            lookup: &lookup,
        };
        let uri: Uri = uri.parse().unwrap();
        let r = self
            .authn
            .forward_auth(&self.auth, endpoint, &method, &uri, &h, &ctx)
            .await;
        let (parts, body) = r.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn call(
        &self,
        endpoint: Endpoint,
        meta: &[(String, String)],
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut pairs: Vec<(&str, &str)> =
            meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.extend_from_slice(extra);
        let path = match endpoint {
            Endpoint::ForwardAuth => "/api/authz/forward-auth",
            Endpoint::AuthRequest => "/api/authz/auth-request",
            Endpoint::OAuth2Auth => "/oauth2/auth",
            Endpoint::ExtAuthz => EXT_AUTHZ_PREFIX,
        };
        self.call_as(endpoint, Method::GET, path, headers(&pairs), true)
            .await
    }

    /// A signed-in session of `groups` in the memory store and its `Cookie` header value.
    async fn session(&self, groups: &[&str]) -> (String, String) {
        let o = self.auth.oidc().unwrap();
        let id = super::super::session::random_id();
        let t = now();
        let claims: serde_json::Map<String, Value> =
            json!({"iss": "https://idp.example.test", "sub": "s-1",
            "preferred_username": "bob", "email": "bob@example.test", "groups": groups})
            .as_object()
            .unwrap()
            .clone();
        let s = super::super::session::Session {
            issuer: "https://idp.example.test".into(),
            sub: "s-1".into(),
            sid: Some("provider-sid".into()),
            claims: std::sync::Arc::new(claims),
            id_token: None,
            refresh_token: None,
            created_at: t,
            last_seen: t,
            refresh_at: t + 3600,
            identity: Default::default(),
        };
        let store = self.authn.store(o).unwrap();
        store.put(&id, &s, t, t + 3600).await.unwrap();
        let set_cookie = o
            .cookies
            .session_cookie(&id, None, Duration::from_secs(3600));
        let pair = set_cookie.split(';').next().unwrap().to_owned();
        (id, pair)
    }
}

#[test]
fn endpoints_by_path() {
    assert_eq!(
        Endpoint::from_path("/api/authz/forward-auth"),
        Some(Endpoint::ForwardAuth)
    );
    assert_eq!(
        Endpoint::from_path("/api/authz/auth-request"),
        Some(Endpoint::AuthRequest)
    );
    assert_eq!(
        Endpoint::from_path("/oauth2/auth"),
        Some(Endpoint::OAuth2Auth)
    );
    assert_eq!(
        Endpoint::from_path("/api/authz/ext-authz"),
        Some(Endpoint::ExtAuthz)
    );
    assert_eq!(
        Endpoint::from_path("/api/authz/ext-authz/a/b"),
        Some(Endpoint::ExtAuthz)
    );
    assert_eq!(Endpoint::from_path("/api/authz/ext-authzX"), None);
    assert_eq!(Endpoint::from_path("/api/authz/forward-auth/"), None);
    assert_eq!(Endpoint::from_path("/oauth2/start"), None);
}

fn describe_fwd(pairs: &[(&str, &str)]) -> Result<Original, MetadataError> {
    describe(
        Endpoint::ForwardAuth,
        &Method::GET,
        &"/api/authz/forward-auth".parse().unwrap(),
        &headers(pairs),
    )
}

#[test]
fn forwarded_metadata_is_parsed_strictly() {
    let ok = describe_fwd(&[
        ("x-forwarded-method", "POST"),
        ("x-forwarded-host", "App.Example.Test:8443"),
        ("x-forwarded-uri", "/a/../b?x=1"),
    ])
    .unwrap();
    assert_eq!(ok.method, Method::POST);
    assert_eq!(ok.scheme, "https", "proto defaults to https");
    assert_eq!(ok.host.as_str(), "app.example.test");
    assert_eq!(ok.path_and_query.path(), "/a/../b", "never rewritten here");
    assert_eq!(ok.url(), "https://App.Example.Test:8443/a/../b?x=1");
    let base = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "app.example.test"),
        ("x-forwarded-uri", "/"),
    ];
    for drop in ["x-forwarded-method", "x-forwarded-host", "x-forwarded-uri"] {
        let pairs: Vec<_> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
        assert_eq!(
            describe_fwd(&pairs),
            Err(MetadataError::Missing(match drop {
                "x-forwarded-method" => "x-forwarded-method",
                "x-forwarded-host" => "x-forwarded-host",
                _ => "x-forwarded-uri",
            }))
        );
    }
    let bad = |k: &'static str, v: &'static str| {
        let mut pairs: Vec<_> = base.iter().copied().filter(|(n, _)| *n != k).collect();
        pairs.push((k, v));
        describe_fwd(&pairs)
    };
    for (k, v) in [
        ("x-forwarded-uri", "http://evil.test/admin"),
        ("x-forwarded-uri", "admin"),
        ("x-forwarded-uri", "*"),
        ("x-forwarded-uri", "/a#frag"),
        ("x-forwarded-uri", "/a\tb"),
        ("x-forwarded-uri", "/a b"),
        ("x-forwarded-host", "user@app.example.test"),
        ("x-forwarded-host", "app.example.test/x"),
        ("x-forwarded-host", "app.example.test:x"),
        ("x-forwarded-method", "G(ET"),
        ("x-forwarded-proto", "ftp"),
    ] {
        assert!(
            matches!(bad(k, v), Err(MetadataError::Malformed(_))),
            "{k}: {v}"
        );
    }
    assert_eq!(
        bad("x-forwarded-host", "a.example.test,b.example.test"),
        Err(MetadataError::Repeated("x-forwarded-host"))
    );
    assert_eq!(
        bad("x-forwarded-proto", "https,http"),
        Err(MetadataError::Repeated("x-forwarded-proto"))
    );
    let mut twice = base.to_vec();
    twice.push(("x-forwarded-host", "other.example.test"));
    assert_eq!(
        describe_fwd(&twice),
        Err(MetadataError::Repeated("x-forwarded-host"))
    );
    // `//admin` is a path (empty first segment), as on the front door; it is decided, not refused.
    assert!(bad("x-forwarded-uri", "//admin/x").is_ok());
}

#[test]
fn original_url_metadata_is_parsed_strictly() {
    let d = |url: &str| {
        describe(
            Endpoint::AuthRequest,
            &Method::GET,
            &"/api/authz/auth-request".parse().unwrap(),
            &headers(&[("x-original-url", url), ("x-original-method", "PUT")]),
        )
    };
    let ok = d("https://app.example.test:8443/x/%2e%2e/y?q=1").unwrap();
    assert_eq!(ok.method, Method::PUT);
    assert_eq!(ok.host.as_str(), "app.example.test");
    assert_eq!(ok.path_and_query.as_str(), "/x/%2e%2e/y?q=1");
    assert_eq!(
        d("https://app.example.test")
            .unwrap()
            .path_and_query
            .as_str(),
        "/"
    );
    assert_eq!(
        d("http://app.example.test?a=1")
            .unwrap()
            .path_and_query
            .as_str(),
        "/?a=1"
    );
    for bad in [
        "/relative",
        "//app.example.test/x",
        "ftp://app.example.test/x",
        "https://user:pw@app.example.test/x",
        "https://app.example.test/x#f",
        "https://app.example.test:8443https://evil.test/",
        "https:///x",
        "not a url",
    ] {
        assert!(matches!(d(bad), Err(MetadataError::Malformed(_))), "{bad}");
    }
    let no_method = describe(
        Endpoint::AuthRequest,
        &Method::GET,
        &"/api/authz/auth-request".parse().unwrap(),
        &headers(&[("x-original-url", "https://app.example.test/")]),
    );
    assert_eq!(no_method, Err(MetadataError::Missing("x-original-method")));
}

#[test]
fn ext_authz_reads_the_real_request() {
    let d = |method: Method, uri: &str, h: &[(&str, &str)]| {
        describe(
            Endpoint::ExtAuthz,
            &method,
            &uri.parse().unwrap(),
            &headers(h),
        )
    };
    let o = d(
        Method::DELETE,
        "/api/authz/ext-authz/api/x?y=1",
        &[("host", "app.example.test")],
    )
    .unwrap();
    assert_eq!(o.method, Method::DELETE);
    assert_eq!(o.path_and_query.as_str(), "/api/x?y=1");
    assert_eq!(o.host.as_str(), "app.example.test");
    assert_eq!(
        d(
            Method::GET,
            "/api/authz/ext-authz",
            &[("host", "a.example.test")]
        )
        .unwrap()
        .path_and_query
        .as_str(),
        "/"
    );
    // X-Forwarded-Host wins (a call on the portal host carries the portal in Host).
    let o = d(
        Method::GET,
        "/api/authz/ext-authz/",
        &[
            ("host", "auth.example.test"),
            ("x-forwarded-host", "app.example.test"),
        ],
    )
    .unwrap();
    assert_eq!(o.host.as_str(), "app.example.test");
    assert_eq!(
        d(Method::GET, "/api/authz/ext-authz/", &[]),
        Err(MetadataError::Missing("host"))
    );
}

#[tokio::test]
async fn allowed_answers_carry_the_identity_headers_of_the_service() {
    let s = setup();
    let bearer = format!("Bearer {}", token(&["staff", "ops"]));
    let auth = [("authorization", bearer.as_str())];
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "app.example.test", "/x"),
            &auth,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("remote-user"), Some("ann"));
    assert_eq!(a.header("remote-groups"), Some("staff,ops"));
    assert_eq!(a.header("remote-email"), Some("ann@example.test"));
    assert_eq!(a.header("remote-name"), Some("Ann Example"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert!(a.body.len() < 16);
    let ar = [
        (
            "x-original-url".to_owned(),
            "https://app.example.test/x".to_owned(),
        ),
        ("x-original-method".to_owned(), "GET".to_owned()),
    ];
    let a = s.call(Endpoint::AuthRequest, &ar, &auth).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("remote-user"), Some("ann"));
    let a = s.call(Endpoint::OAuth2Auth, &ar, &auth).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("x-auth-request-user"), Some("ann"));
    assert_eq!(a.header("x-auth-request-email"), Some("ann@example.test"));
    assert_eq!(a.header("x-auth-request-groups"), Some("staff,ops"));
    assert_eq!(a.header("remote-user"), None);
    // oauth2-proxy configs send X-Forwarded-* too.
    let a = s
        .call(
            Endpoint::OAuth2Auth,
            &fwd("GET", "app.example.test", "/x"),
            &auth,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let a = s
        .call_as(
            Endpoint::ExtAuthz,
            Method::GET,
            "/api/authz/ext-authz/x",
            headers(&[("host", "app.example.test"), auth[0]]),
            true,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("remote-user"), Some("ann"));
    // The service's own mapping and separator.
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "custom.example.test", "/"),
            &auth,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-forwarded-user"), Some("ann"));
    assert_eq!(a.header("x-forwarded-groups"), Some("staff|ops"));
    assert_eq!(a.header("remote-user"), None);
    // A bypass service is allowed anonymously, with no identity headers at all.
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "open.example.test", "/"),
            &[("remote-user", "mallory")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("remote-user"), None);
}

#[tokio::test]
async fn not_signed_in_redirects_browsers_and_answers_401_otherwise() {
    let s = setup();
    let html = [("accept", "text/html,application/xhtml+xml")];
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "app.example.test:8443", "/x?y=1"),
            &html,
        )
        .await;
    assert_eq!(a.status, StatusCode::FOUND);
    let loc = a.header("location").unwrap();
    assert_eq!(
        loc,
        "https://auth.example.test:8443/oauth2/start?rd=https%3A%2F%2Fapp.example.test%3A8443%2Fx%3Fy%3D1"
    );
    assert!(a.body.is_empty());
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("POST", "app.example.test", "/x"),
            &html,
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    // API-like: 401 with the sign-in URL.
    for extra in [
        vec![("accept", "application/json")],
        vec![
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest"),
        ],
    ] {
        let a = s
            .call(
                Endpoint::ForwardAuth,
                &fwd("GET", "app.example.test", "/x"),
                &extra,
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(a
            .header("location")
            .unwrap()
            .starts_with("https://auth.example.test:8443/oauth2/start?rd="));
        assert_eq!(
            a.header("www-authenticate"),
            Some(r#"Bearer realm="portcullis""#)
        );
    }
    // nginx: never 3xx, even for a browser.
    let ar = [
        (
            "x-original-url".to_owned(),
            "https://app.example.test/x".to_owned(),
        ),
        ("x-original-method".to_owned(), "GET".to_owned()),
    ];
    for ep in [Endpoint::AuthRequest, Endpoint::OAuth2Auth] {
        let a = s.call(ep, &ar, &html).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{ep:?}");
        assert_eq!(
            a.header("location"),
            Some(
                "https://auth.example.test:8443/oauth2/start?rd=https%3A%2F%2Fapp.example.test%2Fx"
            )
        );
    }
    // Envoy: a browser gets the redirect (passed to the client as the deny response).
    let a = s
        .call_as(
            Endpoint::ExtAuthz,
            Method::GET,
            "/api/authz/ext-authz/x",
            headers(&[("host", "app.example.test"), html[0]]),
            true,
        )
        .await;
    assert_eq!(a.status, StatusCode::FOUND);
    // A bad token is not fixed by signing in: 401 invalid_token, no redirect.
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "app.example.test", "/x"),
            &[html[0], ("authorization", "Bearer not.a.token")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert_eq!(a.header("location"), None);
}

#[tokio::test]
async fn forbidden_unknown_host_untrusted_peer_and_head() {
    let s = setup();
    let bearer = format!("Bearer {}", token(&["guests"]));
    let auth = [("authorization", bearer.as_str())];
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "app.example.test", "/x"),
            &auth,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let staff = format!("Bearer {}", token(&["staff"]));
    let staff = [("authorization", staff.as_str())];
    // The forwarded method decides: DELETE on /api/* is denied by rule, GET is not.
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("DELETE", "app.example.test", "/api/x"),
            &staff,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("GET", "app.example.test", "/api/x"),
            &staff,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // A CORS preflight passes without credentials on a service that allows it, by the forwarded method.
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("OPTIONS", "app.example.test", "/x"),
            &[("access-control-request-method", "GET")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    for host in ["unknown.example.test", "auth.example.test", "evil.test"] {
        let a = s
            .call(Endpoint::ForwardAuth, &fwd("GET", host, "/"), &staff)
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{host}");
    }
    let a = s
        .call(
            Endpoint::ForwardAuth,
            &fwd("CONNECT", "app.example.test", "/"),
            &staff,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let meta = fwd("GET", "open.example.test", "/");
    let pairs: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = s
        .call_as(
            Endpoint::ForwardAuth,
            Method::GET,
            "/api/authz/forward-auth",
            headers(&pairs),
            false,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = s
        .call_as(
            Endpoint::ExtAuthz,
            Method::GET,
            "/api/authz/ext-authz/",
            headers(&[("host", "open.example.test")]),
            false,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // HEAD calls (HAProxy's lua.auth-intercept) have no body, whatever the answer.
    for (meta, want) in [
        (fwd("GET", "open.example.test", "/"), StatusCode::OK),
        (
            fwd("GET", "app.example.test", "/"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            fwd("GET", "nowhere.example.test", "/"),
            StatusCode::FORBIDDEN,
        ),
        (
            fwd("GET", "app.example.test", "/%zz"),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let pairs: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = s
            .call_as(
                Endpoint::ForwardAuth,
                Method::HEAD,
                "/api/authz/forward-auth",
                headers(&pairs),
                true,
            )
            .await;
        assert_eq!(a.status, want);
        assert!(a.body.is_empty(), "{want}");
    }
}

#[tokio::test]
async fn path_tricks_get_the_front_door_decision() {
    let s = setup();
    let staff = format!("Bearer {}", token(&["staff"]));
    let admin = format!("Bearer {}", token(&["staff", "admins"]));
    let app = &s.services["app"];
    for path in [
        "/public/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/public%2f..%2fadmin/x",
        "/public%2F..%2Fadmin/x",
        "/public/..%2fadmin/x",
        "//admin/x",
        "/public//../admin/x",
        "/./admin/x",
        "/health/../admin",
        "/ADMIN/x",
        "/admin/%00",
        "/admin/%zz",
    ] {
        for cred in [None, Some(staff.as_str()), Some(admin.as_str())] {
            let mut h = HeaderMap::new();
            if let Some(c) = cred {
                h.insert("authorization", HeaderValue::from_str(c).unwrap());
            }
            let front = s
                .authn
                .authorize(&s.auth, app, &Method::GET, path, &h)
                .await;
            let want = match &front {
                Ok(_) => StatusCode::OK,
                Err(e) => e.status(),
            };
            let mut pairs = vec![("accept", "application/json")];
            if let Some(c) = cred {
                pairs.push(("authorization", c));
            }
            for (ep, meta) in [
                (Endpoint::ForwardAuth, fwd("GET", "app.example.test", path)),
                (
                    Endpoint::AuthRequest,
                    vec![
                        (
                            "x-original-url".to_owned(),
                            format!("https://app.example.test{path}"),
                        ),
                        ("x-original-method".to_owned(), "GET".to_owned()),
                    ],
                ),
            ] {
                let a = s.call(ep, &meta, &pairs).await;
                assert_eq!(a.status, want, "{ep:?} {path} {cred:?}");
            }
            let mut h = headers(&pairs);
            h.insert("host", HeaderValue::from_static("app.example.test"));
            let a = s
                .call_as(
                    Endpoint::ExtAuthz,
                    Method::GET,
                    &format!("{EXT_AUTHZ_PREFIX}{path}"),
                    h,
                    true,
                )
                .await;
            assert_eq!(a.status, want, "ext-authz {path} {cred:?}");
        }
    }
}

#[tokio::test]
async fn sessions_are_accepted_cached_and_invalidated_by_sign_out() {
    let s = setup();
    let (id, cookie) = s.session(&["staff"]).await;
    let meta = fwd("GET", "app.example.test", "/x");
    let with_cookie = [("cookie", cookie.as_str()), ("accept", "text/html")];
    let a = s.call(Endpoint::ForwardAuth, &meta, &with_cookie).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("remote-user"), Some("bob"));
    // The session refresh keeps the same cookie (server-side session): nothing to pass back.
    assert_eq!(a.header("set-cookie"), None);
    // Deleting the session behind the cache's back: the cached decision is still served...
    let store = s.authn.store(s.auth.oidc().unwrap()).unwrap();
    store.delete(&id).await.unwrap();
    let a = s.call(Endpoint::ForwardAuth, &meta, &with_cookie).await;
    assert_eq!(a.status, StatusCode::OK, "cached");
    // ...until the sign-out hook runs, which every sign-out path calls.
    s.authn.sessions_ended(EndedSessions::One(&id));
    let a = s.call(Endpoint::ForwardAuth, &meta, &with_cookie).await;
    assert_eq!(a.status, StatusCode::FOUND);

    // Back-channel logout names the provider user; entries of other users stay.
    let (id2, cookie2) = s.session(&["staff"]).await;
    let with_cookie2 = [("cookie", cookie2.as_str())];
    assert_eq!(
        s.call(Endpoint::ForwardAuth, &meta, &with_cookie2)
            .await
            .status,
        StatusCode::OK
    );
    store.delete(&id2).await.unwrap();
    s.authn.sessions_ended(EndedSessions::Provider {
        issuer: "https://idp.example.test",
        sub: Some("someone-else"),
    });
    assert_eq!(
        s.call(Endpoint::ForwardAuth, &meta, &with_cookie2)
            .await
            .status,
        StatusCode::OK,
        "other user's logout"
    );
    s.authn.sessions_ended(EndedSessions::Provider {
        issuer: "https://idp.example.test",
        sub: Some("s-1"),
    });
    assert_eq!(
        s.call(Endpoint::ForwardAuth, &meta, &with_cookie2)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // A session in the wrong group: 403, also cached and also dropped by sign-out.
    let (id3, cookie3) = s.session(&["guests"]).await;
    let with_cookie3 = [("cookie", cookie3.as_str())];
    assert_eq!(
        s.call(Endpoint::ForwardAuth, &meta, &with_cookie3)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    store.delete(&id3).await.unwrap();
    s.authn.sessions_ended(EndedSessions::One(&id3));
    assert_eq!(
        s.call(Endpoint::ForwardAuth, &meta, &with_cookie3)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cache_keys_separate_services_methods_paths_and_configs() {
    let s = setup();
    let app = &s.services["app"];
    let h = headers(&[("authorization", "Bearer x")]);
    let k = |p: &ServicePolicy, m: Method, path: &str, cfg: &str| {
        decision_key(&s.auth, p, cfg, &m, path, &h).unwrap()
    };
    let base = k(app, Method::GET, "/a/x", "c1");
    assert_eq!(base, k(app, Method::GET, "/a/./x", "c1"), "normalized path");
    assert_ne!(base, k(app, Method::POST, "/a/x", "c1"));
    assert_ne!(base, k(app, Method::GET, "/a/y", "c1"));
    assert_ne!(base, k(app, Method::GET, "/a/x", "c2"));
    assert_ne!(base, k(&s.services["custom"], Method::GET, "/a/x", "c1"));
    let other = headers(&[("authorization", "Bearer y")]);
    assert_ne!(
        base,
        decision_key(&s.auth, app, "c1", &Method::GET, "/a/x", &other).unwrap()
    );
    assert!(
        decision_key(&s.auth, app, "c1", &Method::GET, "/a/x", &HeaderMap::new()).is_none(),
        "no credential, no caching"
    );
}
