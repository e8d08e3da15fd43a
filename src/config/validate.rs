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

use super::file::{FileAcme, FileConfig, FileOneOrMany, FileServer, FileService};
use super::problem::{ProblemKind, Problems};
use super::snapshot::{
    ListenAddrs, ResponseRequestId, Route, Snapshot, Timeouts, TlsSource, TrustedProxies, Upstream,
};
use crate::acme::{AcmeClient, AcmeSettings, ChallengeKind, Contact, DnsHook};
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
const DEFAULT_ACME_RENEW_BEFORE_DAYS: u64 = 30;
const DEFAULT_ACME_RETRY_INITIAL: u64 = 60;
const DEFAULT_ACME_RETRY_MAX: u64 = 3600;

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
    let response_request_id = match file.server.response_request_id.as_deref() {
        None | Some("always") => ResponseRequestId::Always,
        Some("errors") => ResponseRequestId::Errors,
        Some(other) => {
            problems.invalid(
                "server.response_request_id",
                other,
                "expected `always` (every response) or `errors` (status 400 and above)",
            );
            ResponseRequestId::Always
        }
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

    let mut auth = crate::auth::build_auth(&file.auth, Path::new(""), problems);
    crate::auth::build_oidc(
        file.oidc.as_ref(),
        file.session.as_ref(),
        domain.as_deref(),
        Path::new(""),
        &mut auth,
        problems,
    );

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

    let acme = file
        .tls
        .acme
        .as_ref()
        .and_then(|a| acme_settings(a, &file, &routes, listen.as_ref(), problems));
    let portal = auth.oidc().map(|o| o.portal().to_owned());
    if let Some(p) = &portal {
        if let Some(r) = router.lookup(p) {
            problems.push(
                "oidc.portal",
                ProblemKind::Conflict {
                    reason: format!("portal host {p} is also a host of service `{}`; the portal needs a host of its own", r.name),
                },
            );
        }
    }
    let mut forward_auth_hosts = Vec::new();
    for (i, h) in file
        .forward_auth
        .as_ref()
        .and_then(|f| f.hosts.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("forward_auth.hosts.{i}");
        match HostPattern::parse(h) {
            Ok(HostPattern::Exact(name)) => {
                if let Some(r) = router.lookup(&name) {
                    problems.push(
                        path,
                        ProblemKind::Conflict {
                            reason: format!("{name} is also a host of service `{}`", r.name),
                        },
                    );
                } else if portal.as_deref() == Some(name.as_str()) {
                    problems.push(
                        path,
                        ProblemKind::Conflict {
                            reason: format!(
                                "{name} is the sign-in portal, which serves the endpoints already"
                            ),
                        },
                    );
                } else {
                    forward_auth_hosts.push(name);
                }
            }
            Ok(HostPattern::Wildcard(_)) | Err(_) => problems.invalid(
                path,
                h,
                "expected an exact host name such as authz.example.test",
            ),
        }
    }
    let extra: Vec<String> = portal
        .into_iter()
        .chain(forward_auth_hosts.iter().cloned())
        .collect();
    let tls = tls_source(&file, &routes, &extra, acme, mode, problems);
    let certs = load_certs(&tls, &routes, &extra, mode, problems);

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
        response_request_id,
        tls,
        certs: Arc::new(certs?),
        auth,
        demo_echo,
        forward_auth_hosts,
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

/// Bounds of `services.NAME.upstream_read_buffer_kib`.
const READ_BUFFER_KIB_MIN: u32 = 4;
const READ_BUFFER_KIB_MAX: u32 = 1024;

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
    let read_buffer_kib = match svc.upstream_read_buffer_kib {
        None => crate::proxy::DEFAULT_READ_BUFFER_KIB,
        Some(k) if (READ_BUFFER_KIB_MIN..=READ_BUFFER_KIB_MAX).contains(&k) => k,
        Some(k) => {
            problems.invalid(
                format!("{base}.upstream_read_buffer_kib"),
                k.to_string(),
                format!("must be from {READ_BUFFER_KIB_MIN} to {READ_BUFFER_KIB_MAX} (KiB); it is also the largest response head the upstream may send"),
            );
            crate::proxy::DEFAULT_READ_BUFFER_KIB
        }
    };
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
    let upstream = upstream?;
    let pool = client?.pool(&upstream, read_buffer_kib);
    Some(Route {
        name: name.to_owned(),
        hosts,
        name_label: name.into(),
        upstream_label: upstream.to_string().into(),
        metrics: Default::default(),
        upstream,
        policy,
        preserve_host: svc.preserve_host.unwrap_or(true),
        response_timeout,
        body_idle_timeout: timeouts.idle,
        pool,
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
    extra_hosts: &[String],
    acme: Option<AcmeSettings>,
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
        let mut hosts = all_hosts(routes);
        hosts.extend(extra_hosts.iter().cloned());
        match crate::tls::ensure_self_signed(&certs_dir, &hosts) {
            Ok(ca) => dev_ca = Some(ca),
            Err(e) => problems.push("tls.self_signed", ProblemKind::Tls(Box::new(e))),
        }
    }
    if acme.is_some() && mode == Mode::Serve && !certs_dir.as_os_str().is_empty() {
        // ACME starts from an empty directory; it holds the account key, so it is private.
        if let Err(e) = crate::tls::create_private_dir(&certs_dir) {
            problems.push("tls.certs_dir", ProblemKind::Tls(Box::new(e)));
        }
    }
    TlsSource {
        // Taken after any file this function wrote, so the watcher compares against what was loaded.
        certs_fingerprint: crate::tls::dir_fingerprint(&certs_dir),
        certs_dir,
        default_certificate: file.tls.default_certificate.clone(),
        self_signed,
        dev_ca,
        acme,
    }
}

/// `[tls.acme]`: every value parsed, the hosts resolved, and the challenge checked against the listeners.
fn acme_settings(
    acme: &FileAcme,
    file: &FileConfig,
    routes: &[Arc<Route>],
    listen: Option<&ListenAddrs>,
    problems: &mut Problems,
) -> Option<AcmeSettings> {
    let before = problems.len();
    let directory = match acme.directory.as_deref() {
        None => {
            problems.push(
                "tls.acme.directory",
                ProblemKind::Required {
                    hint: Some("the ACME directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`"),
                },
            );
            None
        }
        Some(raw) => match raw.parse::<http::Uri>() {
            Ok(u) if u.scheme() == Some(&http::uri::Scheme::HTTPS) && u.host().is_some() => Some(u),
            _ => {
                problems.invalid(
                    "tls.acme.directory",
                    raw,
                    "expected an `https://` URL (RFC 8555 §6.1 requires HTTPS)",
                );
                None
            }
        },
    };
    let contact = match acme.contact.as_deref() {
        None => {
            problems.push(
                "tls.acme.contact",
                ProblemKind::Required {
                    hint: Some("an e-mail address for expiry notices, e.g. `ops@example.com`"),
                },
            );
            None
        }
        Some(raw) => {
            let c = Contact::parse(raw);
            if c.is_none() {
                problems.invalid(
                    "tls.acme.contact",
                    raw,
                    "expected an e-mail address such as `ops@example.com`",
                );
            }
            c
        }
    };
    let challenge = match acme.challenge.as_deref() {
        None => Some(ChallengeKind::Http01),
        Some(raw) => {
            let k = ChallengeKind::parse(raw);
            if k.is_none() {
                problems.invalid(
                    "tls.acme.challenge",
                    raw,
                    "expected `http-01`, `tls-alpn-01` or `dns-01`",
                );
            }
            k
        }
    };
    let dns_hook = acme.dns_hook.as_ref().and_then(|h| {
        let argv = match h {
            FileOneOrMany::One(p) => vec![p.clone()],
            FileOneOrMany::Many(v) => v.clone(),
        };
        let hook = DnsHook::new(argv);
        if hook.is_none() {
            problems.invalid(
                "tls.acme.dns_hook",
                "",
                "expected a program, or a list of the program and its leading arguments",
            );
        }
        hook
    });
    match (challenge, &dns_hook) {
        (Some(ChallengeKind::Dns01), None) if acme.dns_hook.is_none() => problems.push(
            "tls.acme.dns_hook",
            ProblemKind::Required {
                hint: Some("dns-01 needs a program that publishes `_acme-challenge` TXT records, called as `PROGRAM set|clear <domain> <txt-value>`"),
            },
        ),
        (Some(ChallengeKind::Http01 | ChallengeKind::TlsAlpn01), Some(_)) => problems.push(
            "tls.acme.dns_hook",
            ProblemKind::Conflict {
                reason: "only used with `challenge = \"dns-01\"`".into(),
            },
        ),
        _ => {}
    }
    if challenge == Some(ChallengeKind::Http01) && listen.is_some_and(|l| l.http.is_none()) {
        problems.push(
            "tls.acme.challenge",
            ProblemKind::Conflict {
                reason: "http-01 is answered on the plain HTTP listener: set `server.http` (reachable on port 80), or use `tls-alpn-01`".into(),
            },
        );
    }
    if file.tls.self_signed == Some(true) {
        problems.push(
            "tls.acme",
            ProblemKind::Conflict {
                reason: "cannot be combined with `tls.self_signed = true`: the self-signed certificate would cover every host".into(),
            },
        );
    }
    let hosts: Vec<HostPattern> = match &acme.hosts {
        Some(list) if list.is_empty() => {
            problems.invalid(
                "tls.acme.hosts",
                "[]",
                "list at least one host, or remove the key to use every exact service host",
            );
            Vec::new()
        }
        Some(list) => {
            let mut hosts = Vec::new();
            for (i, raw) in list.iter().enumerate() {
                let path = format!("tls.acme.hosts.{i}");
                let pattern = match HostPattern::parse(raw) {
                    Ok(p) => p,
                    Err(_) => {
                        problems.invalid(
                            path,
                            raw,
                            "expected a host name or `*.domain` wildcard, without port or scheme",
                        );
                        continue;
                    }
                };
                if matches!(pattern, HostPattern::Wildcard(_))
                    && challenge.is_some_and(|c| c != ChallengeKind::Dns01)
                {
                    problems.push(
                        path.clone(),
                        ProblemKind::Conflict {
                            reason: format!("a wildcard certificate can only be obtained with `challenge = \"dns-01\"` (RFC 8555 §7.1.3), not {}", challenge.map_or("", ChallengeKind::as_str)),
                        },
                    );
                }
                let probe = match &pattern {
                    HostPattern::Exact(n) => n.clone(),
                    HostPattern::Wildcard(s) => format!("portcullis-probe.{s}"),
                };
                let served = routes
                    .iter()
                    .flat_map(|r| r.hosts.iter())
                    .any(|h| h.matches(&probe) || pattern.matches(&route_probe(h)));
                if !served {
                    problems.push(
                        path.clone(),
                        ProblemKind::Conflict {
                            reason: format!("{pattern} is not a host of any service"),
                        },
                    );
                }
                if !hosts.contains(&pattern) {
                    hosts.push(pattern);
                }
            }
            hosts
        }
        None => {
            let mut hosts: Vec<HostPattern> = routes
                .iter()
                .flat_map(|r| r.hosts.iter())
                .filter(|h| matches!(h, HostPattern::Exact(_)))
                .cloned()
                .collect();
            hosts.sort_by_key(ToString::to_string);
            hosts.dedup();
            hosts
        }
    };
    let renew_before = Duration::from_secs(
        acme.renew_before_days
            .unwrap_or(DEFAULT_ACME_RENEW_BEFORE_DAYS)
            .saturating_mul(86_400),
    );
    let retry_initial = secs(
        acme.retry_initial_secs,
        DEFAULT_ACME_RETRY_INITIAL,
        "tls.acme.retry_initial_secs",
        problems,
    );
    let retry_max = secs(
        acme.retry_max_secs,
        DEFAULT_ACME_RETRY_MAX.max(retry_initial.as_secs()),
        "tls.acme.retry_max_secs",
        problems,
    );
    if retry_max < retry_initial {
        problems.push(
            "tls.acme.retry_max_secs",
            ProblemKind::Conflict {
                reason: "must not be smaller than `tls.acme.retry_initial_secs`".into(),
            },
        );
    }
    let ca_file = acme.ca_file.as_ref().map(PathBuf::from);
    let client = match AcmeClient::new(ca_file.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push("tls.acme.ca_file", ProblemKind::Tls(Box::new(e)));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(AcmeSettings {
        directory: directory?,
        contact: contact?,
        ca_file,
        client: client?,
        challenge: challenge?,
        dns_hook,
        hosts,
        renew_before,
        retry_initial,
        retry_max,
    })
}

/// A name a route's host pattern answers for, to ask whether a certificate pattern covers it.
fn route_probe(host: &HostPattern) -> String {
    match host {
        HostPattern::Exact(n) => n.clone(),
        HostPattern::Wildcard(s) => format!("portcullis-probe.{s}"),
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
    extra_hosts: &[String],
    mode: Mode,
    problems: &mut Problems,
) -> Option<CertStore> {
    if tls.certs_dir.as_os_str().is_empty() {
        return None;
    }
    if !tls.certs_dir.is_dir() {
        if (tls.self_signed || tls.acme.is_some()) && mode == Mode::Check {
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
    // With ACME the directory fills itself after start.
    if store.is_empty() && tls.acme.is_none() && !(tls.self_signed && mode == Mode::Check) {
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
                let probe = route_probe(host);
                let by_acme = tls.acme.as_ref().is_some_and(|a| a.manages(&probe));
                if !by_acme && store.covering(&probe).is_none() {
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
        for host in extra_hosts {
            let by_acme = tls.acme.as_ref().is_some_and(|a| a.manages(host));
            if !by_acme && store.covering(host).is_none() {
                problems.push(
                    "oidc.portal",
                    ProblemKind::Conflict {
                        reason: format!(
                            "no certificate in {} covers the sign-in portal {host}: add one, or set `tls.self_signed = true` for development",
                            tls.certs_dir.display()
                        ),
                    },
                );
            }
        }
    }
    Some(store)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A config with two services and an empty certificate directory, with `acme` (and any extra tables) after
    /// `[tls]`.
    fn check(server_http: bool, acme: &str) -> Result<Snapshot, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let http = if server_http {
            "http = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        let text = format!(
            "[server]\nhttps = \"127.0.0.1:0\"\n{http}\n[tls]\ncerts_dir = {certs:?}\n{acme}\n\
             [services.a]\nupstream = \"http://127.0.0.1:1\"\nhosts = [\"a.example.com\"]\nbypass_auth = true\n\
             [services.b]\nupstream = \"http://127.0.0.1:1\"\nhosts = [\"b.example.com\"]\nbypass_auth = true\n"
        );
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::load_with(&path, &|_| None, Mode::Check).map_err(|e| {
            e.problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.kind))
                .collect()
        })
    }

    const OK: &str =
        "[tls.acme]\ndirectory = \"https://acme.example.net/dir\"\ncontact = \"ops@example.com\"\n";

    fn problems_with(server_http: bool, acme: &str) -> Vec<String> {
        check(server_http, acme).expect_err("expected problems")
    }

    fn has(problems: &[String], path: &str, text: &str) -> bool {
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{path}: ")) && p.contains(text))
    }

    #[test]
    fn acme_defaults_cover_exact_hosts_and_allow_an_empty_certs_dir() {
        let snap = check(true, OK).expect("valid");
        let acme = snap.tls.acme.as_ref().expect("acme settings");
        let hosts: Vec<String> = acme.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["a.example.com", "b.example.com"]);
        assert_eq!(acme.challenge, ChallengeKind::Http01);
        assert_eq!(acme.contact.as_uri(), "mailto:ops@example.com");
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(acme.retry_initial, Duration::from_secs(60));
        assert_eq!(acme.retry_max, Duration::from_secs(3600));
    }

    #[test]
    fn acme_bad_directory_url() {
        for bad in [
            "acme.example.net",
            "http://acme.example.net/dir",
            "https://",
        ] {
            let p = problems_with(
                true,
                &format!("[tls.acme]\ndirectory = {bad:?}\ncontact = \"ops@example.com\"\n"),
            );
            assert!(has(&p, "tls.acme.directory", "https://"), "{bad}: {p:?}");
        }
    }

    #[test]
    fn acme_missing_contact() {
        let p = problems_with(
            true,
            "[tls.acme]\ndirectory = \"https://acme.example.net/dir\"\n",
        );
        assert!(has(&p, "tls.acme.contact", "is required"), "{p:?}");
        let p = problems_with(true, &OK.replace("ops@example.com", "nobody"));
        assert!(has(&p, "tls.acme.contact", "e-mail"), "{p:?}");
    }

    const WILDCARD_SERVICE: &str =
        "[services.w]\nupstream = \"http://127.0.0.1:1\"\nhosts = [\"*.w.example.com\"]\nbypass_auth = true\n";

    #[test]
    fn acme_wildcard_host_needs_dns_01() {
        // By default only exact hosts are ordered, so the wildcard service needs a certificate of its own.
        let p = problems_with(true, &format!("{OK}{WILDCARD_SERVICE}"));
        assert!(has(&p, "services.w.hosts", "*.w.example.com"), "{p:?}");
        let all = "hosts = [\"a.example.com\", \"b.example.com\", \"*.w.example.com\"]\n";
        let p = problems_with(true, &format!("{OK}{all}{WILDCARD_SERVICE}"));
        assert!(has(&p, "tls.acme.hosts.2", "dns-01"), "{p:?}");
        let snap = check(
            true,
            &format!(
                "{OK}{all}challenge = \"dns-01\"\ndns_hook = \"/bin/true\"\n{WILDCARD_SERVICE}"
            ),
        )
        .expect("valid");
        let acme = snap.tls.acme.unwrap();
        assert!(acme.manages("x.w.example.com"));
        assert_eq!(acme.dns_hook.unwrap().argv(), ["/bin/true"]);
    }

    #[test]
    fn acme_dns_01_needs_a_hook() {
        let p = problems_with(true, &format!("{OK}challenge = \"dns-01\"\n"));
        assert!(has(&p, "tls.acme.dns_hook", "is required"), "{p:?}");
        let p = problems_with(true, &format!("{OK}dns_hook = [\"/bin/true\"]\n"));
        assert!(has(&p, "tls.acme.dns_hook", "only used with"), "{p:?}");
    }

    #[test]
    fn acme_http_01_needs_the_http_listener() {
        let p = problems_with(false, OK);
        assert!(has(&p, "tls.acme.challenge", "server.http"), "{p:?}");
        check(false, &format!("{OK}challenge = \"tls-alpn-01\"\n"))
            .expect("tls-alpn-01 needs no http");
    }

    #[test]
    fn acme_other_values() {
        let p = problems_with(
            true,
            &format!("{OK}challenge = \"http-02\"\nhosts = [\"c.example.com\", \"a b\"]\nretry_initial_secs = 10\nretry_max_secs = 5\nca_file = \"/nonexistent/ca.pem\"\n"),
        );
        assert!(has(&p, "tls.acme.challenge", "http-02"), "{p:?}");
        assert!(
            has(&p, "tls.acme.hosts.0", "not a host of any service"),
            "{p:?}"
        );
        assert!(has(&p, "tls.acme.hosts.1", "host name"), "{p:?}");
        assert!(
            has(&p, "tls.acme.retry_max_secs", "retry_initial_secs"),
            "{p:?}"
        );
        assert!(has(&p, "tls.acme.ca_file", "nonexistent"), "{p:?}");
    }

    #[test]
    fn without_acme_an_uncovered_host_is_still_rejected() {
        let p = problems_with(true, "");
        assert!(has(&p, "tls.certs_dir", "no certificate"), "{p:?}");
    }

    #[test]
    fn acme_hosts_are_exempt_from_coverage_but_others_are_not() {
        let p = problems_with(true, &format!("{OK}hosts = [\"a.example.com\"]\n"));
        assert!(has(&p, "services.b.hosts", "no certificate"), "{p:?}");
        assert!(
            !p.iter().any(|x| x.starts_with("services.a.hosts")),
            "{p:?}"
        );
    }
}
