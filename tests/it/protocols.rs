//! Client protocols through the gateway to the HTTP/1.1 upstream: HTTP/2 over TLS (ALPN h2) and WebSocket (wss).

use anyhow::{Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{client_builder, Echo, EchoReport, Gateway, TestGateway};

#[tokio::test]
async fn http2_client_reaches_the_http1_upstream() -> Result<()> {
    let echo = Echo::start().await?;
    let gw = TestGateway::new()
        .service(
            "web",
            &format!("upstream = {:?}\nbypass_auth = true", echo.url()),
        )
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
        .service(
            "ws",
            &format!("upstream = {:?}\nbypass_auth = true", echo.url()),
        )
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
