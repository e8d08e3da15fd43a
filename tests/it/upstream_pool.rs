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

/// Reads from a raw upstream socket until the end of one request head; false when the peer left first.
async fn read_request_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
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
                if !read_request_head(&mut s).await {
                    return;
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

/// An upstream that answers every request with `head_kib` KiB of extra response headers and the body `ok`, then
/// closes the connection.
async fn upstream_with_large_headers(head_kib: usize) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    // 1 KiB per header line: `x-big-NNN: ` plus padding plus CRLF.
    for i in 0..head_kib {
        let name = format!("x-big-{i:03}: ");
        head.push_str(&name);
        head.push_str(&"v".repeat(1024 - name.len() - 2));
        head.push_str("\r\n");
    }
    head.push_str("\r\nok");
    let response = Arc::new(head.into_bytes());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let response = Arc::clone(&response);
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn response_headers_over_the_read_buffer_are_a_502_that_names_the_setting() -> Result<()> {
    // Current-thread runtime: the gateway's tasks log on this thread.
    let (captured, _guard) = crate::harness::Captured::install("portcullis=warn");

    // 40 KiB of headers: over the default 32 KiB, under 64 KiB.
    let addr = upstream_with_large_headers(40).await?;
    let upstream = format!("http://{addr}");
    let gw = TestGateway::new()
        .service("tight", &bypass(&upstream))
        .service(
            "roomy",
            &format!("{}\nupstream_read_buffer_kib = 64", bypass(&upstream)),
        )
        .spawn()
        .await?;

    let resp = gw.get("tight.example.test", "/").await?;
    assert_eq!(resp.status(), 502);
    let id = resp.headers()["x-request-id"].to_str()?.to_owned();
    assert!(resp.text().await?.contains(&id));
    let logs = captured.text();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream request failed") && l.contains(&id))
        .unwrap_or_else(|| panic!("no log line for request {id}: {logs}"));
    assert!(
        line.contains(&format!(
            "upstream {upstream} sent response headers larger than 32 KiB; raise services.tight.upstream_read_buffer_kib"
        )),
        "{line}"
    );
    let metrics = gw.metrics().await?;
    assert!(
        metrics.contains(
            r#"portcullis_upstream_errors_total{service="tight",kind="headers_too_large"} 1"#
        ),
        "{metrics}"
    );

    // The same upstream through a service with room for its headers: every one of them arrives (to a client
    // that, like browsers, takes more than reqwest's default 16 KiB of HTTP/2 headers).
    let client = crate::harness::client_builder(&gw.ca_pem)?
        .http2_max_header_list_size(256 * 1024)
        .build()?;
    let resp = client.get(gw.url("roomy.example.test", "/")).send().await?;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let big = resp
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("x-big-"))
        .count();
    assert_eq!(big, 40);
    assert_eq!(resp.text().await?, "ok");
    Ok(())
}

#[tokio::test]
async fn bodies_larger_than_the_read_buffer_stream_whole() -> Result<()> {
    // The smallest buffer the configuration allows, and a body hundreds of times its size.
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service(
            "small",
            &format!("{}\nupstream_read_buffer_kib = 4", bypass(&echo.url())),
        )
        .spawn()
        .await?;
    let n = 3 * 1024 * 1024 + 17;
    for _ in 0..2 {
        let resp = gw.get("small.example.test", &format!("/bytes/{n}")).await?;
        assert_eq!(resp.status(), 200);
        let body = resp.bytes().await?;
        assert_eq!(body.len(), n);
        assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
    }
    Ok(())
}
