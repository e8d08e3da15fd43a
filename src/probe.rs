//! A minimal HTTP/1.1 client for the admin listener: `portcullis healthcheck` and `portcullis check --against`.
//!
//! One plain-HTTP GET (the admin listener never speaks TLS) under one overall timeout, with a bounded body. It
//! does not follow redirects, retry, or reach anything but the URL it is given.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Largest body read (the `/config` summary of a large configuration fits many times over).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why a probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not `http://host:port/path`.
    #[error("invalid url {url}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No TCP connection.
    #[error("cannot connect to {authority}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http exchange with {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The hyper error.
        #[source]
        source: hyper::Error,
    },
    /// The body was unreadable or too large.
    #[error("cannot read the response body from {url}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No full answer in time.
    #[error("no answer from {url} within {}s", timeout.as_secs_f32())]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
}

/// GETs `url` and returns the status and the body, all within `timeout`.
///
/// # Errors
/// The URL is not plain `http://`, or no complete response arrived in time.
pub async fn get(url: &str, timeout: Duration) -> Result<(StatusCode, Bytes), ProbeError> {
    let bad = |reason| ProbeError::Url {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "only http:// is supported (the admin listener is plain HTTP)",
        ));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|source| ProbeError::Connect {
                authority: authority.to_string(),
                source,
            })?;
        let http_err = |source| ProbeError::Http {
            url: url.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(http_err)?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|_| bad("not a valid request target"))?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|source| ProbeError::Body {
                url: url.to_owned(),
                source,
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout {
            url: url.to_owned(),
            timeout,
        })?
}
