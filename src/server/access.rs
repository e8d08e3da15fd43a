//! The response body wrapper that closes a request: it counts the bytes sent and, when the body is finished or
//! dropped, emits the one access-log event and the request metrics.
//!
//! It must not buffer or delay frames; it only observes them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

use crate::metrics::{
    status_class, Metrics, RequestLabels, ServiceLabel, ServiceLabels, ServiceMetrics,
};
use crate::proxy::UpstreamBody;

/// A response body: streamed from an upstream, or generated here.
pub(crate) type InnerBody = Either<UpstreamBody, Full<Bytes>>;

/// What the access-log event says about a request.
#[derive(Debug)]
pub(crate) struct AccessRecord {
    /// Method.
    pub(crate) method: http::Method,
    /// Host as normalized, or as received when invalid.
    pub(crate) host: Box<str>,
    /// Path without query.
    pub(crate) path: Box<str>,
    /// Response status.
    pub(crate) status: http::StatusCode,
    /// Service name, `-` when none matched.
    pub(crate) service: Arc<str>,
    /// Upstream, when the request was forwarded.
    pub(crate) upstream: Option<Arc<str>>,
    /// Request id.
    pub(crate) request_id: http::HeaderValue,
    /// Client address.
    pub(crate) client: std::net::SocketAddr,
    /// Why the request failed, when it did.
    pub(crate) error: Option<&'static str>,
    /// Start of the request.
    pub(crate) start: Instant,
    /// The matched service's series (`None`: looked up by label in the families).
    pub(crate) metrics: Option<Arc<ServiceMetrics>>,
}

pin_project_lite::pin_project! {
    /// A body that logs the request when it ends.
    pub(crate) struct LoggedBody {
        #[pin]
        inner: InnerBody,
        bytes: u64,
        record: Option<Box<AccessRecord>>,
        metrics: Option<Arc<crate::state::Shared>>,
    }
    impl PinnedDrop for LoggedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(record), Some(shared)) = (this.record.take(), this.metrics.as_ref()) {
                finish(&record, *this.bytes, &shared.metrics);
            }
        }
    }
}

impl LoggedBody {
    /// Wraps a body; the record is logged when the body ends.
    pub(crate) fn new(
        inner: InnerBody,
        record: AccessRecord,
        shared: Arc<crate::state::Shared>,
    ) -> Self {
        let secs = record.start.elapsed().as_secs_f64();
        match &record.metrics {
            Some(m) => m.duration(&shared.metrics, &record.service).observe(secs),
            None => shared
                .metrics
                .duration
                .get_or_create(&ServiceLabels {
                    service: ServiceLabel(Arc::clone(&record.service)),
                })
                .observe(secs),
        }
        Self {
            inner,
            bytes: 0,
            record: Some(Box::new(record)),
            metrics: Some(shared),
        }
    }
}

fn finish(r: &AccessRecord, bytes: u64, metrics: &Metrics) {
    match &r.metrics {
        Some(m) => m.requests(metrics, &r.service, r.status).inc(),
        None => metrics
            .requests
            .get_or_create(&RequestLabels {
                service: ServiceLabel(Arc::clone(&r.service)),
                status: status_class(r.status),
            })
            .inc(),
    };
    tracing::info!(
        http.method = %r.method,
        http.host = %r.host,
        http.path = %r.path,
        http.status = r.status.as_u16(),
        http.bytes = bytes,
        duration_ms = r.start.elapsed().as_secs_f64() * 1000.0,
        route.name = %r.service,
        upstream = r.upstream.as_deref().unwrap_or("-"),
        request.id = r.request_id.to_str().unwrap_or("-"),
        client.addr = %r.client,
        error = r.error.unwrap_or("-"),
        "request"
    );
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                *this.bytes += data.len() as u64;
            }
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
