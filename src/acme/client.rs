//! The HTTP client `instant-acme` talks through: hyper with rustls (ring), the web PKI roots plus the configured
//! `ca_file` (a private CA or a test CA such as pebble's), and a timeout on every exchange.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// Connecting to the directory.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request until its response headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A cheap-to-clone HTTPS client for one ACME directory.
#[derive(Clone)]
pub struct AcmeClient {
    inner: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient").finish_non_exhaustive()
    }
}

impl AcmeClient {
    /// A client trusting the web PKI and, when given, the CA certificates in `ca_file`.
    ///
    /// # Errors
    /// `ca_file` cannot be read or holds no usable CA certificate.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, crate::tls::TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let mut tls = crate::tls::client_config(ca_file)?;
        // hyper-rustls sets ALPN itself from the enabled HTTP versions.
        tls.alpn_protocols.clear();
        // RFC 8555 §6.1: ACME is HTTPS only.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { inner })
    }
}

impl HttpClient for AcmeClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.inner.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Str("acme request timed out")),
            }
        })
    }
}
