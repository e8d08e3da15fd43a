//! Metric names and handles, exported in the Prometheus text format on the admin listener.
//!
//! Labels are bounded: service names come from the configuration, status is a class (`2xx`), kinds are fixed
//! words. Never a path, a host from a request, or a user.

use std::sync::{Arc, OnceLock};

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
/// `portcullis_token_cache_entries` (gauge): tokens in the verified-token cache, read at each scrape.
pub const TOKEN_CACHE_ENTRIES: &str = "portcullis_token_cache_entries";
/// `portcullis_token_cache_bytes` (gauge): their estimated size, held under `auth.token_cache_mib`.
pub const TOKEN_CACHE_BYTES: &str = "portcullis_token_cache_bytes";
/// `portcullis_introspection_cache_entries` (gauge): introspection answers (opaque tokens) in their cache, read at
/// each scrape.
pub const INTROSPECTION_CACHE_ENTRIES: &str = "portcullis_introspection_cache_entries";
/// `portcullis_introspection_cache_bytes` (gauge): their estimated size, held under `auth.introspection_cache_mib`.
pub const INTROSPECTION_CACHE_BYTES: &str = "portcullis_introspection_cache_bytes";

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
    /// See [`TOKEN_CACHE_ENTRIES`].
    pub token_cache_entries: Gauge,
    /// See [`TOKEN_CACHE_BYTES`].
    pub token_cache_bytes: Gauge,
    /// See [`INTROSPECTION_CACHE_ENTRIES`].
    pub introspection_cache_entries: Gauge,
    /// See [`INTROSPECTION_CACHE_BYTES`].
    pub introspection_cache_bytes: Gauge,
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
        let token_cache_entries = Gauge::default();
        let token_cache_bytes = Gauge::default();
        let introspection_cache_entries = Gauge::default();
        let introspection_cache_bytes = Gauge::default();
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
        registry.register(
            TOKEN_CACHE_ENTRIES,
            "Tokens in the verified-token cache",
            token_cache_entries.clone(),
        );
        registry.register(
            TOKEN_CACHE_BYTES,
            "Estimated bytes of the verified-token cache (bounded by auth.token_cache_mib)",
            token_cache_bytes.clone(),
        );
        registry.register(
            INTROSPECTION_CACHE_ENTRIES,
            "Introspection answers (opaque tokens) in their cache",
            introspection_cache_entries.clone(),
        );
        registry.register(
            INTROSPECTION_CACHE_BYTES,
            "Estimated bytes of the introspection cache (bounded by auth.introspection_cache_mib)",
            introspection_cache_bytes.clone(),
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
            token_cache_entries,
            token_cache_bytes,
            introspection_cache_entries,
            introspection_cache_bytes,
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

/// One service's series, found in the families the first time each is needed and kept: a request of a known
/// service then counts itself without hashing its labels and taking a family's lock. A series appears in the
/// exposition only once it has been used, as with `get_or_create`.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    duration: OnceLock<Histogram>,
    /// By status class, `1xx` first.
    requests: [OnceLock<Counter>; 5],
    /// By [`DECISION_KINDS`].
    decisions: [OnceLock<Counter>; DECISION_KINDS.len()],
}

/// How a routed request's authorization ended: the `kind` label of [`AUTH_DECISIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// An identity was established and allowed.
    Allow,
    /// A bypass service: no identity needed.
    Anonymous,
    /// No or invalid credentials (401).
    Unauthenticated,
    /// Authenticated but not allowed (403).
    Forbidden,
    /// A malformed credential (400).
    BadRequest,
    /// The decision could not be made (store or issuer down).
    Error,
}

/// The label of each [`DecisionKind`], in declaration order.
const DECISION_KINDS: [&str; 6] = [
    "allow",
    "anonymous",
    "unauthenticated",
    "forbidden",
    "bad_request",
    "error",
];
// One label per kind: `DecisionKind as usize` indexes this array (and `ServiceMetrics::decisions`).
const _: () = assert!(DECISION_KINDS.len() == DecisionKind::Error as usize + 1);

impl ServiceMetrics {
    /// [`HTTP_REQUEST_DURATION`] of `service`.
    pub fn duration(&self, metrics: &Metrics, service: &Arc<str>) -> &Histogram {
        self.duration.get_or_init(|| {
            metrics
                .duration
                .get_or_create(&ServiceLabels {
                    service: ServiceLabel(Arc::clone(service)),
                })
                .clone()
        })
    }

    /// [`HTTP_REQUESTS`] of `service` with `status`'s class.
    pub fn requests(
        &self,
        metrics: &Metrics,
        service: &Arc<str>,
        status: http::StatusCode,
    ) -> &Counter {
        let class = status_class(status);
        let slot = match class {
            "1xx" => 0,
            "2xx" => 1,
            "3xx" => 2,
            "4xx" => 3,
            _ => 4,
        };
        self.requests[slot].get_or_init(|| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    service: ServiceLabel(Arc::clone(service)),
                    status: class,
                })
                .clone()
        })
    }

    /// [`AUTH_DECISIONS`] of `service` for `kind`.
    pub fn decision(&self, metrics: &Metrics, service: &Arc<str>, kind: DecisionKind) -> &Counter {
        let slot = kind as usize;
        self.decisions[slot].get_or_init(|| {
            metrics
                .auth_decisions
                .get_or_create(&ServiceKindLabels {
                    service: ServiceLabel(Arc::clone(service)),
                    kind: DECISION_KINDS[slot],
                })
                .clone()
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_handles_count_in_the_same_series_as_the_families_and_add_none_unused() {
        let metrics = Metrics::new();
        let service: Arc<str> = Arc::from("web");
        let cached = ServiceMetrics::default();
        cached
            .requests(&metrics, &service, http::StatusCode::OK)
            .inc();
        cached
            .requests(&metrics, &service, http::StatusCode::NO_CONTENT)
            .inc();
        cached
            .requests(&metrics, &service, http::StatusCode::BAD_GATEWAY)
            .inc();
        cached
            .decision(&metrics, &service, DecisionKind::Allow)
            .inc();
        cached.duration(&metrics, &service).observe(0.01);
        // A lookup by label finds the series the handles counted in.
        let by_label = metrics
            .requests
            .get_or_create(&RequestLabels {
                service: ServiceLabel(Arc::clone(&service)),
                status: "2xx",
            })
            .get();
        assert_eq!(by_label, 2);
        let text = metrics.encode();
        assert!(
            text.contains(r#"portcullis_http_requests_total{service="web",status="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_auth_decisions_total{service="web",kind="allow"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"portcullis_http_request_duration_seconds_count{service="web"} 1"#));
        // Classes and kinds never used have no series.
        assert!(!text.contains(r#"status="4xx""#), "{text}");
        assert!(!text.contains(r#"kind="forbidden""#), "{text}");
    }
}
