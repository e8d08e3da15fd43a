//! The test harness: a gateway started in-process with `portcullis::run` on `127.0.0.1:0`, real rustls with
//! certificates issued at test time by a `DevCa`, an echo upstream, and clients that trust the CA.
//!
//! Nothing here mocks the gateway: it writes a real TOML file, loads it with `portcullis::config::load` and serves
//! real sockets. No fixed ports and no `0.0.0.0` anywhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use portcullis::config::Snapshot;
use portcullis::tls::DevCa;
use portcullis::{BoundAddrs, DrainReport, Listeners, Shared};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// The domain every test host lives under.
pub(crate) const DOMAIN: &str = "example.test";

/// Installs a tracing subscriber when `TEST_LOG=1`, once per test binary.
pub(crate) fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").as_deref() == Ok("1") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
                )
                .with_test_writer()
                .try_init();
        }
    });
}

/// A `MakeWriter` into a shared buffer, to read what the gateway logged.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Captures the log lines that pass `filter` (an env-filter directive) until the guard drops. Only events
    /// on this thread are seen, so the test must run the gateway on a current-thread runtime (the default for
    /// `#[tokio::test]`).
    pub(crate) fn install(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub(crate) async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The echo upstream, reachable directly and through a relay that counts the connections made to it.
pub(crate) struct Echo {
    /// The echo server itself.
    pub(crate) direct: SocketAddr,
    /// A TCP relay in front of it that counts accepted connections.
    pub(crate) counted: SocketAddr,
    conns: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Echo {
    /// Starts the echo server and its counting relay.
    pub(crate) async fn start() -> Result<Echo> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let direct = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(portcullis::echo::serve(
            listener,
            stop.clone().cancelled_owned(),
        ));
        let relay = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let counted = relay.local_addr()?;
        let conns = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&conns);
        let relay_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    () = relay_stop.cancelled() => return,
                    r = relay.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(direct).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Echo {
            direct,
            counted,
            conns,
            stop,
        })
    }

    /// `http://` URL of the echo server.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.direct)
    }

    /// `http://` URL of the counting relay.
    pub(crate) fn counted_url(&self) -> String {
        format!("http://{}", self.counted)
    }

    /// Connections accepted by the counting relay so far.
    pub(crate) fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An address on which nothing listens: bound, read, and closed again.
pub(crate) async fn refused_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(addr)
}

/// What the echo upstream reports about the request it received.
#[derive(Debug, Deserialize)]
pub(crate) struct EchoReport {
    /// Method.
    pub(crate) method: String,
    /// Path and query.
    pub(crate) uri: String,
    /// HTTP version between gateway and upstream.
    pub(crate) version: String,
    /// Headers in order, lowercase names.
    pub(crate) headers: Vec<(String, String)>,
    /// Body length.
    pub(crate) body_bytes: u64,
    /// Body SHA-256, hex.
    pub body_sha256: String,
}

impl EchoReport {
    /// The first value of a header (name compared case-insensitively).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The configuration the harness writes; kept by the handle so tests can change it and reload.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `[services.NAME]` bodies, in order.
    pub(crate) services: Vec<(String, String)>,
    /// Extra lines in `[server]`.
    pub(crate) server: Vec<String>,
    /// Whether `server.watch` is on.
    pub(crate) watch: bool,
    /// Extra top-level TOML (e.g. `[[auth.issuers]]`), written after `[tls]` and before the services.
    pub(crate) top_level: Vec<String>,
}

impl Config {
    /// Adds (or replaces) a service.
    pub(crate) fn service(&mut self, name: &str, body: &str) -> &mut Self {
        self.services.retain(|(n, _)| n != name);
        self.services.push((name.to_owned(), body.to_owned()));
        self
    }

    /// Removes a service.
    pub(crate) fn remove_service(&mut self, name: &str) -> &mut Self {
        self.services.retain(|(n, _)| n != name);
        self
    }

    /// The TOML text for a gateway whose certificates live in `certs_dir`.
    pub(crate) fn render(&self, certs_dir: &Path) -> String {
        let mut out = format!(
            "domain = \"{DOMAIN}\"\n\n[server]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nwatch = {}\nshutdown_grace_secs = 5\n",
            self.watch
        );
        if !self.server.iter().any(|l| l.starts_with("trusted_proxies")) {
            out.push_str("trusted_proxies = []\n");
        }
        for line in &self.server {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!(
            "\n[tls]\ncerts_dir = {:?}\n",
            certs_dir.display().to_string()
        ));
        for block in &self.top_level {
            out.push('\n');
            out.push_str(block);
            out.push('\n');
        }
        for (name, body) in &self.services {
            out.push_str(&format!("\n[services.{name}]\n{body}\n"));
        }
        out
    }
}

/// Builder of a test gateway.
/// A change to the test config.
type ConfigEdit = Box<dyn FnOnce(&mut Config) + Send>;

pub(crate) struct TestGateway {
    config: Config,
    certificates: Vec<Vec<String>>,
    /// Applied to the config file after it was loaded and before `run` starts (the file then differs from the
    /// snapshot in force, as when an operator edits it during start-up).
    edit_before_run: Option<ConfigEdit>,
}

impl TestGateway {
    /// A gateway with no services yet, one certificate for `example.test` and `*.example.test` (plus
    /// `*.grafana.example.test`), `trusted_proxies = []` and watching off.
    pub(crate) fn new() -> TestGateway {
        init_logging();
        TestGateway {
            config: Config {
                services: Vec::new(),
                server: Vec::new(),
                watch: false,
                top_level: Vec::new(),
            },
            certificates: Vec::new(),
            edit_before_run: None,
        }
    }

    /// Adds `[services.NAME]` with the given TOML body.
    pub(crate) fn service(mut self, name: &str, body: &str) -> Self {
        self.config.service(name, body);
        self
    }

    /// Adds a service that proxies to `upstream` without authentication (`bypass_auth = true`).
    pub(crate) fn bypass_service(self, name: &str, upstream: &str) -> Self {
        self.service(
            name,
            &format!("upstream = {upstream:?}\nbypass_auth = true"),
        )
    }

    /// Adds a line to `[server]`.
    pub(crate) fn server(mut self, line: &str) -> Self {
        self.config.server.push(line.to_owned());
        self
    }

    /// Adds top-level TOML such as `[[auth.issuers]]` or `[auth.jwks]` tables.
    pub(crate) fn top_level(mut self, toml: &str) -> Self {
        self.config.top_level.push(toml.to_owned());
        self
    }

    /// Turns `server.watch` on.
    pub(crate) fn watch(mut self) -> Self {
        self.config.watch = true;
        self
    }

    /// Issues a certificate for exactly these names instead of the default one (call several times for several
    /// certificates; files are named `cert0`, `cert1` ... so the first is the default).
    pub(crate) fn certificate(mut self, names: &[&str]) -> Self {
        self.certificates
            .push(names.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// Changes the config file between loading it and starting to serve.
    pub(crate) fn edit_before_run(
        mut self,
        change: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Self {
        self.edit_before_run = Some(Box::new(change));
        self
    }

    /// Writes certificates and config, loads it, binds and starts serving.
    pub(crate) async fn spawn(mut self) -> Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir(&certs_dir)?;
        let ca = DevCa::generate("portcullis test ca")?;
        let certificates = if self.certificates.is_empty() {
            vec![vec![
                DOMAIN.to_owned(),
                format!("*.{DOMAIN}"),
                format!("*.grafana.{DOMAIN}"),
            ]]
        } else {
            self.certificates
        };
        for (i, names) in certificates.iter().enumerate() {
            write_certificate(&ca, &certs_dir, &format!("cert{i}"), names)?;
        }
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, self.config.render(&certs_dir))?;
        let snapshot: Snapshot =
            portcullis::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let listeners = Listeners::bind(&snapshot.listen).await?;
        let addrs = listeners.local_addrs()?;
        let shared = Shared::new(snapshot, config_path.clone());
        if let Some(change) = self.edit_before_run.take() {
            change(&mut self.config);
            std::fs::write(&config_path, self.config.render(&certs_dir))?;
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(portcullis::run(listeners, Arc::clone(&shared), async {
            let _ = rx.await;
        }));
        let ca_pem = ca.cert_pem();
        let client = client_builder(&ca_pem)?.build()?;
        let gw = Gateway {
            addrs,
            shared,
            client,
            ca,
            ca_pem,
            config: self.config,
            config_path,
            certs_dir,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(5), || async { gw.shared.is_ready() }).await;
        if !ready {
            bail!("gateway did not become ready");
        }
        Ok(gw)
    }
}

/// Issues a certificate for `names` and writes `NAME.pem` (chain) and `NAME.key`.
pub(crate) fn write_certificate(
    ca: &DevCa,
    dir: &Path,
    file: &str,
    names: &[String],
) -> Result<()> {
    let (chain, key) = ca.issue(names, Duration::from_secs(24 * 3600))?;
    std::fs::write(dir.join(format!("{file}.pem")), chain)?;
    std::fs::write(dir.join(format!("{file}.key")), key)?;
    Ok(())
}

/// Resolves every `*.test` name to 127.0.0.1 (reqwest takes the port from the URL).
struct TestResolver;

impl reqwest::dns::Resolve for TestResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ok = name.as_str().ends_with(".test");
        Box::pin(async move {
            if ok {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    0,
                )));
                Ok(addrs)
            } else {
                Err("only *.test names resolve in tests".into())
            }
        })
    }
}

/// A reqwest builder that trusts only the test CA and resolves `*.test` to loopback.
pub(crate) fn client_builder(ca_pem: &str) -> Result<reqwest::ClientBuilder> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .dns_resolver(Arc::new(TestResolver))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60)))
}

/// A running gateway.
pub(crate) struct Gateway {
    /// Bound listener addresses.
    pub(crate) addrs: BoundAddrs,
    /// The gateway's shared state.
    pub(crate) shared: Arc<Shared>,
    /// A client trusting the test CA, resolving `*.test` to 127.0.0.1.
    pub(crate) client: reqwest::Client,
    /// The CA that issued the certificates.
    pub(crate) ca: DevCa,
    /// Its certificate.
    pub(crate) ca_pem: String,
    /// The configuration as last written.
    pub(crate) config: Config,
    /// The config file.
    pub(crate) config_path: PathBuf,
    /// The certificate directory.
    pub(crate) certs_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<DrainReport, portcullis::tls::TlsError>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// `https://HOST:PORT/PATH` on the HTTPS listener.
    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addrs.https.port())
    }

    /// `http://127.0.0.1:PORT/PATH` on the admin listener.
    pub(crate) fn admin_url(&self, path: &str) -> String {
        let admin = self.addrs.admin.map_or(0, |a| a.port());
        format!("http://127.0.0.1:{admin}{path}")
    }

    /// The Prometheus exposition from the admin listener's `/metrics`.
    pub(crate) async fn metrics(&self) -> Result<String> {
        Ok(self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// GET through the gateway with the shared client.
    pub(crate) async fn get(&self, host: &str, path: &str) -> Result<reqwest::Response> {
        Ok(self.client.get(self.url(host, path)).send().await?)
    }

    /// GET an echo path and parse its report, requiring 200.
    pub(crate) async fn echo(&self, host: &str, path: &str) -> Result<EchoReport> {
        let resp = self.get(host, path).await?;
        if resp.status() != reqwest::StatusCode::OK {
            bail!("GET {host}{path}: status {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    /// Status of a GET through the gateway.
    pub(crate) async fn status(&self, host: &str, path: &str) -> Result<u16> {
        Ok(self.get(host, path).await?.status().as_u16())
    }

    /// Changes the configuration and writes it to the file (without reloading).
    pub(crate) fn update(&mut self, change: impl FnOnce(&mut Config)) -> Result<()> {
        change(&mut self.config);
        self.write_config(&self.config.render(&self.certs_dir))
    }

    /// Writes raw text to the config file (atomically, by rename).
    pub(crate) fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// Reloads the configuration now.
    pub(crate) async fn reload(&self) -> Result<()> {
        self.shared
            .reload()
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A rustls client configuration trusting the test CA.
    pub(crate) fn tls_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A TLS connection to the HTTPS listener with the given SNI (ALPN `http/1.1`).
    pub(crate) async fn tls_connect(&self, sni: &str) -> Result<TlsStream<TcpStream>> {
        self.tls_connect_alpn(sni, &[b"http/1.1"]).await
    }

    /// A TLS connection to the HTTPS listener offering these ALPN protocols (none: no ALPN extension).
    pub(crate) async fn tls_connect_alpn(
        &self,
        sni: &str,
        alpn: &[&[u8]],
    ) -> Result<TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.tls_config(alpn)?);
        let tcp = TcpStream::connect(self.addrs.https).await?;
        let name = ServerName::try_from(sni.to_owned())?;
        Ok(connector.connect(name, tcp).await?)
    }

    /// One HTTP/1.1 GET with hyper over a TLS connection whose SNI and Host are chosen separately.
    pub(crate) async fn raw_get(&self, sni: &str, host: &str, path: &str) -> Result<(u16, Bytes)> {
        let tls = self.tls_connect(sni).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a hand-written HTTP/1.1 request (header names exactly as given) with `Connection: close` and
    /// returns status, headers and body.
    pub(crate) async fn raw_request(
        &self,
        sni: &str,
        head: &str,
    ) -> Result<(u16, Vec<(String, String)>, Vec<u8>)> {
        let mut tls = self.tls_connect(sni).await?;
        tls.write_all(head.as_bytes()).await?;
        tls.flush().await?;
        read_response(&mut tls).await
    }

    /// Tells the gateway to shut down without waiting.
    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for the drain.
    pub(crate) async fn shutdown(mut self) -> Result<DrainReport> {
        self.trigger_shutdown();
        let task = self.task.take().context("already shut down")?;
        Ok(task.await??)
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) from a stream.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("bad status line")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse()?;
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside the body");
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        // Read to the terminating chunk, then decode.
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside a chunked body");
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = rest[pos..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("bad chunk")?
                + pos;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[pos..line_end])?.trim(), 16)?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            pos = line_end + 2 + size + 2;
        }
        out
    } else {
        Vec::new()
    };
    Ok((status, headers, body))
}
