//! Routing by Host: exact names, one-label wildcards, unknown hosts, normalization, 421, 401, 502 and 504.

use anyhow::Result;

use crate::harness::{refused_addr, Echo, TestGateway};

#[tokio::test]
async fn exact_host_routes_to_its_service() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("web", &echo.url())
        .service(
            "other",
            &format!(
                "upstream = {:?}\nbypass_auth = true\nhosts = [\"other.example.test\"]",
                echo.counted_url()
            ),
        )
        .spawn()
        .await?;
    let report = gw.echo("web.example.test", "/hello?x=1").await?;
    assert_eq!(report.uri, "/hello?x=1");
    assert_eq!(
        echo.connections(),
        0,
        "web must not go to the other service's upstream"
    );
    gw.echo("other.example.test", "/").await?;
    assert_eq!(echo.connections(), 1);
    Ok(())
}

#[tokio::test]
async fn wildcard_matches_exactly_one_label() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service(
            "grafana",
            &format!(
                "upstream = {:?}\nbypass_auth = true\nhosts = [\"grafana.example.test\", \"*.grafana.example.test\"]",
                echo.url()
            ),
        )
        .spawn()
        .await?;
    assert_eq!(gw.status("grafana.example.test", "/").await?, 200);
    assert_eq!(gw.status("a.grafana.example.test", "/").await?, 200);
    // Two labels under the wildcard: not matched. The certificate (*.example.test) does not cover it either,
    // so send it over a connection for a covered name with the Host header set.
    let (status, _) = gw
        .raw_get("a.grafana.example.test", "a.b.grafana.example.test", "/")
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn unknown_host_is_404() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service(
            "web",
            &format!("upstream = {:?}\nbypass_auth = true", echo.counted_url()),
        )
        .spawn()
        .await?;
    let resp = gw.get("nothing.example.test", "/").await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(echo.connections(), 0);
    Ok(())
}

#[tokio::test]
async fn host_case_port_and_trailing_dot_still_route() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("web", &echo.url())
        .spawn()
        .await?;
    for host in [
        "WEB.Example.TEST".to_owned(),
        format!("web.example.test:{}", gw.addrs.https.port()),
        "web.example.test:1234".to_owned(),
        "web.example.test.".to_owned(),
        format!("Web.Example.Test.:{}", gw.addrs.https.port()),
    ] {
        let (status, body) = gw.raw_get("web.example.test", &host, "/").await?;
        assert_eq!(
            status,
            200,
            "Host {host}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

#[tokio::test]
async fn host_not_covered_by_the_connections_certificate_is_421() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .certificate(&["a.example.test"])
        .certificate(&["b.example.test"])
        .bypass_service("a", &echo.url())
        .service(
            "b",
            &format!("upstream = {:?}\nbypass_auth = true", echo.counted_url()),
        )
        .spawn()
        .await?;
    // Controls: each name on its own certificate's connection is served.
    assert_eq!(
        gw.raw_get("a.example.test", "a.example.test", "/").await?.0,
        200
    );
    assert_eq!(
        gw.raw_get("b.example.test", "b.example.test", "/").await?.0,
        200
    );
    let before = echo.connections();
    let (status, _) = gw.raw_get("a.example.test", "b.example.test", "/").await?;
    assert_eq!(status, 421);
    assert_eq!(
        echo.connections(),
        before,
        "a misdirected request must not reach b's upstream"
    );
    Ok(())
}

#[tokio::test]
async fn protected_service_is_401_and_never_reaches_the_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service("private", &format!("upstream = {:?}", echo.counted_url()))
        .spawn()
        .await?;
    for path in ["/", "/admin", "/ws"] {
        let resp = gw.get("private.example.test", path).await?;
        assert_eq!(resp.status(), 401, "{path}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    let resp = gw
        .client
        .post(gw.url("private.example.test", "/"))
        .body("secret")
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        echo.connections(),
        0,
        "a protected service must never be proxied"
    );
    Ok(())
}

#[tokio::test]
async fn refused_upstream_is_502_with_request_id() -> Result<()> {
    let dead = refused_addr().await?;
    let gw = TestGateway::new()
        .service(
            "dead",
            &format!("upstream = \"http://{dead}\"\nbypass_auth = true"),
        )
        .spawn()
        .await?;
    let resp = gw.get("dead.example.test", "/").await?;
    assert_eq!(resp.status(), 502);
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()?
        .to_owned();
    assert!(!id.is_empty());
    let body = resp.text().await?;
    assert!(body.contains(&id), "body {body:?} lacks request id {id}");
    // A client-chosen id is the one shown.
    let resp = gw
        .client
        .get(gw.url("dead.example.test", "/"))
        .header("x-request-id", "client-id-42")
        .send()
        .await?;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-request-id"], "client-id-42");
    assert!(resp.text().await?.contains("client-id-42"));
    Ok(())
}

#[tokio::test]
async fn slow_upstream_is_504() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service(
            "slow",
            &format!(
                "upstream = {:?}\nbypass_auth = true\nupstream_response_secs = 1",
                echo.url()
            ),
        )
        .spawn()
        .await?;
    let started = std::time::Instant::now();
    let resp = gw.get("slow.example.test", "/delay/3000").await?;
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "answered only after the upstream"
    );
    let id = resp.headers()["x-request-id"].to_str()?.to_owned();
    assert!(resp.text().await?.contains(&id));
    // A fast answer on the same service is still fine.
    assert_eq!(gw.status("slow.example.test", "/delay/10").await?, 200);
    Ok(())
}
