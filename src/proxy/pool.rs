//! Keep-alive HTTP/1.1 connections to one upstream: connect (plain or TLS), reuse, retire.
//!
//! Each upstream gets one [`UpstreamPool`], found once when the configuration is built, so a request reaches its
//! idle connections without hashing a pool key. A connection is taken back when its response body has been read
//! to the end, by the body itself ([`UpstreamBody`]): no task is spawned per request to wait for it. Idle
//! connections are reused last-in first-out (the warmest first) and retired after [`POOL_IDLE`]. A request that
//! meets a reused connection the upstream has just closed is sent again on another one, as long as none of it was
//! written (RFC 9110 §9.2.2 allows more, but nothing here relies on idempotency).
//!
//! Nothing here looks at the request beyond sending it; `proxy` prepares it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::SentBody;

/// How long an idle upstream connection is kept.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; more are closed when their response ends.
const POOL_MAX_IDLE: usize = 512;
/// The default of `services.NAME.upstream_read_buffer_kib`.
pub const DEFAULT_READ_BUFFER_KIB: u32 = 32;

/// The connector: DNS, TCP (connect timeout, `TCP_NODELAY`, keep-alive) and, for `https` upstreams, TLS.
pub(super) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A boxed error from the connector.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request could not be exchanged with the upstream.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made.
    Connect(ConnectError),
    /// The connection failed while the request was sent or the response awaited.
    Exchange(hyper::Error),
}

/// One upstream's connections. Cheap to clone (shared).
#[derive(Clone)]
pub struct UpstreamPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("upstream", &self.inner.dst)
            .field("read_buffer", &self.inner.read_buffer)
            .field("idle", &self.idle_count())
            .finish()
    }
}

struct PoolInner {
    connector: Connector,
    /// `scheme://authority/`, what the connector dials.
    dst: Uri,
    /// The `Host` header sent when the client's is not preserved.
    host: HeaderValue,
    /// Bytes read from the upstream at a time, and the largest response head accepted.
    read_buffer: usize,
    /// Oldest first; requests take from the back.
    idle: Mutex<Vec<Idle>>,
    reaper: AtomicBool,
}

struct Idle {
    sender: SendRequest<SentBody>,
    since: Instant,
}

/// The pools made by one configuration build, one per upstream.
#[derive(Default)]
pub(super) struct Registry {
    pools: Mutex<HashMap<String, UpstreamPool>>,
}

impl Registry {
    /// The pool for `scheme://authority` read `read_buffer` bytes at a time, made on first use.
    pub(super) fn get(
        &self,
        connector: &Connector,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
        read_buffer: usize,
    ) -> UpstreamPool {
        let key = format!("{scheme}://{authority} {read_buffer}");
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .entry(key)
            .or_insert_with(|| UpstreamPool::new(connector.clone(), scheme, authority, read_buffer))
            .clone()
    }
}

impl UpstreamPool {
    fn new(
        connector: Connector,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
        read_buffer: usize,
    ) -> Self {
        let dst = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(PoolInner {
                connector,
                host: host_header(scheme, authority),
                dst,
                read_buffer,
                idle: Mutex::new(Vec::new()),
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// The `Host` header for this upstream: the authority, without the scheme's default port (RFC 9110 §7.2).
    pub(super) fn host(&self) -> &HeaderValue {
        &self.inner.host
    }

    /// The read buffer size in bytes: the largest response head this pool's connections accept.
    pub fn read_buffer(&self) -> usize {
        self.inner.read_buffer
    }

    /// Idle connections now (for tests and `Debug`).
    pub fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one.
    pub(super) async fn send(
        &self,
        mut req: Request<SentBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                // Boxed: connecting is rare, and its future would otherwise widen every request's.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Closed by the upstream while idle, before any of the request was written: another one.
                    Some(back) if reused => {
                        tracing::debug!(upstream = %self.inner.dst, error = %e.error(), "idle upstream connection was closed; retrying on another");
                        req = back;
                    }
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that can take a request now. A connection whose last response
    /// ended a moment ago but whose task has not yet seen it is left for the next request.
    fn take_idle(&self) -> Option<SendRequest<SentBody>> {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.sender.is_closed() || now.duration_since(entry.since) >= POOL_IDLE {
                idle.remove(i);
            } else if entry.sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
        }
        None
    }

    fn put_back(inner: &PoolInner, sender: SendRequest<SentBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<SentBody>, SendError> {
        let mut connector = self.inner.connector.clone();
        let io = tower_service::Service::call(&mut connector, self.inner.dst.clone())
            .await
            .map_err(SendError::Connect)?;
        // A fixed read size instead of hyper's adaptive one: the adaptive buffer grows to 64 KiB and more, and
        // since every body chunk handed on shares the allocation it was read into, a new buffer is made while
        // HTTP/2 streams still queue chunks of the old one. Exact reads keep memory per connection bounded. hyper
        // also takes this size as the largest response head, which `proxy` reports with the setting to raise.
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .read_buf_exact_size(Some(self.inner.read_buffer))
            .handshake(io)
            .await
            .map_err(SendError::Exchange)?;
        let dst = self.inner.dst.clone();
        // The connection's own task reads and writes the socket; it ends when the connection closes or, after a
        // 101, hands the socket to the upgrade.
        hyper::rt::Executor::execute(&TokioExecutor::new(), async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %dst, error = %e, "upstream connection ended with an error");
            }
        });
        self.start_reaper();
        Ok(sender)
    }

    /// Retires connections idle for longer than [`POOL_IDLE`] even when no request comes to notice; the task
    /// ends with the pool (a reload that drops the upstream drops its connections).
    fn start_reaper(&self) {
        if self.inner.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<PoolInner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POOL_IDLE / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                inner
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|e| !e.sender.is_closed() && now.duration_since(e.since) < POOL_IDLE);
            }
        });
    }

    fn wrap(
        &self,
        resp: Response<Incoming>,
        sender: SendRequest<SentBody>,
    ) -> Response<UpstreamBody> {
        // After a 101 the connection belongs to the upgrade; otherwise it is reusable once the body has ended.
        let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = resp.into_parts();
        let mut body = UpstreamBody {
            inner: body,
            back: reusable.then(|| (Arc::clone(&self.inner), sender)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }
}

fn host_header(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> HeaderValue {
    let default_port = if *scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let text = match authority.port_u16() {
        Some(p) if p != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// An upstream response body; gives its connection back to the pool once it has been read to the end.
///
/// Dropped before the end (the client went away), the connection is closed rather than reused: hyper cannot
/// reuse it with part of a response unread.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Arc<PoolInner>, SendRequest<SentBody>)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some((pool, sender)) = self.back.take() {
            UpstreamPool::put_back(&pool, sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // The connection is broken: hyper closes it; never pooled again.
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
