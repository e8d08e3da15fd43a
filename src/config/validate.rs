//! Every check that turns a [`FileConfig`] into a [`Snapshot`]: defaults, parsing, cross-references, and the
//! certificates and secrets the file names.
//!
//! All problems are collected with their key paths; nothing is checked lazily under traffic. Validation reads
//! local files only (certificates, keys, secrets) and never touches the network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{FileConfig, FileServer, FileService};
use super::problem::{ProblemKind, Problems};
use super::snapshot::{
    ListenAddrs, Route, Snapshot, Timeouts, TlsSource, TrustedProxies, Upstream,
};
use crate::proxy::UpstreamClient;
use crate::router::{Host, HostPattern, Router};
use crate::tls::CertStore;

/// Whether validation may write files (the development CA) or only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Building a snapshot to serve: a self-signed setup creates what it lacks.
    Serve,
    /// `portcullis check`: read only.
    Check,
}

const DEFAULT_TLS_HANDSHAKE: u64 = 10;
const DEFAULT_REQUEST_HEADER: u64 = 30;
const DEFAULT_UPSTREAM_CONNECT: u64 = 5;
const DEFAULT_UPSTREAM_RESPONSE: u64 = 60;
const DEFAULT_IDLE: u64 = 120;
const DEFAULT_SHUTDOWN_GRACE: u64 = 30;

/// Builds the snapshot, or returns every problem found.
pub fn build(
    file: FileConfig,
    source: &Path,
    hash: String,
    mode: Mode,
    problems: &mut Problems,
) -> Option<Snapshot> {
    let domain = file
        .domain
        .as_deref()
        .and_then(|d| match HostPattern::parse(d) {
            Ok(HostPattern::Exact(d)) => Some(d),
            Ok(HostPattern::Wildcard(_)) | Err(_) => {
                problems.invalid("domain", d, "expected a DNS name such as `example.test`");
                None
            }
        });
    let listen = listen_addrs(&file.server, problems);
    let trusted_proxies = trusted_proxies(
        file.server.trusted_proxies.as_deref().unwrap_or_default(),
        problems,
    );
    let t = &file.server.timeouts;
    let timeouts = Timeouts {
        tls_handshake: secs(
            t.tls_handshake_secs,
            DEFAULT_TLS_HANDSHAKE,
            "server.timeouts.tls_handshake_secs",
            problems,
        ),
        request_header: secs(
            t.request_header_secs,
            DEFAULT_REQUEST_HEADER,
            "server.timeouts.request_header_secs",
            problems,
        ),
        upstream_connect: secs(
            t.upstream_connect_secs,
            DEFAULT_UPSTREAM_CONNECT,
            "server.timeouts.upstream_connect_secs",
            problems,
        ),
        upstream_response: secs(
            t.upstream_response_secs,
            DEFAULT_UPSTREAM_RESPONSE,
            "server.timeouts.upstream_response_secs",
            problems,
        ),
        idle: secs(
            t.idle_secs,
            DEFAULT_IDLE,
            "server.timeouts.idle_secs",
            problems,
        ),
    };
    let shutdown_grace = match file.server.shutdown_grace_secs {
        Some(s) => Duration::from_secs(s),
        None => Duration::from_secs(DEFAULT_SHUTDOWN_GRACE),
    };
    let demo_echo = file
        .demo
        .as_ref()
        .and_then(|d| d.echo.as_deref())
        .and_then(|a| socket_addr(a, "demo.echo", problems));

    let auth = crate::auth::build_auth(&file.auth, Path::new(""), problems);

    if file.services.is_empty() {
        problems.push(
            "services",
            ProblemKind::Required {
                hint: Some("add at least one [services.NAME] table with an `upstream`"),
            },
        );
    }
    let mut clients: HashMap<Option<PathBuf>, UpstreamClient> = HashMap::new();
    let mut routes = Vec::new();
    let mut router: Router<Route> = Router::default();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for (name, svc) in &file.services {
        let Some(route) = build_route(
            name,
            svc,
            domain.as_deref(),
            &timeouts,
            &auth,
            &mut clients,
            problems,
        ) else {
            continue;
        };
        let route = Arc::new(route);
        for pattern in &route.hosts {
            let key = pattern.to_string();
            if let Some(other) = owners.get(&key) {
                problems.push(
                    format!("services.{name}.hosts"),
                    ProblemKind::Conflict {
                        reason: format!("host {key} is already served by service `{other}`"),
                    },
                );
                continue;
            }
            owners.insert(key, name.clone());
            router.insert(pattern, Arc::clone(&route));
        }
        routes.push(route);
    }

    let tls = tls_source(&file, &routes, mode, problems);
    let certs = load_certs(&tls, &routes, mode, problems);

    if !problems.is_empty() {
        return None;
    }
    Some(Snapshot {
        source: source.to_path_buf(),
        hash,
        domain,
        listen: listen?,
        trusted_proxies,
        timeouts,
        shutdown_grace,
        watch: file.server.watch.unwrap_or(true),
        tls,
        certs: Arc::new(certs?),
        auth,
        demo_echo,
        routes,
        router,
    })
}

fn secs(value: Option<u64>, default: u64, path: &str, problems: &mut Problems) -> Duration {
    match value {
        Some(0) => {
            problems.invalid(path, "0", "must be at least 1 second");
            Duration::from_secs(default)
        }
        Some(v) => Duration::from_secs(v),
        None => Duration::from_secs(default),
    }
}

fn socket_addr(raw: &str, path: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.invalid(
                path,
                raw,
                "expected `ip:port`, e.g. `127.0.0.1:8443` or `[::]:443`",
            );
            None
        }
    }
}

fn listen_addrs(server: &FileServer, problems: &mut Problems) -> Option<ListenAddrs> {
    let https = match server.https.as_deref() {
        Some(a) => socket_addr(a, "server.https", problems),
        None => {
            problems.push(
                "server.https",
                ProblemKind::Required {
                    hint: Some("the HTTPS listener address, e.g. `0.0.0.0:443`"),
                },
            );
            None
        }
    };
    let http = server
        .http
        .as_deref()
        .map(|a| socket_addr(a, "server.http", problems));
    let admin = server
        .admin
        .as_deref()
        .map(|a| socket_addr(a, "server.admin", problems));
    let (https, http, admin) = (
        https?,
        http.map_or(Some(None), |a| a.map(Some))?,
        admin.map_or(Some(None), |a| a.map(Some))?,
    );
    let mut seen = BTreeSet::new();
    for (key, addr) in [
        ("server.https", Some(https)),
        ("server.http", http),
        ("server.admin", admin),
    ] {
        if let Some(addr) = addr {
            if addr.port() != 0 && !seen.insert(addr) {
                problems.push(
                    key,
                    ProblemKind::Conflict {
                        reason: format!("{addr} is used by another listener"),
                    },
                );
            }
        }
    }
    Some(ListenAddrs { https, http, admin })
}

fn trusted_proxies(raw: &[String], problems: &mut Problems) -> TrustedProxies {
    let mut nets = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        match r
            .parse::<IpNet>()
            .or_else(|_| r.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => nets.push(n.trunc()),
            Err(_) => problems.invalid(
                format!("server.trusted_proxies.{i}"),
                r,
                "expected a CIDR such as `10.0.0.0/8` or an IP address",
            ),
        }
    }
    TrustedProxies::new(nets)
}

fn build_route(
    name: &str,
    svc: &FileService,
    domain: Option<&str>,
    timeouts: &Timeouts,
    auth: &crate::auth::AuthSettings,
    clients: &mut HashMap<Option<PathBuf>, UpstreamClient>,
    problems: &mut Problems,
) -> Option<Route> {
    let base = format!("services.{name}");
    let before = problems.len();
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problems.invalid(
            base.clone(),
            name,
            "service names are letters, digits, `-` and `_`",
        );
    }
    let hosts: Vec<HostPattern> = match &svc.hosts {
        Some(list) if list.is_empty() => {
            problems.invalid(
                format!("{base}.hosts"),
                "[]",
                "list at least one host, or remove the key to use NAME.<domain>",
            );
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match HostPattern::parse(h) {
                Ok(p) => Some(p),
                Err(_) => {
                    problems.invalid(
                        format!("{base}.hosts.{i}"),
                        h,
                        "expected a host name or `*.domain` wildcard, without port or scheme",
                    );
                    None
                }
            })
            .collect(),
        None => {
            match domain {
                Some(d) => match Host::parse(&format!("{name}.{d}")) {
                    Ok(h) => vec![HostPattern::Exact(h.as_str().to_owned())],
                    Err(_) => {
                        problems.invalid(base.clone(), name, "cannot form a host name NAME.<domain> from this service name; set `hosts`");
                        Vec::new()
                    }
                },
                None => {
                    problems.push(format!("{base}.hosts"), ProblemKind::Required { hint: Some("set `hosts`, or a top-level `domain` so the host defaults to NAME.<domain>") });
                    Vec::new()
                }
            }
        }
    };
    let ca_file = svc.upstream_ca_file.as_ref().map(PathBuf::from);
    let upstream = match svc.upstream.as_deref() {
        None => {
            problems.push(
                format!("{base}.upstream"),
                ProblemKind::Required {
                    hint: Some("e.g. `http://127.0.0.1:8080`"),
                },
            );
            None
        }
        Some(raw) => parse_upstream(raw, ca_file.clone(), &format!("{base}.upstream"), problems),
    };
    if ca_file.is_some()
        && upstream
            .as_ref()
            .is_some_and(|u| u.scheme != http::uri::Scheme::HTTPS)
    {
        problems.push(
            format!("{base}.upstream_ca_file"),
            ProblemKind::Conflict {
                reason: "only used with an `https://` upstream".into(),
            },
        );
    }
    let response_timeout = svc
        .upstream_response_secs
        .map_or(timeouts.upstream_response, |s| {
            secs(
                Some(s),
                DEFAULT_UPSTREAM_RESPONSE,
                &format!("{base}.upstream_response_secs"),
                problems,
            )
        });
    let policy = crate::auth::build_service_policy(name, svc, auth, problems);
    let client = match clients.get(&ca_file) {
        Some(c) => Some(c.clone()),
        None => match UpstreamClient::new(timeouts.upstream_connect, ca_file.as_deref()) {
            Ok(c) => {
                clients.insert(ca_file.clone(), c.clone());
                Some(c)
            }
            Err(e) => {
                problems.push(
                    format!("{base}.upstream_ca_file"),
                    ProblemKind::Tls(Box::new(e)),
                );
                None
            }
        },
    };
    if problems.len() > before {
        return None;
    }
    Some(Route {
        name: name.to_owned(),
        hosts,
        upstream: upstream?,
        policy,
        preserve_host: svc.preserve_host.unwrap_or(true),
        response_timeout,
        client: client?,
    })
}

fn parse_upstream(
    raw: &str,
    ca_file: Option<PathBuf>,
    path: &str,
    problems: &mut Problems,
) -> Option<Upstream> {
    let uri: http::Uri = match raw.parse() {
        Ok(u) => u,
        Err(_) => {
            problems.invalid(
                path,
                raw,
                "expected `http://host:port` or `https://host:port`",
            );
            return None;
        }
    };
    let scheme = match uri.scheme() {
        Some(s) if *s == http::uri::Scheme::HTTP || *s == http::uri::Scheme::HTTPS => s.clone(),
        _ => {
            problems.invalid(path, raw, "the scheme must be `http://` or `https://`");
            return None;
        }
    };
    let Some(authority) = uri.authority().cloned() else {
        problems.invalid(path, raw, "missing host");
        return None;
    };
    if authority.as_str().contains('@') {
        problems.invalid(
            path,
            raw,
            "credentials in the upstream URL are not supported",
        );
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        problems.invalid(
            path,
            raw,
            "an upstream is `scheme://host:port` without a path; requests keep their own path",
        );
        return None;
    }
    Some(Upstream {
        scheme,
        authority,
        ca_file,
    })
}

fn tls_source(
    file: &FileConfig,
    routes: &[Arc<Route>],
    mode: Mode,
    problems: &mut Problems,
) -> TlsSource {
    let certs_dir = match file.tls.certs_dir.as_deref() {
        Some(d) => PathBuf::from(d),
        None => {
            problems.push(
                "tls.certs_dir",
                ProblemKind::Required {
                    hint: Some("a directory of PEM certificate/key pairs, e.g. `certs`"),
                },
            );
            PathBuf::new()
        }
    };
    let self_signed = file.tls.self_signed.unwrap_or(false);
    let mut dev_ca = None;
    if self_signed && mode == Mode::Serve && !certs_dir.as_os_str().is_empty() {
        let hosts = all_hosts(routes);
        match crate::tls::ensure_self_signed(&certs_dir, &hosts) {
            Ok(ca) => dev_ca = Some(ca),
            Err(e) => problems.push("tls.self_signed", ProblemKind::Tls(Box::new(e))),
        }
    }
    TlsSource {
        certs_dir,
        default_certificate: file.tls.default_certificate.clone(),
        self_signed,
        dev_ca,
    }
}

fn all_hosts(routes: &[Arc<Route>]) -> Vec<String> {
    let mut hosts: Vec<String> = routes
        .iter()
        .flat_map(|r| r.hosts.iter().map(ToString::to_string))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn load_certs(
    tls: &TlsSource,
    routes: &[Arc<Route>],
    mode: Mode,
    problems: &mut Problems,
) -> Option<CertStore> {
    if tls.certs_dir.as_os_str().is_empty() {
        return None;
    }
    if !tls.certs_dir.is_dir() {
        if tls.self_signed && mode == Mode::Check {
            return Some(CertStore::empty());
        }
        problems.invalid(
            "tls.certs_dir",
            tls.certs_dir.display().to_string(),
            "not a directory (relative paths are resolved against the working directory)",
        );
        return None;
    }
    let store = match CertStore::load_dir(&tls.certs_dir, tls.default_certificate.as_deref()) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                problems.push("tls.certs_dir", ProblemKind::Tls(Box::new(e)));
            }
            return None;
        }
    };
    if store.is_empty() && !(tls.self_signed && mode == Mode::Check) {
        problems.invalid(
            "tls.certs_dir",
            tls.certs_dir.display().to_string(),
            "holds no certificate/key pair (NAME.pem with chain and key, or NAME.crt + NAME.key); or set `tls.self_signed = true` for development",
        );
        return None;
    }
    if !(tls.self_signed && mode == Mode::Check) {
        for route in routes {
            for host in &route.hosts {
                let probe = match host {
                    HostPattern::Exact(n) => n.clone(),
                    HostPattern::Wildcard(s) => format!("portcullis-probe.{s}"),
                };
                if store.covering(&probe).is_none() {
                    problems.push(
                        format!("services.{}.hosts", route.name),
                        ProblemKind::Conflict {
                            reason: format!(
                                "no certificate in {} covers {host}: add one, or set `tls.self_signed = true` for development",
                                tls.certs_dir.display()
                            ),
                        },
                    );
                }
            }
        }
    }
    Some(store)
}
