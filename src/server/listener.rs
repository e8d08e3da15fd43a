//! Sockets: binding the listeners, accepting, the TLS handshake under a timeout, and serving each connection
//! with hyper (HTTP/1.1 with upgrades, HTTP/2 by ALPN) until it ends, idles out or is drained.
//!
//! No request logic lives here; `handle` gets every request on the HTTPS listener.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::snapshot::ListenAddrs;
use crate::metrics::KindLabels;
use crate::state::Shared;
use crate::tls::CertEntry;

/// The bound sockets. Binding happens before `run`, so tests can bind port 0 and read the real ports.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS.
    pub https: TcpListener,
    /// Plain HTTP (redirects).
    pub http: Option<TcpListener>,
    /// Admin.
    pub admin: Option<TcpListener>,
}

/// The addresses actually bound.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// HTTPS.
    pub https: SocketAddr,
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    /// Binds every configured listener.
    ///
    /// # Errors
    /// An address is in use or not available; the error names the listener.
    pub async fn bind(addrs: &ListenAddrs) -> io::Result<Self> {
        let named = |what: &'static str, addr: SocketAddr| {
            move |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind the {what} listener on {addr} (server.{what}): {e}"),
                )
            }
        };
        let https = TcpListener::bind(addrs.https)
            .await
            .map_err(named("https", addrs.https))?;
        let http = match addrs.http {
            Some(a) => Some(TcpListener::bind(a).await.map_err(named("http", a))?),
            None => None,
        };
        let admin = match addrs.admin {
            Some(a) => Some(TcpListener::bind(a).await.map_err(named("admin", a))?),
            None => None,
        };
        Ok(Self { https, http, admin })
    }

    /// The bound addresses (real ports when port 0 was asked for).
    ///
    /// # Errors
    /// The OS cannot report a socket's address.
    pub fn local_addrs(&self) -> io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            https: self.https.local_addr()?,
            http: self
                .http
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            admin: self
                .admin
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
        })
    }
}

/// What a request knows about its connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) sni: Option<String>,
    /// The certificate presented in the handshake (for the 421 check).
    pub(crate) cert: Option<Arc<CertEntry>>,
    /// The peer's IP address as an `X-Forwarded-For`/`X-Real-IP` value, formatted once per connection.
    pub(crate) ip_header: http::HeaderValue,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, sni: Option<String>, cert: Option<Arc<CertEntry>>) -> Self {
        Self {
            peer,
            sni,
            cert,
            ip_header: crate::proxy::ip_header_value(peer.ip()),
        }
    }
}

/// Which service a plain listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plain {
    /// The HTTP-to-HTTPS redirector.
    Redirect,
    /// `/healthz`, `/readyz`, `/metrics`.
    Admin,
}

impl Plain {
    fn label(self) -> &'static str {
        match self {
            Plain::Redirect => "http",
            Plain::Admin => "admin",
        }
    }
}

/// Common per-run context of the accept loops.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: CancellationToken,
    pub(crate) conns: TaskTracker,
    pub(crate) https_port: u16,
}

/// How long after the idle check would have closed it a quiet HTTP/2 connection is first pinged.
const KEEP_ALIVE_AFTER_IDLE: Duration = Duration::from_secs(10);

/// The HTTP/1.1 settings, for hyper's own builder and for the protocol-detecting one alike.
macro_rules! http1_settings {
    ($b:expr, $snap:expr) => {
        $b.timer(TokioTimer::new())
            .header_read_timeout($snap.timeouts.request_header)
            .keep_alive(true)
    };
}

/// The HTTP/2 settings, for hyper's own builder and for the protocol-detecting one alike.
macro_rules! http2_settings {
    ($b:expr, $snap:expr) => {
        $b.timer(TokioTimer::new())
            // Pings find a dead peer on a connection with streams still open. They start only once the idle
            // check has had its chance: hyper pings idle connections too, and the peer's answers would count as
            // traffic, so an idle HTTP/2 client would never be closed (`server.timeouts.idle_secs`).
            .keep_alive_interval(Some(
                $snap.timeouts.idle
                    + crate::config::snapshot::idle_check_every($snap.timeouts.idle)
                    + KEEP_ALIVE_AFTER_IDLE,
            ))
            .max_concurrent_streams(256)
            // Large uploads: the 64 KiB default window would cap a stream at one window per round trip.
            .adaptive_window(true)
            // WebSockets over HTTP/2 (RFC 8441).
            .enable_connect_protocol()
    };
}

/// Which protocol a connection speaks, when the TLS handshake settled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// ALPN `http/1.1`.
    Http1,
    /// ALPN `h2`.
    Http2,
    /// No ALPN (or a plain listener): read the first bytes to tell an HTTP/2 preface from HTTP/1.1.
    Detect,
}

impl Protocol {
    fn of_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Detect,
        }
    }
}

/// Accepts TLS connections until stopped.
pub(crate) async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Ctx,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = ctx.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { accept_error(&e).await; continue; }
            },
        };
        let ctx2 = ctx.clone();
        let acceptor = acceptor.clone();
        ctx.conns.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake_timeout = ctx2.shared.snapshot.load().timeouts.tls_handshake;
            // The handshake's state and then the stream are boxed: the task's own future stays a few hundred bytes
            // instead of holding room for both for the connection's whole life.
            let tls = match tokio::time::timeout(handshake_timeout, Box::pin(acceptor.accept(tcp))).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    tracing::debug!(client.addr = %peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client.addr = %peer, "tls handshake timed out (server.timeouts.tls_handshake_secs)");
                    return;
                }
            };
            if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                // RFC 8737 §3: a validation handshake carries no application data; close it.
                tracing::debug!(client.addr = %peer, "tls-alpn-01 validation handshake answered");
                let mut tls = tls;
                let _ = tokio::time::timeout(handshake_timeout, tokio::io::AsyncWriteExt::shutdown(&mut tls)).await;
                return;
            }
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let cert = ctx2.shared.snapshot.load().certs.find(sni.as_deref());
            let info = Arc::new(ConnInfo::new(peer, sni, cert));
            let shared = Arc::clone(&ctx2.shared);
            let protocol = Protocol::of_alpn(tls.get_ref().1.alpn_protocol());
            if protocol == Protocol::Http2 {
                // hyper moves each HTTP/2 stream's future into a task of its own: boxed, the move is a pointer's
                // (callgrind: 2.6k fewer instructions per h2 request). HTTP/1.1 polls the future in place, where
                // the box would only add an allocation.
                let svc = service_fn(move |req| Box::pin(super::handle::handle(req, Arc::clone(&info), Arc::clone(&shared))));
                serve(tls, svc, &ctx2, "https", protocol).await;
            } else {
                let svc = service_fn(move |req| super::handle::handle(req, Arc::clone(&info), Arc::clone(&shared)));
                serve(tls, svc, &ctx2, "https", protocol).await;
            }
        });
    }
}

/// Serves one already-established connection (no TLS) with the gateway's request handler, as if it had arrived
/// on the HTTPS listener without SNI. For benchmarks and in-process embedding; it skips the certificate check.
pub async fn serve_gateway_connection<IO>(io: IO, peer: SocketAddr, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Ctx {
        shared: Arc::clone(&shared),
        stop: CancellationToken::new(),
        conns: TaskTracker::new(),
        https_port: 443,
    };
    let info = Arc::new(ConnInfo::new(peer, None, None));
    let svc =
        service_fn(move |req| super::handle::handle(req, Arc::clone(&info), Arc::clone(&shared)));
    serve(io, svc, &ctx, "https", Protocol::Detect).await;
}

/// Accepts plain-HTTP connections (redirector or admin) until stopped.
pub(crate) async fn accept_plain(listener: TcpListener, kind: Plain, ctx: Ctx) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = ctx.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { accept_error(&e).await; continue; }
            },
        };
        let ctx2 = ctx.clone();
        ctx.conns.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let shared = Arc::clone(&ctx2.shared);
            let port = ctx2.https_port;
            let svc = service_fn(move |req| {
                super::admin::handle(req, kind, peer, port, Arc::clone(&shared))
            });
            serve(tcp, svc, &ctx2, kind.label(), Protocol::Detect).await;
        });
    }
}

async fn accept_error(e: &io::Error) {
    tracing::warn!(error = %e, "accept failed");
    // Out of file descriptors and similar: back off instead of spinning.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serves one connection until it ends: with hyper's HTTP/1.1 or HTTP/2 connection when ALPN chose, else with
/// hyper-util's, which first reads enough to tell the two apart. Skipping that read matters for memory: its bytes
/// come back to hyper's HTTP/1.1 read buffer as a short first read, and the buffer's next reservation then doubles
/// it, 16 KiB instead of 8 for every connection. Each kind of connection is boxed at its own size, so the task
/// does not hold room for the largest of the three (or a second copy of the one it got) while the connection
/// lives: about 11 KiB less resident memory per idle HTTP/1.1 connection, 6 KiB per HTTP/2 one (README).
async fn serve<S, IO, B>(io: IO, svc: S, ctx: &Ctx, listener: &'static str, protocol: Protocol)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _open = OpenConn::new(&ctx.shared, listener);
    let snap = ctx.shared.snapshot.load_full();
    let idle = snap.timeouts.idle;
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(IdleIo {
        inner: io,
        last: Arc::clone(&last),
        epoch,
    });
    let watch = Watch {
        idle,
        epoch,
        last,
        ctx,
        listener,
    };
    match protocol {
        Protocol::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            http1_settings!(b, snap);
            let conn = b.serve_connection(io, svc).with_upgrades();
            drop(snap);
            watch.drive(Box::pin(conn), |c| c.graceful_shutdown()).await;
        }
        Protocol::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2_settings!(b, snap);
            let conn = b.serve_connection(io, svc);
            drop(snap);
            watch.drive(Box::pin(conn), |c| c.graceful_shutdown()).await;
        }
        Protocol::Detect => {
            let mut b = auto::Builder::new(TokioExecutor::new());
            http1_settings!(b.http1(), snap);
            http2_settings!(b.http2(), snap);
            drop(snap);
            let conn = b.serve_connection_with_upgrades(io, svc);
            watch.drive(Box::pin(conn), |c| c.graceful_shutdown()).await;
        }
    }
}

/// What ends a connection besides its peer: the gateway stopping, or no byte moved for `idle`.
struct Watch<'a> {
    idle: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte moved (`IdleIo`).
    last: Arc<AtomicU64>,
    ctx: &'a Ctx,
    listener: &'static str,
}

impl Watch<'_> {
    /// Polls a connection to its end, closing it gracefully when the gateway stops or the connection has been
    /// idle for `server.timeouts.idle_secs`.
    async fn drive<C, E>(&self, mut conn: Pin<Box<C>>, graceful: impl Fn(Pin<&mut C>))
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let check_every = crate::config::snapshot::idle_check_every(self.idle);
        let mut draining = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(listener = self.listener, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.ctx.stop.cancelled(), if !draining => {
                    graceful(conn.as_mut());
                    draining = true;
                }
                () = tokio::time::sleep(check_every), if !draining => {
                    let quiet = self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
                    if quiet >= self.idle {
                        // Graceful: a request still in flight finishes before the connection closes.
                        graceful(conn.as_mut());
                        draining = true;
                    }
                }
            }
        }
    }
}

/// Counts activity on a connection so idle ones can be closed.
struct IdleIo<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> IdleIo<T> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Gauge guard for open connections.
struct OpenConn<'a> {
    shared: &'a Shared,
    listener: &'static str,
}

impl<'a> OpenConn<'a> {
    fn new(shared: &'a Shared, listener: &'static str) -> Self {
        shared
            .metrics
            .open_connections
            .get_or_create(&KindLabels { kind: listener })
            .inc();
        Self { shared, listener }
    }
}

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.shared
            .metrics
            .open_connections
            .get_or_create(&KindLabels {
                kind: self.listener,
            })
            .dec();
    }
}
