//! The HTTP client that reaches issuers (discovery, JWKS, introspection): hyper-util's pooled client over
//! hyper-rustls with the webpki roots plus an issuer's optional extra CA.
//!
//! Every exchange runs under one timeout, reads at most a size limit, and never follows a redirect.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::error::FetchError;

/// A pooled HTTPS-or-loopback-HTTP client; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client trusting the webpki roots and `extra` certificates.
    pub(crate) fn new(
        extra: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, rustls::Error> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra {
            roots.add(cert.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The default client (webpki roots only).
    pub(crate) fn with_webpki_roots() -> Self {
        match Self::new(&[]) {
            Ok(c) => c,
            // The ring provider always supports the safe default versions and no extra roots were added.
            Err(e) => unreachable!("default TLS client config failed: {e}"),
        }
    }

    /// Sends `req` and returns the body of a 2xx answer.
    ///
    /// # Errors
    /// Timeout, transport errors, redirects (never followed), other non-2xx statuses, bodies over `max_bytes`.
    pub(crate) async fn fetch(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<(Bytes, http::HeaderMap), FetchError> {
        let work = async {
            let resp = self.inner.request(req).await.map_err(FetchError::Request)?;
            let status = resp.status();
            if status.is_redirection() {
                return Err(FetchError::Redirect { status });
            }
            if !status.is_success() {
                return Err(FetchError::Status { status });
            }
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge { limit: max_bytes }
                    } else {
                        FetchError::Body(e)
                    }
                })?
                .to_bytes();
            Ok((body, parts.headers))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    /// Sends `req` and returns the whole answer whatever its status (for OAuth endpoints, whose error bodies
    /// carry `error` and `error_description`). Redirects are returned, never followed.
    ///
    /// # Errors
    /// Timeout, transport errors, bodies over `max_bytes`.
    pub(crate) async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<http::Response<Vec<u8>>, FetchError> {
        let work = async {
            let resp = self.inner.request(req).await.map_err(FetchError::Request)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge { limit: max_bytes }
                    } else {
                        FetchError::Body(e)
                    }
                })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    /// A GET for JSON.
    pub(crate) async fn get(
        &self,
        uri: &Uri,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<(Bytes, http::HeaderMap), FetchError> {
        let req = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis")
            .body(Full::new(Bytes::new()))
            .map_err(|_| FetchError::Status {
                status: StatusCode::BAD_REQUEST,
            })?;
        self.fetch(req, timeout, max_bytes).await
    }
}

/// Whether `uri` may be used: `https`, or `http` to a loopback host (tests, sidecars).
pub(crate) fn is_allowed_scheme(uri: &Uri) -> bool {
    match uri.scheme_str() {
        Some("https") => uri.host().is_some(),
        Some("http") => uri.host().is_some_and(is_loopback_host),
        _ => false,
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `application/x-www-form-urlencoded` encoding of one value (HTML URL-encoding: unreserved kept, the rest
/// percent-encoded).
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback() {
        let ok = |s: &str| is_allowed_scheme(&s.parse::<Uri>().expect("uri"));
        assert!(ok("https://idp.example.com/x"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(ok("http://[::1]:8080/x"));
        assert!(ok("http://localhost/x"));
        assert!(!ok("http://idp.example.com/x"));
        assert!(!ok("ftp://idp.example.com/x"));
    }

    #[test]
    fn form_encoding_escapes_reserved() {
        assert_eq!(form_encode("a b:c/d"), "a%20b%3Ac%2Fd");
    }
}
