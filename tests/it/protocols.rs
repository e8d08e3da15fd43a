//! Client protocols through the gateway to the HTTP/1.1 upstream: HTTP/2 over TLS (ALPN h2) and WebSocket (wss).

use anyhow::{Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{client_builder, Echo, EchoReport, Gateway, TestGateway};

#[tokio::test]
async fn http2_client_reaches_the_http1_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("web", &echo.url())
        .spawn()
        .await?;
    let h2 = client_builder(&gw.ca_pem)?
        .http2_prior_knowledge()
        .build()?;
    let resp = h2
        .post(gw.url("web.example.test", "/h2?q=1"))
        .header("x-client", "h2")
        .body("hello over h2")
        .send()
        .await?;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let seen: EchoReport = resp.json().await?;
    assert_eq!(seen.version, "HTTP/1.1", "the upstream hop is HTTP/1.1");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/h2?q=1");
    assert_eq!(seen.body_bytes, 13);
    assert_eq!(seen.header("x-client"), Some("h2"));
    let expected = format!("web.example.test:{}", gw.addrs.https.port());
    assert_eq!(
        seen.all("host"),
        [expected.as_str()],
        "the :authority becomes Host"
    );
    // Unknown host over h2 is a 404 as well.
    let resp = h2.get(gw.url("nothing.example.test", "/")).send().await?;
    assert_eq!(resp.status(), 404);
    Ok(())
}

/// Opens a WebSocket through the gateway over TLS with the given host as SNI and Host.
pub(crate) async fn open_ws(
    gw: &Gateway,
    host: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
> {
    let tls = gw.tls_connect(host).await?;
    let url = format!("wss://{host}:{}/ws", gw.addrs.https.port());
    let (ws, resp) = tokio_tungstenite::client_async(url, tls).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// Sends one message and expects it back.
pub(crate) async fn ws_roundtrip<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    msg: Message,
) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(msg.clone()).await?;
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .context("no echo within 10 s")?
        .context("stream ended")??;
    assert_eq!(got, msg);
    Ok(())
}

#[tokio::test]
async fn websocket_echoes_text_and_binary() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("ws", &echo.url())
        .spawn()
        .await?;
    let mut ws = open_ws(&gw, "ws.example.test").await?;
    ws_roundtrip(&mut ws, Message::Text("hello through the gate".into())).await?;
    ws_roundtrip(&mut ws, Message::Binary(vec![0, 1, 2, 254, 255])).await?;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws_roundtrip(&mut ws, Message::Binary(big)).await?;
    ws_roundtrip(&mut ws, Message::Text("after the big one".into())).await?;
    ws.close(None).await?;
    Ok(())
}

#[tokio::test]
async fn websocket_to_a_protected_service_is_refused() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service("ws", &format!("upstream = {:?}", echo.counted_url()))
        .spawn()
        .await?;
    let tls = gw.tls_connect("ws.example.test").await?;
    let url = format!("wss://ws.example.test:{}/ws", gw.addrs.https.port());
    let err = tokio_tungstenite::client_async(url, tls)
        .await
        .expect_err("must not upgrade");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(echo.connections(), 0);
    Ok(())
}

/// One HTTP/2 frame as read off the wire: type, flags, stream and payload (RFC 9113 §4.1).
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let len = u32::try_from(payload.len())?.to_be_bytes();
    let mut head = vec![len[1], len[2], len[3], kind, flags];
    head.extend_from_slice(&stream.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Frame> {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A raw HTTP/2 connection to `host`: TLS with ALPN h2, the client preface and an empty SETTINGS frame.
async fn h2_open(
    gw: &Gateway,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = h2_preface(gw, host, &[b"h2"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    Ok(tls)
}

/// TLS to `host` offering the `alpn` protocols (none: no ALPN extension), then the HTTP/2 client preface and an
/// empty SETTINGS frame.
async fn h2_preface(
    gw: &Gateway,
    host: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt as _;
    let mut tls = gw.tls_connect_alpn(host, alpn).await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    write_frame(&mut tls, 0x4, 0, 0, &[]).await?; // SETTINGS, all defaults
    Ok(tls)
}

/// ALPN settles the protocol. A connection that chose `http/1.1` is served HTTP/1.1 alone, without first reading
/// its bytes to look for an HTTP/2 preface (that read is what cost each connection 8 KiB more read buffer); one
/// that chose `h2` is served HTTP/2. Only a client that offered no ALPN has its first bytes examined.
#[tokio::test]
async fn the_protocol_alpn_chose_is_the_one_served() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("web", &echo.counted_url())
        .spawn()
        .await?;
    let wait = std::time::Duration::from_secs(10);
    // No ALPN: the preface is recognised and the server's SETTINGS come back.
    let mut tls = h2_preface(&gw, "web.example.test", &[]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let first = tokio::time::timeout(wait, read_frame(&mut tls)).await??;
    assert_eq!(
        first.kind, 0x4,
        "a SETTINGS frame first, from an HTTP/2 server"
    );
    // ALPN h2: served as HTTP/2, and a request on it reaches the upstream.
    let mut tls = h2_open(&gw, "web.example.test").await?;
    let first = tokio::time::timeout(wait, read_frame(&mut tls)).await??;
    assert_eq!(
        first.kind, 0x4,
        "a SETTINGS frame first, from an HTTP/2 server"
    );
    let mut encoder = httlib_hpack::Encoder::default();
    h2_get(&mut tls, &gw, &mut encoder, 1, "web.example.test", "/").await?;
    loop {
        let f = tokio::time::timeout(wait, read_frame(&mut tls)).await??;
        match f.kind {
            0x4 if f.flags & 0x1 == 0 => write_frame(&mut tls, 0x4, 0x1, 0, &[]).await?,
            0x1 if f.stream == 1 => break, // the response's HEADERS
            0x3 | 0x7 => anyhow::bail!("the HTTP/2 request was refused (frame type {})", f.kind),
            _ => {}
        }
    }
    // ALPN http/1.1: to an HTTP/1.1 server the preface is a request line naming version HTTP/2.0, and hyper
    // closes such a connection without an answer. Served with detection, SETTINGS would come back.
    let mut tls = h2_preface(&gw, "web.example.test", &[b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        use tokio::io::AsyncReadExt as _;
        match tokio::time::timeout(wait, tls.read(&mut chunk)).await? {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        answer.is_empty(),
        "a connection that chose http/1.1 was answered as HTTP/2: {answer:?}"
    );
    assert_eq!(
        echo.connections(),
        1,
        "only the HTTP/2 request reached the upstream"
    );
    Ok(())
}

/// Sends `GET path` to `host` on `stream` (HEADERS with END_STREAM and END_HEADERS).
async fn h2_get<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    gw: &Gateway,
    encoder: &mut httlib_hpack::Encoder<'_>,
    stream: u32,
    host: &str,
    path: &str,
) -> Result<()> {
    let authority = format!("{host}:{}", gw.addrs.https.port());
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", authority.as_str()),
    ] {
        encoder
            .encode(
                (n.as_bytes().to_vec(), v.as_bytes().to_vec(), 0x0),
                &mut block,
            )
            .map_err(|e| anyhow::anyhow!("hpack encode: {e:?}"))?;
    }
    write_frame(w, 0x1, 0x5, stream, &block).await
}

/// `server.timeouts.idle_secs` closes an idle HTTP/2 connection even when its client answers every PING, as any
/// live client does. hyper pings idle connections, and the answers are traffic: with pings every 30 s, an idle
/// timeout above that never came. Takes 31 to 39 s: the timeout must be longer than the old ping interval.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_although_its_client_answers_pings() -> Result<()> {
    const IDLE_SECS: u64 = 31;
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .server(&format!("timeouts = {{ idle_secs = {IDLE_SECS} }}"))
        .bypass_service("web", &echo.url())
        .spawn()
        .await?;
    let mut tls = h2_open(&gw, "web.example.test").await?;
    let mut encoder = httlib_hpack::Encoder::default();
    h2_get(&mut tls, &gw, &mut encoder, 1, "web.example.test", "/").await?;
    let mut answered = false;
    let mut pings = 0;
    let mut last_activity = std::time::Instant::now();
    // The idle check runs every quarter of the timeout, so it closes within 1.25 times the timeout.
    let limit = std::time::Duration::from_secs(IDLE_SECS * 5 / 4 + 6);
    let closed_after = loop {
        let left = limit.saturating_sub(last_activity.elapsed());
        let frame = match tokio::time::timeout(left, read_frame(&mut tls)).await {
            Err(_) => anyhow::bail!(
                "the connection was still open {:?} after its last request ({pings} pings answered)",
                last_activity.elapsed()
            ),
            Ok(Err(_)) => break last_activity.elapsed(), // closed
            Ok(Ok(f)) => f,
        };
        match frame.kind {
            0x4 if frame.flags & 0x1 == 0 => write_frame(&mut tls, 0x4, 0x1, 0, &[]).await?,
            0x6 if frame.flags & 0x1 == 0 => {
                // PING: answer as a live client does.
                pings += 1;
                write_frame(&mut tls, 0x6, 0x1, 0, &frame.payload).await?;
            }
            0x7 => break last_activity.elapsed(), // GOAWAY: the gateway closes the connection
            0x0 if frame.stream == 1 && frame.flags & 0x1 != 0 => {
                answered = true;
                last_activity = std::time::Instant::now();
            }
            _ => {}
        }
    };
    assert!(answered, "the request was not answered");
    assert!(
        closed_after >= std::time::Duration::from_secs(IDLE_SECS - 1),
        "closed after {closed_after:?}, before the idle timeout of {IDLE_SECS} s"
    );
    Ok(())
}

/// Per-response values (`X-Request-Id`, `Date`) reach an HTTP/2 client as "never indexed" literals, so they do
/// not churn the connection's HPACK table, while a stable upstream value (`Content-Type`) is still indexed once
/// and then sent by reference. Read with a raw HTTP/2 client: h2's own client does not expose the representation.
#[tokio::test]
async fn http2_responses_keep_per_response_values_out_of_the_hpack_table() -> Result<()> {
    use httlib_hpack::{Decoder, Encoder};
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .bypass_service("web", &echo.url())
        .spawn()
        .await?;
    let mut tls = h2_open(&gw, "web.example.test").await?;
    let mut encoder = Encoder::default();
    let mut decoder = Decoder::default();
    // name -> HPACK flags of each response, in order.
    let mut responses: Vec<Vec<(String, u8)>> = Vec::new();
    for stream in [1u32, 3, 5] {
        h2_get(
            &mut tls,
            &gw,
            &mut encoder,
            stream,
            "web.example.test",
            "/hpack",
        )
        .await?;
        let mut header_block = Vec::new();
        loop {
            let f = tokio::time::timeout(std::time::Duration::from_secs(10), read_frame(&mut tls))
                .await
                .context("no frame within 10 s")??;
            match f.kind {
                0x4 if f.flags & 0x1 == 0 => write_frame(&mut tls, 0x4, 0x1, 0, &[]).await?,
                0x7 => anyhow::bail!("GOAWAY from the gateway: {:?}", f.payload),
                0x3 if f.stream == stream => {
                    anyhow::bail!("stream {stream} reset: {:?}", f.payload)
                }
                0x1 | 0x9 if f.stream == stream => {
                    // HEADERS (no padding or priority from h2) and CONTINUATION.
                    header_block.extend_from_slice(&f.payload);
                    if f.flags & 0x4 != 0 {
                        let mut fields = Vec::new();
                        decoder
                            .decode(&mut header_block, &mut fields)
                            .map_err(|e| anyhow::anyhow!("hpack decode: {e:?}"))?;
                        responses.push(
                            fields
                                .into_iter()
                                .map(|(n, _, flags)| {
                                    (String::from_utf8_lossy(&n).into_owned(), flags)
                                })
                                .collect(),
                        );
                    }
                    if f.flags & 0x1 != 0 {
                        break;
                    }
                }
                0x0 if f.stream == stream && f.flags & 0x1 != 0 => break, // DATA, END_STREAM
                _ => {}
            }
        }
    }
    assert_eq!(responses.len(), 3, "one header block per response");
    let flags = |r: &Vec<(String, u8)>, name: &str| {
        r.iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("no {name} in {r:?}"))
    };
    for (i, r) in responses.iter().enumerate() {
        for name in ["x-request-id", "date"] {
            assert_eq!(
                flags(r, name) & Decoder::NEVER_INDEXED,
                Decoder::NEVER_INDEXED,
                "response {i}: {name} must be a never-indexed literal: {r:?}"
            );
        }
    }
    assert_eq!(
        flags(&responses[0], "content-type") & Decoder::WITH_INDEXING,
        Decoder::WITH_INDEXING,
        "a stable upstream value is still indexed: {:?}",
        responses[0]
    );
    assert_eq!(
        flags(&responses[2], "content-type"),
        0,
        "and then sent from the table: {:?}",
        responses[2]
    );
    Ok(())
}
