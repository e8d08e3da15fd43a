//! Graceful shutdown: in-flight requests finish, new connections are refused, the drain is reported.

use std::time::Duration;

use anyhow::Result;

use crate::harness::{wait_until, Echo, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() -> Result<()> {
    let echo = Echo::start().await?;
    let mut gw = TestGateway::new()
        .service(
            "slow",
            &format!("upstream = {:?}\nbypass_auth = true", echo.counted_url()),
        )
        .spawn()
        .await?;
    let client = gw.client.clone();
    let url = gw.url("slow.example.test", "/delay/1500");
    let in_flight = tokio::spawn(async move {
        let resp = client.get(url).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    // The gateway has the request once it has connected to the upstream.
    assert!(wait_until(Duration::from_secs(5), || async { echo.connections() >= 1 }).await);
    gw.trigger_shutdown();
    let https = gw.addrs.https;
    let refused = wait_until(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(https).await.is_err()
    })
    .await;
    assert!(
        refused,
        "new connections are still accepted after shutdown began"
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request was not in flight while draining"
    );
    assert!(
        !gw.shared.is_ready(),
        "/readyz must stop answering ready once draining"
    );
    let (status, body) = in_flight.await??;
    assert_eq!(status, 200);
    assert_eq!(body, "delayed");
    let report = gw.shutdown().await?;
    assert!(report.drained, "{report:?}");
    Ok(())
}

#[tokio::test]
async fn idle_gateway_shuts_down_drained() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("a", &echo.url())
        .spawn()
        .await?;
    // A kept-alive idle connection must not hold the drain up.
    assert_eq!(gw.status("a.example.test", "/").await?, 200);
    let started = std::time::Instant::now();
    let report = gw.shutdown().await?;
    assert!(report.drained);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "drain waited for an idle connection"
    );
    Ok(())
}
