//! Automatic certificates against a real ACME server: Debian's `pebble` on loopback, with its own test CA.
//!
//! Each test starts pebble (its listener certificate made at test time), a tiny DNS responder that pebble's
//! validation authority asks (every name is 127.0.0.1; `_acme-challenge` TXT records come from files a dns-01
//! hook writes), and a gateway whose HTTP/HTTPS listeners are pebble's `httpPort`/`tlsPort`. The served
//! certificate is checked by a TLS client that trusts only pebble's issuing root, fetched from its management
//! interface. Without `pebble` installed the tests print SKIPPED, or fail when `CI=true`.

// STYLE: unwrap/expect are fine in tests, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::{BoundAddrs, Listeners, Shared};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, UdpSocket};

use crate::harness::Captured;

/// Upper bound on waiting for a certificate to be issued and served.
const ISSUE_WAIT: Duration = Duration::from_secs(60);

fn test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("portcullis=debug,info")
            .with_test_writer()
            .try_init();
    }
}

/// Whether the test has to be skipped because pebble is not installed (a failure in CI).
fn skip_without_pebble(test: &str) -> bool {
    let missing = matches!(
        Command::new("pebble").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    );
    if !missing {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "pebble is not installed (apt-get install -y pebble); the ACME tests need it in CI"
    );
    // Straight to stderr, past the test harness's output capture, so the skip is seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: pebble is not installed (apt-get install -y pebble) ***\n"
    );
    true
}

/// A port that was free a moment ago (pebble cannot listen on port 0 and tell us).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A DNS responder (RFC 1035 over UDP) for pebble's validation authority: A 127.0.0.1 for every name, TXT for
/// `_acme-challenge.<domain>` from the lines of the file `<txt_dir>/<domain>`, nothing else.
async fn dns_responder(txt_dir: PathBuf) -> (u16, AbortOnDrop) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Some(answer) = dns_answer(&buf[..n], &txt_dir) {
                let _ = sock.send_to(&answer, peer).await;
            }
        }
    });
    (port, AbortOnDrop(task))
}

fn dns_answer(q: &[u8], txt_dir: &Path) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    q.get(..question_end)?;
    let name = labels.join(".");
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        1 => answers.push((1, vec![127, 0, 0, 1])),
        16 => {
            if let Some(domain) = name.strip_prefix("_acme-challenge.") {
                let values = std::fs::read_to_string(txt_dir.join(domain)).unwrap_or_default();
                for value in values.lines().filter(|l| !l.is_empty()) {
                    let mut rdata = vec![u8::try_from(value.len()).ok()?];
                    rdata.extend_from_slice(value.as_bytes());
                    answers.push((16, rdata));
                }
            }
        }
        _ => {}
    }
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[..2]);
    // QR, AA, and RD copied from the query; RCODE 0.
    r.push(0x84 | (q[2] & 0x01));
    r.push(0x00);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..question_end]);
    for (rtype, data) in answers {
        // A pointer to the question's name at offset 12.
        r.extend_from_slice(&[0xC0, 0x0C]);
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

/// A running pebble; killed when dropped.
struct Pebble {
    child: Child,
    directory: String,
    mgmt: u16,
    /// CA of pebble's own HTTPS listeners (the gateway's `tls.acme.ca_file`).
    listener_ca: PathBuf,
    log: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!(
                "--- pebble log\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Writes a CA and a `localhost`/`127.0.0.1` certificate signed by it; returns the CA path.
fn listener_certs(dir: &Path) -> PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pebble listener test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("pebble-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), leaf_key.serialize_pem()).unwrap();
    dir.join("pebble-ca.pem")
}

impl Pebble {
    /// Starts pebble validating against `http_port`/`tls_port` and resolving through `dns_port`.
    async fn start(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        dns_port: u16,
        validity_secs: u64,
    ) -> Pebble {
        let listener_ca = listener_certs(dir);
        let port = free_port();
        let mgmt = free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            // Every order, renewals included, goes through validation again.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pebble");
        let pebble = Pebble {
            child,
            directory: format!("https://127.0.0.1:{port}/dir"),
            mgmt,
            listener_ca,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                && TcpStream::connect(("127.0.0.1", mgmt)).await.is_ok();
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                std::fs::read_to_string(&pebble.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pebble
    }

    /// Pebble's issuing root (regenerated at every start), from its management interface.
    async fn root(&self) -> CertificateDer<'static> {
        let ca = std::fs::read(&self.listener_ca).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let pem = client
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let root = rustls_pemfile::certs(&mut pem.as_ref())
            .next()
            .expect("a root certificate")
            .unwrap();
        root
    }
}

/// A gateway whose listeners are bound but not yet serving (pebble needs their ports first).
struct Bound {
    listeners: Listeners,
    shared: Arc<Shared>,
    addrs: BoundAddrs,
}

/// A serving gateway; stopped when dropped.
struct Gateway {
    shared: Arc<Shared>,
    addrs: BoundAddrs,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Writes the configuration (services for `hosts`, `[tls.acme]` from `acme`) and binds its listeners.
async fn bind_gateway(dir: &Path, http: bool, hosts: &[&str], acme: &str) -> Bound {
    let certs = dir.join("certs");
    let http_line = if http { "http = \"127.0.0.1:0\"\n" } else { "" };
    let mut text = format!(
        "[server]\nhttps = \"127.0.0.1:0\"\n{http_line}watch = false\nshutdown_grace_secs = 1\n\n\
         [tls]\ncerts_dir = {certs:?}\n\n[tls.acme]\n{acme}\n"
    );
    for (i, host) in hosts.iter().enumerate() {
        text.push_str(&format!(
            "[services.s{i}]\nupstream = \"http://127.0.0.1:9\"\nhosts = [{host:?}]\nbypass_auth = true\n"
        ));
    }
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let snapshot = portcullis::config::load(&path).unwrap();
    let listeners = Listeners::bind(&snapshot.listen).await.unwrap();
    let addrs = listeners.local_addrs().unwrap();
    Bound {
        listeners,
        shared: Shared::new(snapshot, path),
        addrs,
    }
}

impl Bound {
    fn spawn(self) -> Gateway {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let _ = portcullis::run(self.listeners, shared, async {
                let _ = rx.await;
            })
            .await;
        });
        Gateway {
            shared: self.shared,
            addrs: self.addrs,
            _stop: tx,
        }
    }
}

impl Gateway {
    fn orders(&self, result: &str) -> u64 {
        let text = self.shared.metrics.encode();
        let prefix = format!("portcullis_acme_orders_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

/// The leaf certificate the gateway serves for `host`, verified against `root` only.
async fn served_leaf(
    addr: SocketAddr,
    host: &str,
    root: &CertificateDer<'static>,
) -> Result<CertificateDer<'static>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    Ok(leaf.clone().into_owned())
}

/// Polls until the gateway serves `host` a certificate that verifies against `root` and satisfies `accept`.
async fn wait_for_leaf(
    gw: &Gateway,
    host: &str,
    root: &CertificateDer<'static>,
    accept: impl Fn(&CertificateDer<'static>) -> bool,
) -> CertificateDer<'static> {
    let deadline = Instant::now() + ISSUE_WAIT;
    loop {
        let last = match served_leaf(gw.addrs.https, host, root).await {
            Ok(leaf) if accept(&leaf) => return leaf,
            Ok(_) => "an older certificate".to_owned(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no acceptable certificate for {host} within {ISSUE_WAIT:?}; last: {last}; orders failed: {}",
            gw.orders("failed")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn acme_table(pebble: &Pebble, extra: &str) -> String {
    format!(
        "directory = {:?}\ncontact = \"ops@example.com\"\nca_file = {:?}\nretry_initial_secs = 1\nretry_max_secs = 2\n{extra}",
        pebble.directory, pebble.listener_ca
    )
}

#[tokio::test]
async fn acme_http_01_issues_a_certificate_per_host_served_without_restart() {
    test_log();
    if skip_without_pebble("acme_http_01_issues_a_certificate_per_host_served_without_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = ["a.example.com", "b.example.com", "c.example.com"];
    let (dns_port, _dns) = dns_responder(dir.path().join("txt")).await;
    let (bound, pebble) = bind_with_pebble(dir.path(), true, &hosts, "", dns_port, 3600).await;
    let gw = bound.spawn();
    let root = pebble.root().await;

    for host in hosts {
        let leaf = wait_for_leaf(&gw, host, &root, |_| true).await;
        assert_eq!(dns_names(&leaf), [host]);
    }
    let certs = dir.path().join("certs");
    for host in hosts {
        let file = certs.join(format!("acme-{host}.pem"));
        assert!(file.is_file(), "{}", file.display());
        #[cfg(unix)]
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let account = certs.join("acme-account.json");
    #[cfg(unix)]
    assert_eq!(mode(&account), 0o600);
    assert_eq!(gw.orders("issued"), 3);
    assert_eq!(gw.orders("failed"), 0);
    // The challenge responses are withdrawn once the orders are done.
    assert!(format!("{:?}", gw.shared.acme).contains("http_01: 0"));
}

/// Binds the gateway (configured for a pebble that is about to start), then starts pebble on its ports.
async fn bind_with_pebble(
    dir: &Path,
    http: bool,
    hosts: &[&str],
    extra: &str,
    dns_port: u16,
    validity_secs: u64,
) -> (Bound, Pebble) {
    // Pebble's directory port is only known once pebble is configured, and pebble's validation ports are only
    // known once the gateway is bound: bind the gateway with a placeholder directory, then rewrite the config
    // and reload before serving.
    let pebble_dir = dir.join("pebble-run");
    std::fs::create_dir_all(&pebble_dir).unwrap();
    let placeholder =
        format!("directory = \"https://127.0.0.1:1/dir\"\ncontact = \"ops@example.com\"\n{extra}");
    let bound = bind_gateway(dir, http, hosts, &placeholder).await;
    let http_port = bound.addrs.http.map_or_else(free_port, |a| a.port());
    let pebble = Pebble::start(
        &pebble_dir,
        http_port,
        bound.addrs.https.port(),
        dns_port,
        validity_secs,
    )
    .await;
    // Same listeners (addresses are not reloadable and stay as bound), the real directory now.
    let path = bound.shared.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&placeholder, &acme_table(&pebble, extra));
    std::fs::write(&path, text).unwrap();
    bound.shared.reload().await.unwrap();
    (bound, pebble)
}

#[tokio::test]
async fn acme_tls_alpn_01_issues_on_the_https_listener_alone() {
    test_log();
    if skip_without_pebble("acme_tls_alpn_01_issues_on_the_https_listener_alone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = ["a.example.com", "b.example.com"];
    let (dns_port, _dns) = dns_responder(dir.path().join("txt")).await;
    let (bound, pebble) = bind_with_pebble(
        dir.path(),
        false,
        &hosts,
        "challenge = \"tls-alpn-01\"\n",
        dns_port,
        3600,
    )
    .await;
    assert!(bound.addrs.http.is_none());
    let gw = bound.spawn();
    let root = pebble.root().await;
    for host in hosts {
        let leaf = wait_for_leaf(&gw, host, &root, |_| true).await;
        assert_eq!(dns_names(&leaf), [host]);
    }
    assert_eq!(gw.orders("issued"), 2);
    assert!(format!("{:?}", gw.shared.acme).contains("tls_alpn_01: 0"));
}

#[tokio::test]
async fn acme_dns_01_hook_gets_a_wildcard_certificate() {
    test_log();
    if skip_without_pebble("acme_dns_01_hook_gets_a_wildcard_certificate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("txt");
    std::fs::create_dir(&txt).unwrap();
    let (dns_port, _dns) = dns_responder(txt.clone()).await;
    // The hook publishes `_acme-challenge.<domain>` by writing the file the DNS responder reads.
    let hook = dir.path().join("hook.sh");
    let mut f = std::fs::File::create(&hook).unwrap();
    writeln!(
        f,
        "#!/bin/sh\nset -e\ncd {txt:?}\ncase \"$1\" in\n  set) echo \"$3\" >> \"$2\" ;;\n  clear) rm -f \"$2\" ;;\n  *) exit 2 ;;\nesac\necho \"$1\" >> {log:?}",
        log = dir.path().join("hook.log")
    )
    .unwrap();
    drop(f);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let extra = format!(
        "challenge = \"dns-01\"\ndns_hook = [\"/bin/sh\", {hook:?}]\nhosts = [\"*.w.example.com\"]\n"
    );
    let (bound, pebble) = bind_with_pebble(
        dir.path(),
        false,
        &["*.w.example.com"],
        &extra,
        dns_port,
        3600,
    )
    .await;
    let gw = bound.spawn();
    let root = pebble.root().await;
    let leaf = wait_for_leaf(&gw, "x.w.example.com", &root, |_| true).await;
    assert_eq!(dns_names(&leaf), ["*.w.example.com"]);
    assert!(dir.path().join("certs/acme-_.w.example.com.pem").is_file());
    // The record was published, then withdrawn.
    let calls = std::fs::read_to_string(dir.path().join("hook.log")).unwrap();
    assert_eq!(calls.lines().collect::<Vec<_>>(), ["set", "clear"]);
    assert!(!txt.join("w.example.com").exists());
}

#[tokio::test]
async fn acme_renews_a_short_lived_certificate_and_serves_it_without_restart() {
    test_log();
    if skip_without_pebble("acme_renews_a_short_lived_certificate_and_serves_it_without_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dns_port, _dns) = dns_responder(dir.path().join("txt")).await;
    // 12 s certificates: with the default 30 days of `renew_before_days`, renewal comes two thirds in (~8 s).
    let (bound, pebble) =
        bind_with_pebble(dir.path(), true, &["a.example.com"], "", dns_port, 12).await;
    let gw = bound.spawn();
    let root = pebble.root().await;
    let first = wait_for_leaf(&gw, "a.example.com", &root, |_| true).await;
    let second = wait_for_leaf(&gw, "a.example.com", &root, |leaf| leaf != &first).await;
    assert_eq!(dns_names(&second), ["a.example.com"]);
    let not_after = |leaf: &CertificateDer<'_>| {
        let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        c.validity().not_after.timestamp()
    };
    assert!(not_after(&second) > not_after(&first));
    assert!(gw.orders("issued") >= 2);
    assert_eq!(gw.orders("failed"), 0);
}

#[tokio::test]
async fn acme_unreachable_directory_backs_off_and_logs() {
    // Current-thread runtime: the gateway's tasks log on this thread.
    let (captured, _guard) = Captured::install("portcullis=info");

    let dir = tempfile::tempdir().unwrap();
    let pebble_ca = listener_certs(dir.path());
    // Nothing listens on this port.
    let acme = format!(
        "directory = \"https://127.0.0.1:{}/dir\"\ncontact = \"ops@example.com\"\nca_file = {pebble_ca:?}\nretry_initial_secs = 1\nretry_max_secs = 2\n",
        free_port()
    );
    let gw = bind_gateway(dir.path(), true, &["a.example.com"], &acme)
        .await
        .spawn();
    // Attempts at about 0 s, 1 s, 3 s, 5 s: backing off, neither spinning nor stopping.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let failed = gw.orders("failed");
    assert!((2..=4).contains(&failed), "{failed} failed orders in 4.5 s");
    assert_eq!(gw.orders("issued"), 0);
    let logs = captured.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("acme order failed; backing off"))
        .collect();
    assert_eq!(lines.len() as u64, failed, "{logs}");
    assert!(lines[0].contains("acme.host=a.example.com"), "{}", lines[0]);
    assert!(lines[0].contains("acme.result=\"failed\""), "{}", lines[0]);
    assert!(lines[0].contains("acme.retry_in_secs=1"), "{}", lines[0]);
    assert!(lines[1].contains("acme.retry_in_secs=2"), "{}", lines[1]);
    // Still serving: the HTTP listener answers.
    let health = reqwest::get(format!("http://{}/healthz", gw.addrs.http.unwrap()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
