//! The plain HTTP listener (redirects, health, ACME) and the admin listener (health, readiness, metrics).

use anyhow::Result;

use std::time::Duration;

use crate::harness::{wait_until, Echo, TestGateway};

#[tokio::test]
async fn http_listener_redirects_to_https_keeping_path_and_query() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service(
            "web",
            &format!("upstream = {:?}\nbypass_auth = true", echo.counted_url()),
        )
        .spawn()
        .await?;
    let http = gw.addrs.http.expect("http listener").port();
    let https = gw.addrs.https.port();
    let resp = gw
        .client
        .get(format!(
            "http://web.example.test:{http}/some/path?x=1&y=two"
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://web.example.test:{https}/some/path?x=1&y=two").as_str()
    );
    // The method is kept by 308, and a POST is redirected too.
    let resp = gw
        .client
        .post(format!("http://web.example.test:{http}/form"))
        .body("x")
        .send()
        .await?;
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://web.example.test:{https}/form").as_str()
    );

    let resp = gw
        .client
        .get(format!("http://web.example.test:{http}/healthz"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let resp = gw
        .client
        .get(format!(
            "http://web.example.test:{http}/.well-known/acme-challenge/x"
        ))
        .send()
        .await?;
    assert_ne!(resp.status(), 308);
    assert!(resp.headers().get("location").is_none());
    assert_eq!(echo.connections(), 0, "the HTTP listener never proxies");
    Ok(())
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_metrics() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("web", &echo.url())
        .spawn()
        .await?;
    let get = |path: &str| gw.client.get(gw.admin_url(path)).send();
    assert_eq!(get("/healthz").await?.status(), 200);
    assert_eq!(get("/readyz").await?.status(), 200);
    assert_eq!(get("/nope").await?.status(), 404);
    let before = get("/metrics").await?.text().await?;
    assert!(!before.contains("portcullis_http_requests_total{service=\"web\",status=\"2xx\"}"));
    assert_eq!(gw.status("web.example.test", "/").await?, 200);
    assert_eq!(gw.status("nothing.example.test", "/").await?, 404);
    // The request is counted when its response body ends, which may be just after the client saw it.
    let counted = wait_until(Duration::from_secs(5), || async {
        let metrics = match get("/metrics").await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        metrics.contains("portcullis_http_requests_total{service=\"web\",status=\"2xx\"} 1")
            && metrics.contains("portcullis_http_requests_total{service=\"-\",status=\"4xx\"} 1")
    })
    .await;
    assert!(counted, "{}", get("/metrics").await?.text().await?);
    Ok(())
}
