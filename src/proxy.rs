//! Forwarding a permitted request to its upstream and the response back: hop-by-hop stripping, `X-Forwarded-*`,
//! identity headers, upgrades (WebSocket) and streaming bodies with backpressure.
//!
//! Nothing here decides who may pass: [`forward`] takes the [`Permit`] that only `auth` can make. Bodies are never
//! buffered; hyper's flow control carries backpressure from the slower side to the faster one.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::auth::{apply_identity, Permit};
use crate::config::snapshot::{Route, Upstream};
use crate::tls::TlsError;

mod pool;

pub use pool::{ConnectError, UpstreamBody, UpstreamPool, DEFAULT_READ_BUFFER_KIB};

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream refused or could not be reached.
    #[error("cannot connect to upstream {upstream}")]
    Connect {
        /// The upstream.
        upstream: String,
        /// The cause.
        #[source]
        source: ConnectError,
    },
    /// Connecting took longer than `server.timeouts.upstream_connect_secs`.
    #[error("connecting to upstream {upstream} timed out (server.timeouts.upstream_connect_secs)")]
    ConnectTimeout {
        /// The upstream.
        upstream: String,
    },
    /// The upstream sent no response headers in time.
    #[error("upstream {upstream} sent no response within {}s (server.timeouts.upstream_response_secs)", after.as_secs())]
    ResponseTimeout {
        /// The upstream.
        upstream: String,
        /// The timeout.
        after: Duration,
    },
    /// The client stopped sending its request body.
    #[error("the client sent nothing of its request body for {}s (server.timeouts.idle_secs)", after.as_secs())]
    BodyStalled {
        /// The timeout.
        after: Duration,
    },
    /// The upstream stopped reading the request body.
    #[error("upstream {upstream} read nothing of the request body for {}s (server.timeouts.idle_secs)", after.as_secs())]
    UpstreamNotReading {
        /// The upstream.
        upstream: String,
        /// The timeout.
        after: Duration,
    },
    /// The upstream's response head (status line and headers) did not fit the read buffer.
    #[error("upstream {upstream} sent response headers larger than {limit_kib} KiB; raise services.{service}.upstream_read_buffer_kib")]
    HeadersTooLarge {
        /// The upstream.
        upstream: String,
        /// The service whose setting sets the limit.
        service: String,
        /// The limit.
        limit_kib: usize,
    },
    /// The exchange failed after connecting.
    #[error("upstream {upstream} failed")]
    Exchange {
        /// The upstream.
        upstream: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
}

impl ProxyError {
    /// A fixed word for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } => "connect",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::ResponseTimeout { .. } => "timeout",
            ProxyError::BodyStalled { .. } => "client_body_timeout",
            ProxyError::UpstreamNotReading { .. } => "upstream_body_timeout",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::Exchange { .. } => "exchange",
        }
    }
}

/// Makes upstream connections (plain, or TLS with the configured CAs) and hands out one keep-alive pool per
/// upstream; routes to the same upstream share its pool.
#[derive(Clone)]
pub struct UpstreamClient {
    connector: pool::Connector,
    pools: Arc<pool::Registry>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamClient")
    }
}

impl UpstreamClient {
    /// Builds a client; `ca_file` adds CAs trusted for HTTPS upstreams.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate.
    pub fn new(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let mut tls = crate::tls::client_config(ca_file)?;
        // hyper-rustls sets ALPN itself from the enabled HTTP versions.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            connector,
            pools: Arc::default(),
        })
    }

    /// The connection pool for `upstream`, reading `read_buffer_kib` KiB at a time (made once per configuration
    /// build, then shared by the routes to the same upstream with the same buffer size).
    pub fn pool(&self, upstream: &Upstream, read_buffer_kib: u32) -> UpstreamPool {
        self.pools.get(
            &self.connector,
            &upstream.scheme,
            &upstream.authority,
            read_buffer_kib as usize * 1024,
        )
    }
}

/// Headers that describe one hop and never cross a proxy (RFC 9110 §7.6.1), plus the legacy ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `Forwarded` (RFC 7239).
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers, including every header named in `Connection` (RFC 9110 §7.6.1).
///
/// Returns the `Upgrade` value when the message asks for a protocol upgrade, so the caller can keep it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // Most messages carry none of these: one pass over the names is cheaper than a hashed removal per name.
    if !headers
        .keys()
        .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return None;
    }
    let mut upgrade = false;
    let up = headers.remove(header::UPGRADE);
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| {
                let t = t.trim();
                if t.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                }
                HeaderName::from_bytes(t.as_bytes()).ok()
            })
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        up
    } else {
        None
    }
}

/// What the connection knows about the client.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer's address.
    pub ip: IpAddr,
    /// `ip` as a header value, made once per connection ([`ip_header_value`]).
    pub ip_header: HeaderValue,
    /// Whether that peer is a trusted proxy.
    pub trusted: bool,
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP` and `X-Request-Id` (RFC 7239 semantics, de-facto
/// header names). Values from untrusted peers are replaced, never appended to.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: Peer,
    host: &HeaderValue,
    request_id: &HeaderValue,
) {
    let ip = peer.ip_header;
    if peer.trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let xff = if prior.is_empty() {
            ip.clone()
        } else {
            let joined = format!("{}, {}", prior.join(", "), peer.ip);
            HeaderValue::from_str(&joined).unwrap_or_else(|_| ip.clone())
        };
        headers.insert(X_FORWARDED_FOR, xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(X_REAL_IP, ip);
        }
    } else {
        headers.remove(FORWARDED);
        headers.insert(X_FORWARDED_FOR, ip.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(X_REAL_IP, ip);
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// The address as a header value, formatted on the stack (one allocation, for the value itself).
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    // The longest text form of an IPv6 address with an embedded IPv4 one is 45 bytes.
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    if write!(w, "{ip}").is_err() {
        return HeaderValue::from_static("unknown");
    }
    let len = 64 - w.len();
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Makes the request an upstream request and sends it; the response comes back with hop-by-hop headers removed.
///
/// `host` is the Host the client addressed (with port, as received). An HTTP/1.1 upgrade (WebSocket) is tunnelled
/// both ways once the upstream answers 101; the tunnel task runs on `tunnels` so a shutdown can drain it.
///
/// # Errors
/// The upstream could not be reached or did not answer in time.
pub async fn forward(
    mut req: Request<Incoming>,
    route: &Route,
    permit: &Permit,
    peer: Peer,
    host: &HeaderValue,
    request_id: &HeaderValue,
    tunnels: &tokio_util::task::TaskTracker,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let client_h2 = req.version() == Version::HTTP_2;
    let client_upgrade = {
        let headers = req.headers_mut();
        let upgrade = strip_hop_by_hop(headers);
        apply_identity(&route.policy, permit, headers);
        set_forwarding_headers(headers, peer, host, request_id);
        if route.preserve_host {
            headers.insert(header::HOST, host.clone());
        }
        upgrade
    };
    let h2_websocket = is_h2_websocket(&req);
    let on_upgrade = match &client_upgrade {
        Some(proto) if req.version() == Version::HTTP_11 => {
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
            Some(hyper::upgrade::on(&mut req))
        }
        _ if h2_websocket => {
            // RFC 8441 §5: an HTTP/2 extended CONNECT becomes the HTTP/1.1 upgrade of RFC 6455 §4.1 towards
            // the upstream. The client sends no Sec-WebSocket-Key over HTTP/2, so one is made here.
            let on = hyper::upgrade::on(&mut req);
            req.extensions_mut().remove::<hyper::ext::Protocol>();
            *req.method_mut() = http::Method::GET;
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(key) = HeaderValue::from_str(
                &tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            ) {
                headers.insert(header::SEC_WEBSOCKET_KEY, key);
            }
            if !headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Some(on)
        }
        _ => None,
    };
    // Origin-form (RFC 9112 §3.2.1): the client's path and query as parsed (a shared buffer, not a copy).
    *req.uri_mut() = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
        .into();
    *req.version_mut() = Version::HTTP_11;
    let pool = &route.pool;
    if !route.preserve_host {
        req.headers_mut().insert(header::HOST, pool.host().clone());
    }

    let upstream = || route.upstream.to_string();
    let progress = Arc::new(BodyProgress::new());
    let req = req.map(|body| SentBody::new(body, Arc::clone(&progress)));
    let exchange = pool.send(req);
    // The response timeout runs from the end of the request body, so a long upload is not cut short while it
    // streams; a body that stops arriving is cut after the idle timeout (the connection's own idle check only
    // closes gracefully, and would wait for this request for ever).
    let deadline = async {
        progress.sent.notified().await;
        tokio::time::sleep(route.response_timeout).await;
    };
    let stalled = progress.stalled(route.body_idle_timeout);
    let outcome = tokio::select! {
        r = exchange => Ok(r),
        () = deadline => Err(ProxyError::ResponseTimeout {
            upstream: upstream(),
            after: route.response_timeout,
        }),
        () = stalled => Err(if progress.waiting_on_client.load(Ordering::Relaxed) {
            ProxyError::BodyStalled {
                after: route.body_idle_timeout,
            }
        } else {
            ProxyError::UpstreamNotReading {
                upstream: upstream(),
                after: route.body_idle_timeout,
            }
        }),
    };
    let mut resp = match outcome? {
        Err(pool::SendError::Connect(e)) => {
            return Err(if is_timeout(&*e) {
                ProxyError::ConnectTimeout {
                    upstream: upstream(),
                }
            } else {
                ProxyError::Connect {
                    upstream: upstream(),
                    source: e,
                }
            })
        }
        Err(pool::SendError::Exchange(e)) if e.is_parse_too_large() => {
            return Err(ProxyError::HeadersTooLarge {
                upstream: upstream(),
                service: route.name.clone(),
                limit_kib: pool.read_buffer() / 1024,
            })
        }
        Err(pool::SendError::Exchange(e)) => {
            return Err(ProxyError::Exchange {
                upstream: upstream(),
                source: e,
            })
        }
        Ok(resp) => resp,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = on_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            let name = route.name.clone();
            tunnels.spawn(async move {
                match tokio::try_join!(client_side, upstream_side) {
                    Ok((client_io, upstream_io)) => {
                        let mut a = TokioIo::new(client_io);
                        let mut b = TokioIo::new(upstream_io);
                        match tokio::io::copy_bidirectional(&mut a, &mut b).await {
                            Ok((up, down)) => tracing::debug!(route.name = %name, tunnel.bytes_up = up, tunnel.bytes_down = down, "upgraded connection closed"),
                            Err(e) => tracing::debug!(route.name = %name, error = %e, "upgraded connection ended with an error"),
                        }
                    }
                    Err(e) => tracing::info!(route.name = %name, error = %e, "upgrade failed"),
                }
            });
            let proto = resp.headers_mut().remove(header::UPGRADE);
            strip_hop_by_hop(resp.headers_mut());
            if h2_websocket {
                // RFC 8441 §5: success of an extended CONNECT is a 2xx, without the HTTP/1.1 accept key.
                *resp.status_mut() = StatusCode::OK;
                resp.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
                prepare_for_hpack(resp.headers_mut());
            } else if let Some(p) = proto {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                resp.headers_mut().insert(header::UPGRADE, p);
            }
            return Ok(resp);
        }
    }
    strip_hop_by_hop(resp.headers_mut());
    if client_h2 {
        prepare_for_hpack(resp.headers_mut());
    }
    Ok(resp)
}

/// Readies an upstream's response headers for an HTTP/2 client's HPACK encoder (h2 0.4), which keeps the values
/// it indexes for as long as they stay in the connection's table.
///
/// - hyper parses an HTTP/1.1 upstream's header values as slices of the buffer it read them into (32 KiB by
///   default, `upstream_read_buffer_kib`), so a value in the table keeps that whole buffer alive. Values the table
///   may keep are copied into one small buffer per response.
/// - `Date` and `Expires` change every second, and an upstream's own `X-Request-Id` (kept on successful responses
///   with `server.response_request_id = "errors"`) on every response: they are marked never-indexed (RFC 7541
///   §6.2.3), as the gateway's `X-Request-Id` is. Indexed, each new value is added to the table and compared, before
///   that, with every value kept under its name, oldest first; the table fills with them and evicts the values
///   worth keeping.
///
/// Measured under h2load (32 connections, 60 s): with `X-Request-Id` never-indexed and values not copied, resident
/// memory grew by about 1.4 MiB every 10 s; with this, it stays flat.
pub fn prepare_for_hpack(headers: &mut HeaderMap) {
    let total: usize = headers.values().map(HeaderValue::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for (name, value) in headers.iter_mut() {
        if value.is_sensitive() || not_kept_by_hpack(name) {
            continue;
        }
        if name == header::DATE || name == header::EXPIRES || name == X_REQUEST_ID {
            value.set_sensitive(true);
            continue;
        }
        buf.extend_from_slice(value.as_bytes());
        // The bytes were a valid value a moment ago; should that ever fail, the original stays.
        if let Ok(copy) = HeaderValue::from_maybe_shared(buf.split().freeze()) {
            *value = copy;
        }
    }
}

/// Headers whose values h2 0.4 never adds to its HPACK table (`Header::skip_value_index`).
fn not_kept_by_hpack(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::AGE
            | header::AUTHORIZATION
            | header::CONTENT_LENGTH
            | header::ETAG
            | header::IF_MODIFIED_SINCE
            | header::IF_NONE_MATCH
            | header::LOCATION
            | header::COOKIE
            | header::SET_COOKIE
    )
}

/// An HTTP/2 extended CONNECT for the `websocket` protocol (RFC 8441 §4).
pub fn is_h2_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// How far the client's request body has gone upstream: shared by [`SentBody`], polled by the upstream
/// connection's task, and the request's future, which times it.
struct BodyProgress {
    /// Notified once the body has been sent completely (or failed).
    sent: Notify,
    /// Whether it has.
    done: AtomicBool,
    /// When the last frame came (or the body started), in milliseconds since [`BODY_EPOCH`].
    last: AtomicU64,
    /// Whether the body was last polled for a frame the client has not sent yet (else the upstream is not reading
    /// it: a stall is then the upstream's).
    waiting_on_client: AtomicBool,
}

/// The origin of [`BodyProgress`]'s times, so that a request without a body reads no clock for them.
static BODY_EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn body_clock() -> Duration {
    BODY_EPOCH.elapsed()
}

impl BodyProgress {
    fn new() -> Self {
        Self {
            sent: Notify::new(),
            done: AtomicBool::new(false),
            last: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        // `notify_one` keeps a permit, so a waiter that comes later still wakes.
        self.sent.notify_one();
    }

    /// A frame came: the body is moving, and the client is not being waited for.
    fn frame(&self) {
        self.last
            .store(body_clock().as_millis() as u64, Ordering::Relaxed);
        self.waiting_on_client.store(false, Ordering::Relaxed);
    }

    /// Completes once the body has sent nothing for `idle`; never for a body that has been sent.
    async fn stalled(&self, idle: Duration) {
        let check = crate::config::snapshot::idle_check_every(idle);
        if !self.done.load(Ordering::Acquire) {
            // The body starts now: a stall counts from here until its first frame.
            let _ = self.last.compare_exchange(
                0,
                body_clock().as_millis() as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        while !self.done.load(Ordering::Acquire) {
            let quiet = body_clock()
                .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(check.min(idle - quiet)).await;
        }
        std::future::pending::<()>().await;
    }
}

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream; tells when it has been sent completely, and when each frame
    /// came.
    pub struct SentBody {
        #[pin]
        inner: Incoming,
        progress: Option<Arc<BodyProgress>>,
    }
}

impl SentBody {
    fn new(inner: Incoming, progress: Arc<BodyProgress>) -> Self {
        if http_body::Body::is_end_stream(&inner) {
            progress.finish();
            return Self {
                inner,
                progress: None,
            };
        }
        Self {
            inner,
            progress: Some(progress),
        }
    }
}

impl http_body::Body for SentBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_))) => {
                if let Some(progress) = this.progress.take() {
                    progress.finish();
                }
            }
            std::task::Poll::Ready(Some(Ok(_))) => {
                if let Some(progress) = this.progress {
                    progress.frame();
                }
            }
            std::task::Poll::Pending => {
                if let Some(progress) = this.progress {
                    progress.waiting_on_client.store(true, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if s.to_string().contains("timed out") {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_preparation_copies_kept_values_and_never_indexes_per_response_ones() {
        // Values as hyper parses them: slices of one read buffer.
        let read = bytes::Bytes::from_static(b"text/plainabcThu, 03 Dec 2026 17:30:16 GMT2");
        let slice = |a: usize, b: usize| HeaderValue::from_maybe_shared(read.slice(a..b)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, slice(0, 10));
        h.append("x-app", slice(10, 13));
        h.append("x-app", slice(10, 12));
        h.insert(header::DATE, slice(13, 42));
        h.insert(header::CONTENT_LENGTH, slice(42, 43));
        h.insert(X_REQUEST_ID, slice(10, 13));
        prepare_for_hpack(&mut h);
        let inside = |v: &HeaderValue| read.as_ptr_range().contains(&v.as_bytes().as_ptr());
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert!(
            !inside(&h[header::CONTENT_TYPE]),
            "an indexable value is copied"
        );
        let app: Vec<_> = h.get_all("x-app").iter().collect();
        assert_eq!(app, ["abc", "ab"]);
        assert!(app.iter().all(|v| !inside(v) && !v.is_sensitive()));
        assert!(h[header::DATE].is_sensitive(), "Date is never indexed");
        assert_eq!(h[header::DATE], "Thu, 03 Dec 2026 17:30:16 GMT");
        assert_eq!(h[header::CONTENT_LENGTH], "2");
        assert!(!h[header::CONTENT_TYPE].is_sensitive());
        assert!(
            h[X_REQUEST_ID].is_sensitive(),
            "an upstream's request id is never indexed"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Remote-User"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("remote-user", HeaderValue::from_static("admin"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(
            strip_hop_by_hop(&mut h),
            None,
            "upgrade not requested in Connection"
        );
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn upgrade_is_reported_when_connection_asks_for_it() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            strip_hop_by_hop(&mut h),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn forwarding_headers_from_untrusted_peer_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.test"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let peer = Peer {
            ip,
            ip_header: ip_header_value(ip),
            trusted: false,
        };
        set_forwarding_headers(
            &mut h,
            peer,
            &HeaderValue::from_static("app.test"),
            &HeaderValue::from_static("rid"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.test");
        assert_eq!(h[&X_REAL_IP], "10.0.0.9");
        assert!(!h.contains_key("forwarded"));
        assert_eq!(h[&X_REQUEST_ID], "rid");
    }

    #[test]
    fn forwarding_headers_from_trusted_peer_are_appended() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let peer = Peer {
            ip,
            ip_header: ip_header_value(ip),
            trusted: true,
        };
        set_forwarding_headers(
            &mut h,
            peer,
            &HeaderValue::from_static("app.test"),
            &HeaderValue::from_static("rid"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.test");
    }
}
