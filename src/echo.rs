//! The echo backend: a small origin server ("whoami/echo") that the binary can start itself and that tests and
//! benchmarks put behind the gateway.
//!
//! It answers every request, on any method and path, over plain HTTP/1.1 (with upgrades) and HTTP/2 prior
//! knowledge. The default answer is a JSON report of what arrived (method, URI, version, headers in order, body
//! length and SHA-256, peer); a few fixed paths serve benchmarks and protocol tests: `/small`, `/bytes/{n}`,
//! `/delay/{ms}`, `/status/{code}` and the WebSocket echo `/ws`.
//!
//! It must not: authenticate, terminate TLS or be exposed as a production origin; buffer a request or response
//! body whole (bodies are hashed and generated as they stream); panic on any input; or outlive its shutdown by
//! more than the drain deadline.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long open connections may take to finish after shutdown is requested before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after an accept error that is not about a single connection (for example too many open files), so a
/// persistent failure does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Upper bound for `/delay/{ms}`, so a typo cannot park a connection for hours.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Size of each chunk `/bytes/{n}` sends; also the length of [`PATTERN`].
const CHUNK_SIZE: usize = 64 * 1024;

/// One chunk of the `/bytes/{n}` pattern: byte `i` of the response is `i % 256`. Every chunk but the last is
/// full, so each one starts at a multiple of 256 and is a prefix of this buffer; sending a chunk is a slice of
/// static memory, which keeps a 1 GiB response at flat memory.
static PATTERN: [u8; CHUNK_SIZE] = pattern_chunk();

const fn pattern_chunk() -> [u8; CHUNK_SIZE] {
    let mut chunk = [0; CHUNK_SIZE];
    let mut i = 0;
    while i < CHUNK_SIZE {
        chunk[i] = (i % 256) as u8;
        i += 1;
    }
    chunk
}

const ECHO_HEADER: HeaderName = HeaderName::from_static("x-echo");
const ECHO_HEADER_VALUE: HeaderValue = HeaderValue::from_static("portcullis");
const HEADERS_COUNT_HEADER: HeaderName = HeaderName::from_static("x-echo-request-headers-count");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Serves the echo backend on an already-bound listener until `shutdown` completes, then drains open
/// connections (hyper-util [`GracefulShutdown`], at most 5 s).
///
/// Each connection speaks HTTP/1.1 with keep-alive and upgrades, or HTTP/2 when the client opens with the
/// prior-knowledge preface. Once `shutdown` completes the listener is closed, idle connections are closed,
/// in-flight requests finish, and WebSocket sessions are sent a 1001 (going away) close frame. Whatever is
/// still open after the deadline is cut off before this returns.
///
/// # Errors
///
/// Returns an error if the listener's local address cannot be read. Accept errors do not end the server:
/// they are logged and accepting resumes, because a full file table or an aborted handshake is usually
/// temporary.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let local_addr = listener.local_addr()?;
    info!(echo.addr = %local_addr, "echo backend listening");

    let mut builder = Builder::new(TokioExecutor::new());
    // The timer arms hyper's default header read timeout (HTTP/1) and keep-alive pings (HTTP/2), so a silent
    // client cannot hold a connection forever.
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    let tasks = Tasks::default();
    let mut shutdown = pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_connection_error(&error) {
                        warn!(error = %error, "echo backend accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Small responses (`/small`) must not wait for Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(error = %error, client.addr = %peer, "could not disable nagle on echo connection");
        }

        let context = Arc::new(ConnectionContext {
            peer,
            tasks: tasks.clone(),
        });
        let service = service_fn(move |request| {
            let context = Arc::clone(&context);
            async move { Ok::<_, Infallible>(route(request, &context).await) }
        });
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        let abort = tasks.abort.clone();
        tasks.tracker.spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        debug!(error = %error, client.addr = %peer, "echo connection ended with an error");
                    }
                }
                () = abort.cancelled() => {}
            }
        });
    }

    // Closing the listener first makes new clients fail fast instead of queueing behind the drain.
    drop(listener);
    tasks.draining.cancel();
    tasks.tracker.close();
    let drain = async {
        graceful.shutdown().await;
        tasks.tracker.wait().await;
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_ok() {
        info!(echo.addr = %local_addr, "echo backend drained");
    } else {
        tasks.abort.cancel();
        tasks.tracker.wait().await;
        warn!(echo.addr = %local_addr, "echo backend drain deadline passed, open connections were cut");
    }
    Ok(())
}

/// Errors that concern one incoming connection only; the listener itself is fine.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// Every task the server spawns, and the two stages of stopping them.
#[derive(Clone, Default)]
struct Tasks {
    /// Connection tasks and WebSocket sessions, so the drain can wait for all of them.
    tracker: TaskTracker,
    /// Shutdown has begun: WebSocket sessions start their closing handshake (hyper connections learn it from
    /// [`GracefulShutdown`]).
    draining: CancellationToken,
    /// The drain deadline has passed: every task stops where it is.
    abort: CancellationToken,
}

/// What a request handler needs to know about its connection.
struct ConnectionContext {
    peer: SocketAddr,
    tasks: Tasks,
}

async fn route(
    mut request: Request<Incoming>,
    context: &ConnectionContext,
) -> Response<ResponseBody> {
    if request.method() == Method::GET {
        let path = request.uri().path();
        if path == "/small" {
            return small();
        }
        if let Some(count) = path.strip_prefix("/bytes/") {
            return pattern_bytes(count);
        }
        if let Some(millis) = path.strip_prefix("/delay/") {
            let Some(delay) = parse_delay(millis) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "delay must be a whole number of milliseconds\n",
                );
            };
            tokio::time::sleep(delay).await;
            return text(StatusCode::OK, "delayed");
        }
        if let Some(code) = path.strip_prefix("/status/") {
            return status(code);
        }
        if path == "/ws" {
            return websocket(&mut request, context);
        }
    }
    echo(request, context.peer).await
}

/// The benchmark origin: nothing is parsed, allocated or serialized beyond the response itself.
fn small() -> Response<ResponseBody> {
    text(StatusCode::OK, "ok")
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    response
}

fn pattern_bytes(count: &str) -> Response<ResponseBody> {
    let Ok(count) = count.parse::<u64>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "byte count must be a whole number\n",
        );
    };
    let mut response = Response::new(ResponseBody::Pattern { remaining: count });
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    response
}

fn parse_delay(millis: &str) -> Option<Duration> {
    let millis = millis.parse::<u64>().ok()?;
    Some(Duration::from_millis(millis).min(MAX_DELAY))
}

/// Answers the requested final status; anything outside 200..=599 (informational codes cannot be sent as a
/// final answer, RFC 9110 section 15.2) becomes 400.
fn status(code: &str) -> Response<ResponseBody> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    // RFC 9110 sections 15.3.5, 15.3.6 and 15.4.5: these statuses carry no content.
    if matches!(
        status,
        StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        let mut response = Response::new(ResponseBody::Full(None));
        *response.status_mut() = status;
        return response;
    }
    let body = format!("{status}\n");
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    response
}

/// Accepts a WebSocket opening handshake (RFC 6455 section 4.2) and hands the upgraded connection to an echo
/// session.
fn websocket(
    request: &mut Request<Incoming>,
    context: &ConnectionContext,
) -> Response<ResponseBody> {
    let headers = request.headers();
    if !has_token(headers, &CONNECTION, "upgrade") || !has_token(headers, &UPGRADE, "websocket") {
        return text(StatusCode::BAD_REQUEST, "websocket upgrade required\n");
    }
    match headers.get(SEC_WEBSOCKET_VERSION) {
        None => return text(StatusCode::BAD_REQUEST, "missing sec-websocket-version\n"),
        Some(version) if version.as_bytes() != b"13" => {
            // RFC 6455 section 4.4: name the version this server speaks.
            let mut response = text(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported websocket version\n",
            );
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        }
        Some(_) => {}
    }
    // The key is 16 random bytes in base64 (RFC 6455 section 4.1), which is always 24 characters.
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|key| key.len() == 24) else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing or malformed sec-websocket-key\n",
        );
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not derive sec-websocket-accept\n",
        );
    };

    let upgrade = hyper::upgrade::on(request);
    let draining = context.tasks.draining.clone();
    let abort = context.tasks.abort.clone();
    let peer = context.peer;
    context.tasks.tracker.spawn(async move {
        tokio::select! {
            () = echo_websocket(upgrade, draining, peer) => {}
            () = abort.cancelled() => {}
        }
    });

    let mut response = Response::new(ResponseBody::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Whether a comma-separated header (RFC 9110 section 5.6.1) lists `token`, compared case-insensitively.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Sends every text and binary message back until the peer closes, or until shutdown, when the server starts
/// the closing handshake itself.
async fn echo_websocket(upgrade: OnUpgrade, draining: CancellationToken, peer: SocketAddr) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(error = %error, client.addr = %peer, "websocket upgrade failed");
            return;
        }
    };
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let mut closing = false;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            () = draining.cancelled(), if !closing => {
                closing = true;
                let going_away = CloseFrame {
                    code: CloseCode::Away,
                    reason: "server shutting down".into(),
                };
                if let Err(error) = socket.close(Some(going_away)).await {
                    debug!(error = %error, client.addr = %peer, "websocket close failed");
                    return;
                }
                continue;
            }
        };
        match message {
            // The closing handshake is complete (tungstenite answered the peer's close frame) or the peer left.
            None => return,
            Some(Err(error)) => {
                debug!(error = %error, client.addr = %peer, "websocket session ended with an error");
                return;
            }
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if let Err(error) = socket.send(message).await {
                    debug!(error = %error, client.addr = %peer, "websocket echo failed");
                    return;
                }
            }
            // tungstenite answers pings and close frames itself; pongs and raw frames need nothing.
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_),
            )) => {}
        }
    }
}

/// The JSON answer of the default route.
#[derive(Serialize)]
struct EchoReport<'a> {
    method: &'a str,
    uri: String,
    version: String,
    headers: Vec<(&'a str, String)>,
    body_bytes: u64,
    body_sha256: String,
    peer: String,
}

async fn echo(request: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let (parts, mut body) = request.into_parts();
    let mut hasher = Sha256::new();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    body_bytes += data.len() as u64;
                }
            }
            Err(error) => {
                debug!(error = %error, client.addr = %peer, "echo request body read failed");
                return text(StatusCode::BAD_REQUEST, "request body read failed\n");
            }
        }
    }

    // HeaderMap keeps names in first-seen order; repeated values of one name are grouped at its first place.
    let headers: Vec<(&str, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let report = EchoReport {
        method: parts.method.as_str(),
        // Origin-form requests (and HTTP/2) carry path and query; authority-form (CONNECT) has only an authority.
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |path| path.as_str().to_owned()),
        version: format!("{:?}", parts.version),
        body_bytes,
        body_sha256: format!("{:x}", hasher.finalize()),
        peer: peer.to_string(),
        headers,
    };
    let json = match serde_json::to_vec(&report) {
        Ok(json) => json,
        Err(error) => {
            warn!(error = %error, "echo report serialization failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "echo report serialization failed\n",
            );
        }
    };

    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(json))));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(ECHO_HEADER, ECHO_HEADER_VALUE);
    headers.insert(HEADERS_COUNT_HEADER, HeaderValue::from(parts.headers.len()));
    response
}

/// Response bodies of the echo backend: one enum instead of a boxed body, so no response pays for a box.
enum ResponseBody {
    /// A body already in memory; `None` once sent (or for statuses without content).
    Full(Option<Bytes>),
    /// `/bytes/{n}`: `remaining` more pattern bytes, produced one chunk per poll.
    Pattern { remaining: u64 },
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let data = match self.get_mut() {
            Self::Full(data) => data.take().filter(|data| !data.is_empty()),
            Self::Pattern { remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let len = usize::try_from(*remaining)
                        .map_or(CHUNK_SIZE, |remaining| remaining.min(CHUNK_SIZE));
                    *remaining -= len as u64;
                    Some(Bytes::from_static(&PATTERN[..len]))
                }
            }
        };
        Poll::Ready(data.map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.as_ref().is_none_or(Bytes::is_empty),
            Self::Pattern { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Self::Pattern { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // STYLE.md: these lints are off in tests
mod tests {
    use super::*;

    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// A running echo backend on a fresh loopback port.
    struct TestServer {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, async {
            // A dropped sender also means stop.
            let _ = stopped.await;
        }));
        TestServer { addr, stop, task }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().build().unwrap()
    }

    /// Sends raw bytes on a fresh connection and returns everything the server wrote until it closed.
    async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (SocketAddr, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        (local, response)
    }

    fn sha256_hex(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    #[tokio::test]
    async fn echo_reports_request_with_headers_in_received_order() {
        let server = start().await;
        let request = b"POST /some/path?b=2&a=1 HTTP/1.1\r\n\
            Host: echo.test\r\n\
            X-Zeta: last-letter\r\n\
            X-Alpha: first-letter\r\n\
            X-Lossy: caf\xff\r\n\
            Content-Length: 5\r\n\
            Connection: close\r\n\
            \r\n\
            hello";
        let (local, response) = raw_exchange(server.addr, request).await;

        let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(response[..split].to_vec())
            .unwrap()
            .to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(head.contains("\r\nx-echo: portcullis"), "{head}");
        assert!(
            head.contains("\r\nx-echo-request-headers-count: 6"),
            "{head}"
        );

        let report: serde_json::Value = serde_json::from_slice(&response[split + 4..]).unwrap();
        assert_eq!(report["method"], "POST");
        assert_eq!(report["uri"], "/some/path?b=2&a=1");
        assert_eq!(report["version"], "HTTP/1.1");
        assert_eq!(
            report["headers"],
            serde_json::json!([
                ["host", "echo.test"],
                ["x-zeta", "last-letter"],
                ["x-alpha", "first-letter"],
                ["x-lossy", "caf\u{fffd}"],
                ["content-length", "5"],
                ["connection", "close"],
            ])
        );
        assert_eq!(report["body_bytes"], 5);
        assert_eq!(report["body_sha256"], sha256_hex(b"hello"));
        assert_eq!(report["peer"], local.to_string());
    }

    #[tokio::test]
    async fn echo_counts_and_hashes_a_streamed_5_mib_upload() {
        let server = start().await;
        // Varied content, so a hash over the wrong bytes or a reordered chunk cannot match by accident.
        let mut upload = vec![0u8; 5 * 1024 * 1024];
        let mut state: u32 = 0x1234_5678;
        for byte in &mut upload {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *byte = (state >> 24) as u8;
        }
        let expected_sha = sha256_hex(&upload);
        let chunks: Vec<Result<Bytes, io::Error>> = upload
            .chunks(100_000)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));

        let response = client()
            .put(format!("http://{}/upload", server.addr))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let report: serde_json::Value = response.json().await.unwrap();
        assert_eq!(report["method"], "PUT");
        assert_eq!(report["body_bytes"], 5 * 1024 * 1024);
        assert_eq!(report["body_sha256"], expected_sha);
    }

    #[tokio::test]
    async fn bytes_streams_exactly_10_mib_of_pattern() {
        let server = start().await;
        let n: u64 = 10 * 1024 * 1024;
        let response = client()
            .get(format!("http://{}/bytes/{n}", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_LENGTH], n.to_string().as_str());

        let mut stream = response.bytes_stream();
        let mut offset: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            for (i, byte) in chunk.iter().enumerate() {
                assert_eq!(
                    u64::from(*byte),
                    (offset + i as u64) % 256,
                    "byte {}",
                    offset + i as u64
                );
            }
            offset += chunk.len() as u64;
        }
        assert_eq!(offset, n);
    }

    #[tokio::test]
    async fn pattern_body_covers_1_gib_in_static_64_kib_chunks() {
        let n: u64 = 1024 * 1024 * 1024;
        let mut body = ResponseBody::Pattern { remaining: n };
        assert_eq!(body.size_hint().exact(), Some(n));
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK_SIZE);
            // Every chunk borrows the one static buffer: nothing is allocated per chunk.
            assert_eq!(data.as_ptr(), PATTERN.as_ptr());
            total += data.len() as u64;
        }
        assert_eq!(total, n);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn small_answers_ok_as_text() {
        let server = start().await;
        let response = client()
            .get(format!("http://{}/small", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(response.headers()[CONTENT_LENGTH], "2");
        assert_eq!(response.text().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn delay_answers_after_the_delay_and_rejects_bad_input() {
        let server = start().await;
        let client = client();
        let started = Instant::now();
        let response = client
            .get(format!("http://{}/delay/200", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "delayed");
        assert!(started.elapsed() >= Duration::from_millis(200));

        let response = client
            .get(format!("http://{}/delay/soon", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }

    #[test]
    fn delay_is_capped_at_60_seconds() {
        assert_eq!(parse_delay("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_delay("60000"), Some(MAX_DELAY));
        assert_eq!(parse_delay("18446744073709551615"), Some(MAX_DELAY));
        assert_eq!(parse_delay("-1"), None);
        assert_eq!(parse_delay(""), None);
    }

    #[tokio::test]
    async fn status_answers_the_code_and_clamps_invalid_to_400() {
        let server = start().await;
        let client = client();
        for (code, expected) in [
            ("200", 200),
            ("204", 204),
            ("418", 418),
            ("503", 503),
            ("599", 599),
            ("100", 400),
            ("101", 400),
            ("199", 400),
            ("99", 400),
            ("600", 400),
            ("70000", 400),
            ("teapot", 400),
        ] {
            let response = client
                .get(format!("http://{}/status/{code}", server.addr))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), expected, "/status/{code}");
            let body = response.text().await.unwrap();
            if expected == 204 {
                assert!(body.is_empty());
            } else {
                assert!(
                    body.starts_with(&expected.to_string()),
                    "/status/{code}: {body}"
                );
            }
        }
    }

    #[tokio::test]
    async fn websocket_echoes_text_and_binary_and_closes_cleanly() {
        let server = start().await;
        let (mut socket, response) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
                .await
                .unwrap();
        assert_eq!(response.status(), 101);

        socket.send(Message::text("hello, echo")).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text("hello, echo")
        );
        let binary = vec![0u8, 1, 2, 254, 255];
        socket.send(Message::binary(binary.clone())).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::binary(binary)
        );

        socket.close(None).await.unwrap();
        // The server answers the close frame; after that the stream ends without an error.
        while let Some(message) = socket.next().await {
            assert!(matches!(message.unwrap(), Message::Close(_)));
        }
    }

    #[tokio::test]
    async fn websocket_without_a_valid_handshake_is_refused() {
        let server = start().await;
        let response = client()
            .get(format!("http://{}/ws", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);

        let (_, response) = raw_exchange(
            server.addr,
            b"GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Connection: close\r\n\r\n",
        )
        .await;
        let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
        assert!(response.starts_with("http/1.1 426"), "{response}");
        assert!(
            response.contains("\r\nsec-websocket-version: 13\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn http2_prior_knowledge_is_served() {
        let server = start().await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();

        let response = client
            .get(format!("http://{}/small", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.text().await.unwrap(), "ok");

        let response = client
            .post(format!("http://{}/h2/echo?x=1", server.addr))
            .body("over h2")
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.headers()["x-echo"], "portcullis");
        let report: serde_json::Value = response.json().await.unwrap();
        assert_eq!(report["version"], "HTTP/2.0");
        assert_eq!(report["uri"], "/h2/echo?x=1");
        assert_eq!(report["body_bytes"], 7);
        assert_eq!(report["body_sha256"], sha256_hex(b"over h2"));
    }

    #[tokio::test]
    async fn malformed_request_gets_400_and_the_server_keeps_serving() {
        let server = start().await;
        let (_, response) = raw_exchange(server.addr, b"NOT AN HTTP REQUEST\0\xff\r\n\r\n").await;
        assert!(
            response.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&response)
        );

        let response = client()
            .get(format!("http://{}/small", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_an_in_flight_delay_request() {
        let server = start().await;
        let addr = server.addr;
        let started = Instant::now();
        let request = tokio::spawn(async move {
            let response = client()
                .get(format!("http://{addr}/delay/300"))
                .send()
                .await?;
            response.text().await
        });
        // Let the request reach the server before shutdown starts; the drain must then wait the rest of
        // the 300 ms instead of cutting the connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.stop.send(()).unwrap();

        let served = tokio::time::timeout(DRAIN_TIMEOUT, server.task)
            .await
            .unwrap()
            .unwrap();
        assert!(served.is_ok());
        // `serve` returned only after the in-flight request was answered.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(request.await.unwrap().unwrap(), "delayed");
        // The listener is closed once shutdown starts.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn graceful_shutdown_closes_websocket_sessions_with_going_away() {
        let server = start().await;
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .unwrap();
        socket.send(Message::text("before shutdown")).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text("before shutdown")
        );

        server.stop.send(()).unwrap();
        let Message::Close(Some(frame)) = socket.next().await.unwrap().unwrap() else {
            panic!("expected a close frame with a code");
        };
        assert_eq!(frame.code, CloseCode::Away);
        // The client completes the closing handshake; the server then finishes well before the deadline.
        while socket.next().await.is_some() {}
        let served = tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .unwrap()
            .unwrap();
        assert!(served.is_ok());
    }
}
