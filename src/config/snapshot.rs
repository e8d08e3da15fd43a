//! The immutable runtime configuration: everything a request needs, built once by `validate`.
//!
//! A [`Snapshot`] is swapped in whole on reload (one `ArcSwap::store`), so routes, policies, certificates and
//! upstream clients always change together. Nothing here parses operator input or performs I/O.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::auth::{AuthSettings, ServicePolicy};
use crate::proxy::UpstreamPool;
use crate::router::{HostPattern, Router};
use crate::tls::CertStore;

/// The listener addresses. Not reloadable: a change needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs {
    /// HTTPS.
    pub https: SocketAddr,
    /// Plain HTTP (redirects to HTTPS).
    pub http: Option<SocketAddr>,
    /// Admin (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<SocketAddr>,
}

/// Peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From parsed networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Whether `ip` is in one of the trusted networks (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

/// Network timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TLS handshake.
    pub tls_handshake: Duration,
    /// Reading request headers.
    pub request_header: Duration,
    /// Connecting to an upstream.
    pub upstream_connect: Duration,
    /// Waiting for upstream response headers (default for services).
    pub upstream_response: Duration,
    /// Idle client connection.
    pub idle: Duration,
}

/// How often something timed by `server.timeouts.idle_secs` (a quiet connection, a stalled request body) checks
/// whether that long has passed: it acts at most this long late.
pub(crate) fn idle_check_every(idle: Duration) -> Duration {
    (idle / 4).max(Duration::from_millis(250))
}

/// Where certificates come from.
#[derive(Debug, Clone)]
pub struct TlsSource {
    /// The certificate directory.
    pub certs_dir: PathBuf,
    /// `tls::dir_fingerprint` of the directory as loaded (the watcher reloads when it changes).
    pub certs_fingerprint: u64,
    /// Certificate for clients without SNI.
    pub default_certificate: Option<String>,
    /// Whether a development CA issues a certificate for every host when none covers it.
    pub self_signed: bool,
    /// The development CA certificate, when `self_signed` made one.
    pub dev_ca: Option<PathBuf>,
    /// Automatic certificates, when `[tls.acme]` is set.
    pub acme: Option<crate::acme::AcmeSettings>,
}

/// Where a service's requests go.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
    /// Extra CAs for an `https` upstream.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// One service.
#[derive(Debug)]
pub struct Route {
    /// The `[services.NAME]` name.
    pub name: String,
    /// Host patterns.
    pub hosts: Vec<HostPattern>,
    /// Destination.
    pub upstream: Upstream,
    /// Who may reach it.
    pub policy: ServicePolicy,
    /// Forward the client's Host header.
    pub preserve_host: bool,
    /// Upstream response-header timeout.
    pub response_timeout: Duration,
    /// How long a request body may send nothing before the request is dropped (`server.timeouts.idle_secs`).
    pub body_idle_timeout: Duration,
    /// The keep-alive connections to `upstream` (shared with every route to the same upstream).
    pub pool: UpstreamPool,
    /// `name` as shared by every request's access record and metric labels (no per-request copy).
    pub name_label: std::sync::Arc<str>,
    /// `upstream` as written in the access log, made once.
    pub upstream_label: std::sync::Arc<str>,
    /// This service's metric series, kept once looked up.
    pub metrics: std::sync::Arc<crate::metrics::ServiceMetrics>,
}

/// `server.response_request_id`: which responses tell the client their `X-Request-Id`. The upstream always gets
/// it and the access log always names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseRequestId {
    /// Every response (the default).
    #[default]
    Always,
    /// Only responses with status 400 and above, the gateway's own errors and the upstream's alike; a successful
    /// response is then sent without it, which spares each one its bytes (and, over HTTP/2, an HPACK literal).
    Errors,
}

impl ResponseRequestId {
    /// Whether a response with this status carries the id.
    pub fn applies_to(self, status: http::StatusCode) -> bool {
        match self {
            ResponseRequestId::Always => true,
            ResponseRequestId::Errors => status.as_u16() >= 400,
        }
    }
}

/// The whole runtime configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The file it came from.
    pub source: PathBuf,
    /// First 16 hex digits of the file's SHA-256, logged on reload.
    pub hash: String,
    /// Root domain.
    pub domain: Option<String>,
    /// Listener addresses.
    pub listen: ListenAddrs,
    /// Peers whose `X-Forwarded-*` are believed.
    pub trusted_proxies: TrustedProxies,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Drain period on shutdown.
    pub shutdown_grace: Duration,
    /// Whether the file and certificate directory are polled for changes.
    pub watch: bool,
    /// Which responses carry `X-Request-Id` back to the client.
    pub response_request_id: ResponseRequestId,
    /// Certificate source settings.
    pub tls: TlsSource,
    /// Loaded certificates.
    pub certs: Arc<CertStore>,
    /// Issuers and JWKS settings.
    pub auth: AuthSettings,
    /// Address of the built-in echo backend, when the demo asks for it.
    pub demo_echo: Option<SocketAddr>,
    /// Hosts that serve only the forward-auth endpoints (`[forward_auth] hosts`).
    pub forward_auth_hosts: Vec<String>,
    /// Services in name order.
    pub routes: Vec<Arc<Route>>,
    /// Host lookup.
    pub router: Router<Route>,
}
