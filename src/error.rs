//! The one place where a failed request becomes a response.
//!
//! Every error is classed client (4xx), upstream (502/504) or internal (500) by an exhaustive `match`, so a new
//! variant forces a decision. Bodies are short and fixed; the detail goes to the log, with the request id that the
//! page also shows.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::proxy::ProxyError;
use crate::router::HostError;

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Neither a Host header nor an authority.
    #[error("request has no host")]
    MissingHost,
    /// A Host that is not a host name.
    #[error(transparent)]
    BadHost(#[from] HostError),
    /// No service for this host.
    #[error("no service for host {host}")]
    UnknownHost {
        /// The host.
        host: String,
    },
    /// The certificate presented on this connection does not cover the requested host (RFC 9110 §15.5.20).
    #[error("host {host} is not covered by the certificate presented for SNI {sni:?}")]
    Misdirected {
        /// The host.
        host: String,
        /// The connection's SNI.
        sni: Option<String>,
    },
    /// A CONNECT that is not a WebSocket over HTTP/2: the gateway is not a forward proxy.
    #[error("method CONNECT is only accepted for WebSockets over HTTP/2 (RFC 8441)")]
    Connect,
    /// Authentication or authorization refused the request.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The upstream failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

impl RequestError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::MissingHost | RequestError::BadHost(_) => StatusCode::BAD_REQUEST,
            RequestError::UnknownHost { .. } => StatusCode::NOT_FOUND,
            RequestError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            RequestError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::Auth(e) => e.status(),
            RequestError::Proxy(e) => match e {
                ProxyError::ConnectTimeout { .. }
                | ProxyError::ResponseTimeout { .. }
                | ProxyError::UpstreamNotReading { .. } => StatusCode::GATEWAY_TIMEOUT,
                ProxyError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
                ProxyError::Connect { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::Exchange { .. } => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// A fixed word for the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::MissingHost => "missing_host",
            RequestError::BadHost(_) => "bad_host",
            RequestError::UnknownHost { .. } => "unknown_host",
            RequestError::Misdirected { .. } => "misdirected",
            RequestError::Connect => "connect_method",
            RequestError::Auth(_) => "auth",
            RequestError::Proxy(e) => e.kind(),
        }
    }
}

/// A short plain-text response.
pub fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The response for an error; `request_id` is shown on server-side failures so users can quote it.
pub fn respond(err: &RequestError, request_id: &str) -> Response<Full<Bytes>> {
    let status = err.status();
    let body = match err {
        RequestError::MissingHost | RequestError::BadHost(_) => {
            "bad request: missing or invalid Host\n".to_owned()
        }
        RequestError::UnknownHost { .. } => "not found: no service for this host\n".to_owned(),
        RequestError::Misdirected { .. } => {
            "misdirected request: this connection's certificate does not cover the host\n"
                .to_owned()
        }
        RequestError::Connect => "method not allowed\n".to_owned(),
        RequestError::Auth(_) if status == StatusCode::FORBIDDEN => "forbidden\n".to_owned(),
        RequestError::Auth(_) if status == StatusCode::UNAUTHORIZED => "unauthorized\n".to_owned(),
        RequestError::Auth(_) if status == StatusCode::BAD_REQUEST => "bad request\n".to_owned(),
        RequestError::Auth(AuthError::SessionStore(_)) => format!(
            "sign-in sessions are unavailable: the session store (session.store) cannot be reached; Bearer tokens still work (request id {request_id})\n"
        ),
        RequestError::Auth(AuthError::IssuerUnavailable { .. }) => format!(
            "authentication unavailable: the token issuer's keys cannot be fetched (request id {request_id})\n"
        ),
        RequestError::Auth(_) => format!("authentication unavailable (request id {request_id})\n"),
        RequestError::Proxy(ProxyError::BodyStalled { .. }) => format!(
            "request timeout: the request body stopped arriving (request id {request_id})\n"
        ),
        RequestError::Proxy(ProxyError::UpstreamNotReading { .. }) => format!(
            "gateway timeout: the service stopped reading the request body (request id {request_id})\n"
        ),
        RequestError::Proxy(_) if status == StatusCode::GATEWAY_TIMEOUT => {
            format!(
                "gateway timeout: the service did not answer in time (request id {request_id})\n"
            )
        }
        RequestError::Proxy(_) => {
            format!("bad gateway: the service could not be reached (request id {request_id})\n")
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let RequestError::Auth(e) = err {
        if let Some(challenge) = e.www_authenticate() {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
    }
    resp
}

/// An error and all its sources, joined with `: `, for log lines.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
