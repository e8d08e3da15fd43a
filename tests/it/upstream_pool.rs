//! The upstream connection pool as the gateway uses it: keep-alive reuse, upstreams that close idle connections,
//! and clients that leave before the end of a response.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{Echo, TestGateway};

fn bypass(upstream: &str) -> String {
    format!("upstream = {upstream:?}\nbypass_auth = true")
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service("web", &bypass(&echo.counted_url()))
        .spawn()
        .await?;
    for i in 0..20 {
        let report = gw.echo("web.example.test", &format!("/n/{i}")).await?;
        assert_eq!(report.uri, format!("/n/{i}"));
    }
    assert_eq!(
        echo.connections(),
        1,
        "each response was read to the end, so its connection was reused"
    );
    Ok(())
}

#[tokio::test]
async fn upstream_that_closes_every_connection_after_one_response_loses_no_request() -> Result<()> {
    // Answers one request per connection with a keep-alive response (no `Connection: close`), then closes:
    // every pooled connection is dead by the time the next request wants it.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let gw = TestGateway::new()
        .service("flaky", &bypass(&format!("http://{addr}")))
        .spawn()
        .await?;
    for _ in 0..30 {
        let resp = gw.get("flaky.example.test", "/").await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await?, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
    Ok(())
}

#[tokio::test]
async fn client_leaving_mid_response_does_not_leave_a_broken_connection_in_the_pool() -> Result<()>
{
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service("web", &bypass(&echo.counted_url()))
        .spawn()
        .await?;
    // 64 MiB, of which the client reads one chunk and then drops the response.
    let resp = gw.get("web.example.test", "/bytes/67108864").await?;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    assert!(stream.next().await.is_some());
    drop(stream);
    // A fresh client connection, so the abandoned one cannot be reused either.
    let other = crate::harness::client_builder(&gw.ca_pem)?.build()?;
    for _ in 0..3 {
        let resp = other
            .get(gw.url("web.example.test", "/small"))
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        assert!(!resp.bytes().await?.is_empty());
    }
    assert_eq!(
        echo.connections(),
        2,
        "the half-read connection was closed, one new connection served the rest"
    );
    Ok(())
}
