//! Large bodies stream end to end in both directions (memory is measured separately, not here).

use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::harness::{Echo, EchoReport, TestGateway};

const SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

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
    let resp = gw
        .client
        .post(gw.url("up.example.test", "/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
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
