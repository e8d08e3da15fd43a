//! Metric names and handles, exported in the Prometheus text format on the admin listener.
//!
//! Labels are bounded: service names come from the configuration, status is a class (`2xx`), kinds are fixed
//! words. Never a path, a host from a request, or a user.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `portcullis_http_requests` (counter, `_total`): requests by service and status class.
pub const HTTP_REQUESTS: &str = "portcullis_http_requests";
/// `portcullis_http_request_duration_seconds` (histogram): time to response headers, by service.
pub const HTTP_REQUEST_DURATION: &str = "portcullis_http_request_duration_seconds";
/// `portcullis_upstream_errors` (counter, `_total`): failed upstream exchanges by service and kind.
pub const UPSTREAM_ERRORS: &str = "portcullis_upstream_errors";
/// `portcullis_open_connections` (gauge): client connections open, by listener.
pub const OPEN_CONNECTIONS: &str = "portcullis_open_connections";
/// `portcullis_config_reloads` (counter, `_total`): reload attempts by result.
pub const CONFIG_RELOADS: &str = "portcullis_config_reloads";
/// `portcullis_auth_decisions` (counter, `_total`): authorization decisions by service and decision.
pub const AUTH_DECISIONS: &str = "portcullis_auth_decisions";
/// `portcullis_acme_orders` (counter, `_total`): ACME certificate orders by result (`issued`, `failed`).
pub const ACME_ORDERS: &str = "portcullis_acme_orders";

/// A service name as a label value; `-` for requests that matched no service.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ServiceLabel(pub Arc<str>);

impl EncodeLabelValue for ServiceLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// Labels of [`HTTP_REQUESTS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Service.
    pub service: ServiceLabel,
    /// `1xx` .. `5xx`.
    pub status: &'static str,
}

/// Labels with only a service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service.
    pub service: ServiceLabel,
}

/// Labels with a service and a fixed kind word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceKindLabels {
    /// Service.
    pub service: ServiceLabel,
    /// A fixed word (`connect`, `timeout`, `allow`, `deny` ...).
    pub kind: &'static str,
}

/// Labels with one fixed word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// A fixed word.
    pub kind: &'static str,
}

/// Labels with one fixed outcome word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// A fixed word (`issued`, `failed`).
    pub result: &'static str,
}

/// All metric handles.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// See [`HTTP_REQUESTS`].
    pub requests: Family<RequestLabels, Counter>,
    /// See [`HTTP_REQUEST_DURATION`].
    pub duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    /// See [`UPSTREAM_ERRORS`].
    pub upstream_errors: Family<ServiceKindLabels, Counter>,
    /// See [`OPEN_CONNECTIONS`].
    pub open_connections: Family<KindLabels, Gauge>,
    /// See [`CONFIG_RELOADS`].
    pub reloads: Family<KindLabels, Counter>,
    /// See [`AUTH_DECISIONS`].
    pub auth_decisions: Family<ServiceKindLabels, Counter>,
    /// See [`ACME_ORDERS`].
    pub acme_orders: Family<ResultLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]
        .into_iter(),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        let duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_errors = Family::default();
        let open_connections = Family::default();
        let reloads = Family::default();
        let auth_decisions = Family::default();
        let acme_orders = Family::default();
        registry.register(
            HTTP_REQUESTS,
            "Requests by service and status class",
            requests.clone(),
        );
        registry.register(
            HTTP_REQUEST_DURATION,
            "Time to response headers by service",
            duration.clone(),
        );
        registry.register(
            UPSTREAM_ERRORS,
            "Failed upstream exchanges by service and kind",
            upstream_errors.clone(),
        );
        registry.register(
            OPEN_CONNECTIONS,
            "Open client connections by listener",
            open_connections.clone(),
        );
        registry.register(
            CONFIG_RELOADS,
            "Configuration reloads by result",
            reloads.clone(),
        );
        registry.register(
            AUTH_DECISIONS,
            "Authorization decisions by service and decision",
            auth_decisions.clone(),
        );
        registry.register(
            ACME_ORDERS,
            "ACME certificate orders by result",
            acme_orders.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            upstream_errors,
            open_connections,
            reloads,
            auth_decisions,
            acme_orders,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The class label of a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
