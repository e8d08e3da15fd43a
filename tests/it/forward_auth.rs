//! Issue 5: the forward-auth endpoints over real sockets, on the admin listener and on the portal host: statuses
//! and headers per endpoint, HEAD without a body, refusal of untrusted peers, unknown hosts denied, path tricks
//! and malformed URLs deciding exactly like the front door, and a spoofed `Remote-User` never reaching a backend.
//!
//! Tokens come from an in-house HS256 issuer; `[oidc]` points at a closed loopback port, which is enough for
//! sign-in URLs (the provider is only contacted when a browser starts signing in; see `interop` for that).

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Echo, EchoReport, Gateway, TestGateway};
use crate::idp_keys::{now, sign_hs256};

const SECRET: &str = "forward-auth-it-secret-0123456789-abcdefghij";
const PORTAL: &str = "auth.example.test";
const APP: &str = "app.example.test";
const OPEN: &str = "open.example.test";

fn top_level() -> String {
    format!(
        "[[auth.issuers]]\nname = \"inhouse\"\nissuer = \"inhouse\"\nsecret = {SECRET:?}\n\n\
         [oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"gateway\"\nclient_secret = \"unused\"\n\n\
         [session]\nsecret = \"forward-auth-it-session-secret-0123456789\"\n"
    )
}

async fn gateway(echo: &Echo, trusted: &str) -> Result<Gateway> {
    TestGateway::new()
        .server(&format!("trusted_proxies = [{trusted:?}]"))
        .top_level(&top_level())
        .service(
            "app",
            &format!(
                "upstream = {:?}\nallow_groups = [\"staff\"]\n\n[[services.app.rules]]\npaths = [\"/public/*\"]\npolicy = \"bypass\"\n\n\
                 [[services.app.rules]]\npaths = [\"/admin/*\"]\nallow_groups = [\"admins\"]\n",
                echo.url()
            ),
        )
        .service("open", &format!("upstream = {:?}\nbypass_auth = true\n", echo.url()))
        .spawn()
        .await
}

fn token(groups: &[&str]) -> String {
    let t = now();
    sign_hs256(
        SECRET.as_bytes(),
        None,
        &json!({"iss": "inhouse", "sub": "u-1", "preferred_username": "ann", "email": "ann@example.test",
            "name": "Ann Example", "groups": groups, "iat": t, "exp": t + 600}),
    )
}

fn fwd(
    req: reqwest::RequestBuilder,
    method: &str,
    host: &str,
    uri: &str,
) -> reqwest::RequestBuilder {
    req.header("X-Forwarded-Method", method)
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", host)
        .header("X-Forwarded-Uri", uri)
        .header("X-Forwarded-For", "203.0.113.7")
}

fn header<'r>(r: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn admin_listener_answers_each_contract() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "127.0.0.1").await?;
    let c = &gw.client;
    let staff = format!("Bearer {}", token(&["staff"]));
    let fa = gw.admin_url("/api/authz/forward-auth");

    // Allowed: 200 and the identity headers.
    let r = fwd(c.get(&fa), "GET", APP, "/x?y=1")
        .header("Authorization", &staff)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "remote-user"), Some("ann"));
    assert_eq!(header(&r, "remote-groups"), Some("staff"));
    assert_eq!(header(&r, "remote-email"), Some("ann@example.test"));
    assert_eq!(header(&r, "remote-name"), Some("Ann Example"));
    assert!(r.bytes().await?.len() < 16, "tiny body");

    // Not signed in: browser 302 (303 after a POST) to the portal, API client 401 with Location.
    let start = format!(
        "https://{PORTAL}:{}/oauth2/start?rd=https%3A%2F%2F{APP}%2Fx%3Fy%3D1",
        gw.addrs.https.port()
    );
    let r = fwd(c.get(&fa), "GET", APP, "/x?y=1")
        .header("Accept", "text/html")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(header(&r, "location"), Some(start.as_str()));
    let r = fwd(c.get(&fa), "POST", APP, "/x?y=1")
        .header("Accept", "text/html")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = fwd(c.get(&fa), "GET", APP, "/x?y=1")
        .header("Accept", "application/json")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "location"), Some(start.as_str()));
    assert!(header(&r, "www-authenticate").is_some());

    // Authenticated but not allowed: 403.
    let guest = format!("Bearer {}", token(&["guests"]));
    let r = fwd(c.get(&fa), "GET", APP, "/x")
        .header("Authorization", &guest)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // nginx: never 3xx.
    let ar = gw.admin_url("/api/authz/auth-request");
    let r = c
        .get(&ar)
        .header("X-Original-URL", format!("https://{APP}/x"))
        .header("X-Original-Method", "GET")
        .header("Accept", "text/html")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&r, "location").is_some_and(|l| l.contains("/oauth2/start?rd=")));
    let r = c
        .get(&ar)
        .header("X-Original-URL", format!("https://{APP}/x"))
        .header("X-Original-Method", "GET")
        .header("Authorization", &staff)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "remote-user"), Some("ann"));

    // oauth2-proxy style.
    let r = c
        .get(gw.admin_url("/oauth2/auth"))
        .header("X-Original-URL", format!("https://{APP}/x"))
        .header("X-Original-Method", "GET")
        .header("Authorization", &staff)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "x-auth-request-user"), Some("ann"));
    assert_eq!(header(&r, "x-auth-request-email"), Some("ann@example.test"));
    assert_eq!(header(&r, "x-auth-request-groups"), Some("staff"));
    let r = c
        .get(gw.admin_url("/oauth2/auth"))
        .header("X-Original-URL", format!("https://{APP}/x"))
        .header("X-Original-Method", "GET")
        .header("Authorization", &guest)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Envoy: the original method and path, Host of the original request.
    let r = c
        .delete(gw.admin_url("/api/authz/ext-authz/public/x"))
        .header("Host", APP)
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "bypass rule by the original path"
    );
    let r = c
        .get(gw.admin_url("/api/authz/ext-authz/admin/x"))
        .header("Host", APP)
        .header("Authorization", &staff)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // HEAD: no body, whatever the answer.
    for (host, uri, want) in [
        (OPEN, "/", StatusCode::OK),
        (APP, "/x", StatusCode::UNAUTHORIZED),
        ("nowhere.example.test", "/", StatusCode::FORBIDDEN),
        (APP, "http://evil.test/", StatusCode::BAD_REQUEST),
    ] {
        let r = fwd(c.head(&fa), "GET", host, uri).send().await?;
        assert_eq!(r.status(), want, "{host}{uri}");
        assert!(r.bytes().await?.is_empty(), "{host}{uri}");
    }
    Ok(())
}

#[tokio::test]
async fn unknown_hosts_and_malformed_metadata_are_never_allowed() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "127.0.0.1").await?;
    let c = &gw.client;
    let staff = format!("Bearer {}", token(&["staff", "admins"]));
    let fa = gw.admin_url("/api/authz/forward-auth");
    for host in ["nowhere.example.test", PORTAL, "evil.test", "127.0.0.1"] {
        let r = fwd(c.get(&fa), "GET", host, "/")
            .header("Authorization", &staff)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{host}");
    }
    for (host, uri) in [
        (APP, "http://open.example.test/"),
        (APP, "open.example.test/"),
        (APP, "/a#b"),
        (APP, "/%zz"),
        (APP, "/a%00b"),
        ("open.example.test,app.example.test", "/"),
        ("ann@open.example.test", "/"),
        ("open.example.test/x", "/"),
    ] {
        let r = fwd(c.get(&fa), "GET", host, uri)
            .header("Authorization", &staff)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{host} {uri}");
    }
    let r = c.get(&fa).header("Authorization", &staff).send().await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "no metadata");
    let ar = gw.admin_url("/api/authz/auth-request");
    for url in [
        "/relative",
        "ftp://open.example.test/",
        "https://ann@open.example.test/",
        "https://open.example.test:8443https://evil.test/",
        "https://open.example.test/%zz",
    ] {
        let r = c
            .get(&ar)
            .header("X-Original-URL", url)
            .header("X-Original-Method", "GET")
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
    }
    Ok(())
}

#[tokio::test]
async fn the_portal_host_serves_the_endpoints_and_service_hosts_do_not() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "127.0.0.1").await?;
    let staff = format!("Bearer {}", token(&["staff"]));
    let r = fwd(
        gw.client.get(gw.url(PORTAL, "/api/authz/forward-auth")),
        "GET",
        APP,
        "/x",
    )
    .header("Authorization", &staff)
    .send()
    .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "remote-user"), Some("ann"));
    let r = gw
        .client
        .get(gw.url(PORTAL, "/oauth2/auth"))
        .header("X-Original-URL", format!("https://{APP}/x"))
        .header("X-Original-Method", "GET")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // On a service host the path belongs to the service.
    let report: EchoReport = gw.echo(OPEN, "/api/authz/forward-auth").await?;
    assert_eq!(report.uri, "/api/authz/forward-auth");
    Ok(())
}

#[tokio::test]
async fn untrusted_peers_are_refused() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "192.0.2.0/24").await?;
    let staff = format!("Bearer {}", token(&["staff"]));
    for url in [
        gw.admin_url("/api/authz/forward-auth"),
        gw.url(PORTAL, "/api/authz/forward-auth"),
    ] {
        let r = fwd(gw.client.get(&url), "GET", OPEN, "/")
            .header("Authorization", &staff)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
        assert_eq!(header(&r, "remote-user"), None);
    }
    let r = gw
        .client
        .get(gw.admin_url("/api/authz/ext-authz/"))
        .header("Host", OPEN)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn path_tricks_get_exactly_the_front_door_decision() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "127.0.0.1").await?;
    let staff = format!("Bearer {}", token(&["staff"]));
    for path in [
        "/public/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/public%2f..%2fadmin/x",
        "/public/..%2Fadmin/x",
        "//admin/x",
        "/public//../admin/x",
        "/./admin/x",
        "/admin/x",
        "/ADMIN/x",
        "/%zz",
    ] {
        for auth in [None, Some(staff.as_str())] {
            let auth_line = auth
                .map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default();
            let (front, _, _) = gw
                .raw_request(
                    APP,
                    &format!("GET {path} HTTP/1.1\r\nHost: {APP}\r\nAccept: application/json\r\n{auth_line}Connection: close\r\n\r\n"),
                )
                .await?;
            let mut req = fwd(
                gw.client.get(gw.admin_url("/api/authz/forward-auth")),
                "GET",
                APP,
                path,
            )
            .header("Accept", "application/json");
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let r = req.send().await?;
            assert_eq!(
                r.status().as_u16(),
                front,
                "forward-auth {path} {}",
                auth.is_some()
            );
            let mut req = gw
                .client
                .get(gw.admin_url("/api/authz/auth-request"))
                .header("X-Original-URL", format!("https://{APP}{path}"))
                .header("X-Original-Method", "GET")
                .header("Accept", "application/json");
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let r = req.send().await?;
            assert_eq!(
                r.status().as_u16(),
                front,
                "auth-request {path} {}",
                auth.is_some()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_spoofed_remote_user_never_reaches_the_backend() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "127.0.0.1").await?;
    let staff = format!("Bearer {}", token(&["staff"]));
    // Forward-auth answers carry the token's user, never the client's header.
    let r = fwd(
        gw.client.get(gw.admin_url("/api/authz/forward-auth")),
        "GET",
        APP,
        "/",
    )
    .header("Authorization", &staff)
    .header("Remote-User", "mallory")
    .header("X-Auth-Request-User", "mallory")
    .send()
    .await?;
    assert_eq!(header(&r, "remote-user"), Some("ann"));
    // A bypass answer has no identity header for a proxy to copy.
    let r = fwd(
        gw.client.get(gw.admin_url("/api/authz/forward-auth")),
        "GET",
        OPEN,
        "/",
    )
    .header("Remote-User", "mallory")
    .send()
    .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "remote-user"), None);
    // And the front door strips it on both kinds of service.
    let r = gw
        .client
        .get(gw.url(APP, "/"))
        .header("Authorization", &staff)
        .header("Remote-User", "mallory")
        .send()
        .await?;
    let report: EchoReport = r.json().await?;
    assert_eq!(report.all("remote-user"), vec!["ann"]);
    let r = gw
        .client
        .get(gw.url(OPEN, "/"))
        .header("Remote-User", "mallory")
        .send()
        .await?;
    let report: EchoReport = r.json().await?;
    assert!(report.all("remote-user").is_empty());
    Ok(())
}

/// `[forward_auth] hosts`: a host of its own serves only the endpoints, with the same decisions.
#[tokio::test]
async fn a_forward_auth_host_of_its_own_serves_only_the_endpoints() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .server("trusted_proxies = [\"127.0.0.1\"]")
        .top_level(&format!(
            "{}\n[forward_auth]\nhosts = [\"authz.example.test\"]\n",
            top_level()
        ))
        .service(
            "app",
            &format!("upstream = {:?}\nallow_groups = [\"staff\"]\n", echo.url()),
        )
        .spawn()
        .await?;
    let staff = format!("Bearer {}", token(&["staff"]));
    let outsider = format!("Bearer {}", token(&["guests"]));
    let url = gw.url("authz.example.test", "/api/authz/forward-auth");
    let r = fwd(gw.client.get(&url), "GET", APP, "/x")
        .header("Authorization", &staff)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "remote-user"), Some("ann"));
    let r = fwd(gw.client.get(&url), "GET", APP, "/x")
        .header("Authorization", &outsider)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = gw
        .client
        .get(gw.url("authz.example.test", "/anything-else"))
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "nothing but the endpoints is served there"
    );
    Ok(())
}
