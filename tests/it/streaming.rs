//! Large bodies stream end to end in both directions (memory is measured separately, not here).

use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::harness::{Captured, Echo, EchoReport, Gateway, TestGateway};

const SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// POSTs the chunks of `stream` to `/upload` on `up.example.test`.
async fn upload<S>(gw: &Gateway, stream: S) -> Result<reqwest::Response>
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    Ok(gw
        .client
        .post(gw.url("up.example.test", "/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?)
}

/// A buffer whose windows are the upload's chunks.
fn pattern() -> Bytes {
    Bytes::from(
        (0..CHUNK + 251)
            .map(|j| (j % 256) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Chunk `i` of the upload: a deterministic pattern that differs per chunk (a window of `pattern`), made lazily.
fn chunk(pattern: &Bytes, i: u64) -> Bytes {
    let start = (i % 251) as usize;
    pattern.slice(start..start + CHUNK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_256_mib_streams_to_the_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("up", &echo.url())
        .spawn()
        .await?;
    let chunks = SIZE / CHUNK as u64;
    let mut hasher = Sha256::new();
    let pattern = pattern();
    for i in 0..chunks {
        hasher.update(chunk(&pattern, i));
    }
    let expected = format!("{:x}", hasher.finalize());
    let stream = futures_util::stream::iter(0..chunks)
        .map(move |i| Ok::<_, std::io::Error>(chunk(&pattern, i)));
    let resp = upload(&gw, stream).await?;
    assert_eq!(resp.status(), 200);
    let seen: EchoReport = resp.json().await?;
    assert_eq!(seen.body_bytes, SIZE);
    assert_eq!(seen.body_sha256, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_256_mib_streams_to_the_client() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("down", &echo.url())
        .spawn()
        .await?;
    let resp = gw
        .get("down.example.test", &format!("/bytes/{SIZE}"))
        .await?;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Byte i of the response is i % 256: check the first and last byte of every chunk.
        if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
            assert_eq!(u64::from(*first), total % 256);
            assert_eq!(u64::from(*last), (total + chunk.len() as u64 - 1) % 256);
        }
        total += chunk.len() as u64;
    }
    assert_eq!(total, SIZE);
    Ok(())
}

/// A gateway with `up.example.test` in front of `upstream` and a one-second `server.timeouts.idle_secs`.
async fn idle_in_one_second(upstream: &str) -> Result<Gateway> {
    TestGateway::new()
        .server("timeouts = { idle_secs = 1 }")
        .bypass_service("up", upstream)
        .spawn()
        .await
}

/// A client that stops sending its request body is answered 408 after `server.timeouts.idle_secs`, and the log
/// line names the setting. The connection's idle check alone closes gracefully, which waits for the request in flight:
/// a stalled body held the client's connection and an upstream one for ever.
#[tokio::test]
async fn a_request_body_that_stops_arriving_is_cut_after_the_idle_timeout() -> Result<()> {
    let (captured, _guard) = Captured::install("portcullis=info");
    let echo = Echo::start().await?;
    let gw = idle_in_one_second(&echo.url()).await?;
    // 10 of the 1,000 bytes announced, then nothing.
    let head =
        "POST /upload HTTP/1.1\r\nHost: up.example.test\r\nContent-Length: 1000\r\n\r\n0123456789";
    let started = std::time::Instant::now();
    let (status, _, body) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gw.raw_request("up.example.test", head),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer 10 s after the body stalled"))??;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "cut after {:?}, before the idle timeout",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&body).contains("the request body stopped arriving"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let log = captured.text();
    assert!(
        log.contains("client_body_timeout") && log.contains("server.timeouts.idle_secs"),
        "the log must name the setting: {log}"
    );
    Ok(())
}

/// An upload that keeps coming, however slowly, is not cut: the idle timeout counts from the last chunk, not from
/// the start of the body (here 2.4 s of upload against a 1 s timeout).
#[tokio::test]
async fn a_slow_upload_that_keeps_coming_is_not_cut() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = idle_in_one_second(&echo.url()).await?;
    let stream = futures_util::stream::iter(0..6u8).then(|i| async move {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        Ok::<_, std::io::Error>(Bytes::from(vec![i; 1000]))
    });
    let resp = upload(&gw, stream).await?;
    assert_eq!(resp.status(), 200);
    let seen: EchoReport = resp.json().await?;
    assert_eq!(seen.body_bytes, 6000);
    Ok(())
}

/// An upstream that stops reading the request body is the upstream's fault: 504 after the idle timeout, naming it,
/// rather than a 408 blaming the client, whose chunks are ready all along.
#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_answered_504() -> Result<()> {
    // Accepts connections and reads nothing from them, so the kernel's buffers fill and then the upload stops.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = format!("http://{}", listener.local_addr()?);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let gw = idle_in_one_second(&upstream).await?;
    let pattern = pattern();
    // 256 MiB on offer, far more than the loopback buffers between the gateway and the upstream hold.
    let stream = futures_util::stream::iter(0..SIZE / CHUNK as u64)
        .map(move |i| Ok::<_, std::io::Error>(chunk(&pattern, i)));
    let resp = tokio::time::timeout(std::time::Duration::from_secs(20), upload(&gw, stream))
        .await
        .map_err(|_| anyhow::anyhow!("no answer 20 s after the upstream stopped reading"))??;
    assert_eq!(resp.status(), 504);
    let text = resp.text().await?;
    assert!(text.contains("stopped reading the request body"), "{text}");
    holder.abort();
    Ok(())
}
