//! Header handling between client and upstream: hop-by-hop stripping, `X-Forwarded-*`, `X-Request-Id`, Host,
//! and client-sent identity headers.

use anyhow::Result;

use crate::harness::{refused_addr, Echo, EchoReport, Gateway, TestGateway};

async fn gateway(echo: &Echo, server: &str, extra: &str) -> Result<Gateway> {
    TestGateway::new()
        .server(server)
        .service(
            "web",
            &format!("upstream = {:?}\nbypass_auth = true\n{extra}", echo.url()),
        )
        .spawn()
        .await
}

/// Sends a hand-written request (header names exactly as written) and parses the echo's report.
async fn raw_echo(gw: &Gateway, headers: &[&str]) -> Result<(Vec<(String, String)>, EchoReport)> {
    let mut head = String::from("GET /h HTTP/1.1\r\nHost: web.example.test\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let (status, resp_headers, body) = gw.raw_request("web.example.test", &head).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Ok((resp_headers, serde_json::from_slice(&body)?))
}

#[tokio::test]
async fn hop_by_hop_and_connection_listed_headers_never_reach_the_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = []", "").await?;
    let (_, seen) = raw_echo(
        &gw,
        &[
            "Connection: keep-alive, X-Foo, close",
            "X-Foo: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "Proxy-Connection: keep-alive",
            "Upgrade: h2c",
            "X-Kept: yes",
        ],
    )
    .await?;
    for name in [
        "x-foo",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    // The upstream hop may carry its own Connection, but never the client's tokens.
    for v in seen.all("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-foo"), "connection: {v}");
    }
    assert_eq!(seen.header("x-kept"), Some("yes"));
    Ok(())
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = []", "").await?;
    let (_, seen) = raw_echo(
        &gw,
        &[
            "X-Forwarded-For: 1.2.3.4",
            "X-Forwarded-Proto: http",
            "X-Forwarded-Host: evil.test",
            "Forwarded: for=1.2.3.4",
        ],
    )
    .await?;
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["web.example.test"]);
    assert_eq!(seen.header("forwarded"), None);
    // And without any client value they are set too.
    let (_, seen) = raw_echo(&gw, &[]).await?;
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["web.example.test"]);
    Ok(())
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_peer_is_appended() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = [\"127.0.0.1/32\"]", "").await?;
    let (_, seen) = raw_echo(
        &gw,
        &[
            "X-Forwarded-For: 1.2.3.4, 5.6.7.8",
            "X-Forwarded-Proto: http",
            "X-Forwarded-Host: outer.example.test",
        ],
    )
    .await?;
    assert_eq!(seen.all("x-forwarded-for"), ["1.2.3.4, 5.6.7.8, 127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["outer.example.test"]);
    let (_, seen) = raw_echo(&gw, &[]).await?;
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    Ok(())
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = []", "").await?;
    let (resp, seen) = raw_echo(&gw, &["X-Request-Id: abc-123_x.y"]).await?;
    assert_eq!(seen.all("x-request-id"), ["abc-123_x.y"]);
    let resp_id: Vec<_> = resp
        .iter()
        .filter(|(n, _)| n == "x-request-id")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(resp_id, ["abc-123_x.y"]);

    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = gw.get("web.example.test", "/").await?;
        let id = resp.headers()["x-request-id"].to_str()?.to_owned();
        let seen: EchoReport = resp.json().await?;
        assert!(!id.is_empty());
        assert_eq!(
            seen.all("x-request-id"),
            [id.as_str()],
            "upstream and client see the same id"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "generated ids are unique");
    // A malformed client id is replaced, not forwarded.
    let (_, seen) = raw_echo(&gw, &["X-Request-Id: bad id with spaces"]).await?;
    assert_ne!(seen.header("x-request-id"), Some("bad id with spaces"));
    assert!(seen.header("x-request-id").is_some());
    Ok(())
}

/// `server.response_request_id = "errors"`: the id still reaches the upstream and the log, but goes back to the
/// client only on status 400 and above, the upstream's errors and the gateway's own alike.
#[tokio::test]
async fn response_request_id_errors_returns_the_id_only_on_failures() -> Result<()> {
    let echo = Echo::start().await?;
    let dead = refused_addr().await?;
    let gw = TestGateway::new()
        .server("response_request_id = \"errors\"")
        .bypass_service("web", &echo.url())
        .bypass_service("dead", &format!("http://{dead}"))
        .spawn()
        .await?;
    let (resp, seen) = raw_echo(&gw, &["X-Request-Id: ok-1"]).await?;
    assert_eq!(
        seen.all("x-request-id"),
        ["ok-1"],
        "the upstream still gets it"
    );
    assert!(
        !resp.iter().any(|(n, _)| n == "x-request-id"),
        "a 200 goes back without it: {resp:?}"
    );
    for path in ["/status/404", "/status/503"] {
        let resp = gw
            .client
            .get(gw.url("web.example.test", path))
            .header("x-request-id", "upstream-error-1")
            .send()
            .await?;
        assert!(resp.status().as_u16() >= 400, "{path}: {}", resp.status());
        assert_eq!(resp.headers()["x-request-id"], "upstream-error-1", "{path}");
    }
    let resp = gw.get("dead.example.test", "/").await?;
    assert_eq!(resp.status(), 502);
    let id = resp.headers()["x-request-id"].to_str()?.to_owned();
    assert!(resp.text().await?.contains(&id), "the page quotes the id");
    // Unknown host: the gateway's own 404.
    let resp = gw.get("nowhere.example.test", "/").await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    Ok(())
}

#[tokio::test]
async fn host_is_preserved_by_default() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = []", "").await?;
    let seen = gw.echo("web.example.test", "/").await?;
    let expected = format!("web.example.test:{}", gw.addrs.https.port());
    assert_eq!(seen.all("host"), [expected.as_str()]);
    Ok(())
}

#[tokio::test]
async fn host_is_the_upstream_authority_without_preserve_host() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = []", "preserve_host = false").await?;
    let seen = gw.echo("web.example.test", "/").await?;
    let expected = echo.direct.to_string();
    assert_eq!(seen.all("host"), [expected.as_str()]);
    // The client's host is still available to the upstream.
    assert_eq!(
        seen.all("x-forwarded-host")[0].split(':').next(),
        Some("web.example.test")
    );
    Ok(())
}

#[tokio::test]
async fn client_identity_headers_never_reach_a_bypass_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = gateway(&echo, "trusted_proxies = [\"127.0.0.1/32\"]", "").await?;
    let (_, seen) = raw_echo(
        &gw,
        &[
            "Remote-User: admin",
            "REMOTE-USER: root",
            "remote-email: a@example.test",
            "Remote-Groups: admins",
            "Remote-Name: Admin",
            "X-Forwarded-User: admin",
        ],
    )
    .await?;
    for name in [
        "remote-user",
        "remote-email",
        "remote-groups",
        "remote-name",
        "x-forwarded-user",
    ] {
        assert_eq!(
            seen.header(name),
            None,
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    Ok(())
}
