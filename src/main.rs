//! The `portcullis` binary: command line, telemetry, configuration, then the library's `run`.
//!
//! Everything that can fail before serving fails here with a message that names the setting to change.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portcullis::config::{self, Mode, Snapshot, Summary};
use portcullis::telemetry::{self, LogFormat};
use portcullis::{systemd, Listeners, Shared};

/// mimalloc instead of the C library's allocator: the request path allocates a few dozen small, short-lived
/// buffers; with mimalloc a proxied request takes about 4% fewer instructions (callgrind, see the README's
/// benchmark section). `no_thp` keeps idle RSS where glibc had it (12.8 MiB instead of 22.5 with huge pages).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bundled demo configuration, used by `run` without `--config`.
const DEMO_CONFIG: &str = "config/demo.toml";

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A reverse-proxy auth gateway: TLS, hostname routing, OIDC/JWT auth and forward-auth in one binary"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "PORTCULLIS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (with no --config: the bundled demo, config/demo.toml).
    Run {
        /// Configuration file.
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the resolved routing table and settings.
    Check {
        /// Configuration file.
        #[arg(long, short, env = "PORTCULLIS_CONFIG", default_value = DEMO_CONFIG)]
        config: PathBuf,
        /// Also fetch the OpenID provider's discovery document and key set and report what would make sign-in
        /// fail (issuer mismatch, unsupported auth method, scopes or claims, unreachable endpoints).
        #[arg(long)]
        online: bool,
        /// Instead of the table, print what loading this file into a running instance would change; the
        /// instance's admin listener, e.g. `http://127.0.0.1:9090` (its `/config` is fetched).
        #[arg(long, value_name = "ADMIN_URL")]
        against: Option<String>,
    },
    /// Probe the admin listener's readiness: exit 0 when it answers 200, 1 otherwise (container health checks).
    Healthcheck {
        /// URL to probe; default: `/readyz` on `server.admin` of --config, else http://127.0.0.1:9090/readyz.
        #[arg(long)]
        url: Option<String>,
        /// Configuration file whose `server.admin` is probed when --url is not given.
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the echo backend alone (the demo's and tests' upstream).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format) {
        eprintln!("portcullis: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Check {
            config,
            online,
            against: None,
        } => return runtime.block_on(check(&config, online)),
        Command::Check {
            config,
            against: Some(url),
            ..
        } => return runtime.block_on(check_against(&config, &url)),
        Command::Healthcheck { url, config } => {
            return runtime.block_on(healthcheck(url, config.as_deref()))
        }
        Command::Run { config } => {
            runtime.block_on(serve(config.unwrap_or_else(|| PathBuf::from(DEMO_CONFIG))))
        }
        Command::Echo { listen } => runtime.block_on(echo(listen)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(path: &Path, online: bool) -> ExitCode {
    match config::load_with(path, &|n| std::env::var(n).ok(), Mode::Check) {
        Ok(snapshot) => {
            print!("{}", describe(&snapshot));
            println!("\n{} is valid", path.display());
            if online {
                let Some(o) = snapshot.auth.oidc() else {
                    println!("--online: no [oidc] configured, nothing to check");
                    return ExitCode::SUCCESS;
                };
                let findings = portcullis::auth::online_check(o).await;
                if findings.is_empty() {
                    println!(
                        "--online: the provider {} fits this configuration",
                        o.issuer_url()
                    );
                } else {
                    for f in &findings {
                        eprintln!("--online: {f}");
                    }
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// How long `healthcheck` and `check --against` wait for the admin listener.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The readiness URL probed when neither --url nor a config with `server.admin` is given.
const DEFAULT_HEALTHCHECK_URL: &str = "http://127.0.0.1:9090/readyz";

async fn healthcheck(url: Option<String>, config: Option<&Path>) -> ExitCode {
    let url = match (url, config) {
        (Some(url), _) => url,
        (None, Some(path)) => match admin_url_from(path) {
            Ok(base) => format!("{base}/readyz"),
            Err(e) => {
                eprintln!("unhealthy: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => DEFAULT_HEALTHCHECK_URL.to_owned(),
    };
    match portcullis::probe::get(&url, PROBE_TIMEOUT).await {
        Ok((status, _)) if status == http::StatusCode::OK => {
            println!("healthy: {url} answered {status}");
            ExitCode::SUCCESS
        }
        Ok((status, _)) => {
            eprintln!("unhealthy: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `http://ip:port` of the file's admin listener, reading only `server.admin` (with `${VAR}` substitution), so
/// a health check does not depend on certificates or secret files being readable.
fn admin_url_from(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut problems = config::Problems::default();
    let file = config::source::parse(&text, &|n| std::env::var(n).ok(), &mut problems)
        .with_context(|| format!("{} is not a valid configuration file", path.display()))?;
    let admin = file.server.admin.with_context(|| {
        format!(
            "{} has no admin listener (server.admin); pass --url",
            path.display()
        )
    })?;
    let mut addr: std::net::SocketAddr = admin.parse().with_context(|| {
        format!(
            "server.admin = {admin:?} in {} is not ip:port",
            path.display()
        )
    })?;
    // A wildcard listener is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}"))
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `check --against`: validates the file, fetches the running instance's `/config` and prints the difference.
async fn check_against(path: &Path, admin: &str) -> ExitCode {
    let candidate = match config::load_with(path, &|n| std::env::var(n).ok(), Mode::Check) {
        Ok(snapshot) => Summary::of(&snapshot),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let url = if admin.trim_end_matches('/').ends_with("/config") {
        admin.to_owned()
    } else {
        format!("{}/config", admin.trim_end_matches('/'))
    };
    let running: Summary = match portcullis::probe::get(&url, PROBE_TIMEOUT).await {
        Ok((status, body)) if status == http::StatusCode::OK => {
            match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{url} did not answer with a configuration summary: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Ok((status, _)) => {
            eprintln!("{url} answered {status}: is this a portcullis admin listener?");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "cannot fetch the running configuration: {}",
                error_chain(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    println!(
        "running     {} (sha256 {}) at {url}",
        running.source, running.hash
    );
    println!("candidate   {} (sha256 {})", path.display(), candidate.hash);
    let changes = running.diff(&candidate);
    if changes.is_empty() {
        if running.hash == candidate.hash {
            println!("no changes: the candidate is the running file");
        } else {
            println!("no changes to services, hosts, upstreams or policies");
        }
    } else {
        for change in &changes {
            println!("{change}");
        }
        println!(
            "{} change{}; a reload (SIGHUP, or the file watcher) would apply them",
            changes.len(),
            if changes.len() == 1 { "" } else { "s" }
        );
    }
    ExitCode::SUCCESS
}

/// The effective settings and the routing table, for `check` and the start-up log.
fn describe(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let opt =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let _ = writeln!(
        out,
        "config      {} (sha256 {})",
        s.source.display(),
        s.hash
    );
    let _ = writeln!(
        out,
        "domain      {}",
        s.domain.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        out,
        "listeners   https {}  http {}  admin {}",
        s.listen.https,
        opt(s.listen.http),
        opt(s.listen.admin)
    );
    let nets: Vec<String> = s
        .trusted_proxies
        .nets()
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "trusted     {}",
        if nets.is_empty() {
            "(none)".to_owned()
        } else {
            nets.join(", ")
        }
    );
    let t = &s.timeouts;
    let _ = writeln!(
        out,
        "timeouts    tls_handshake {}s  request_header {}s  upstream_connect {}s  upstream_response {}s  idle {}s  shutdown_grace {}s",
        t.tls_handshake.as_secs(),
        t.request_header.as_secs(),
        t.upstream_connect.as_secs(),
        t.upstream_response.as_secs(),
        t.idle.as_secs(),
        s.shutdown_grace.as_secs()
    );
    for i in s.auth.issuers() {
        let _ = writeln!(
            out,
            "issuer      {}  {}  {}  audiences {}  algorithms {}",
            i.name(),
            i.url(),
            if i.is_shared_secret() {
                "shared secret"
            } else {
                "jwks"
            },
            if i.audiences().is_empty() {
                "(any)".to_owned()
            } else {
                i.audiences().join(", ")
            },
            i.algorithms().join(" ")
        );
    }
    if let Some(o) = s.auth.oidc() {
        for line in o.describe(s.listen.https.port()) {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "tls         certs_dir {}  self_signed {}  default_certificate {}  watch {}",
        s.tls.certs_dir.display(),
        s.tls.self_signed,
        s.tls.default_certificate.as_deref().unwrap_or("(first)"),
        s.watch
    );
    if let Some(a) = &s.tls.acme {
        let hosts: Vec<String> = a.hosts.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "acme        {}  {}  {}  renew_before_days {}  hosts {}",
            a.directory,
            a.challenge,
            a.contact.as_uri(),
            a.renew_before.as_secs() / 86_400,
            hosts.join(", ")
        );
    }
    for c in s.certs.entries() {
        let _ = writeln!(
            out,
            "certificate {}  {}",
            c.source.display(),
            c.names.join(", ")
        );
    }
    let rows: Vec<[String; 4]> = s
        .routes
        .iter()
        .flat_map(|r| {
            r.hosts.iter().map(move |h| {
                [
                    h.to_string(),
                    r.name.clone(),
                    r.upstream.to_string(),
                    r.policy.describe(),
                ]
            })
        })
        .collect();
    let header = ["HOST", "SERVICE", "UPSTREAM", "POLICY"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let _ = writeln!(out);
    let line = |cells: [&str; 4]| {
        format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    let _ = writeln!(out, "{}", line(header));
    for row in &rows {
        let _ = writeln!(out, "{}", line([&row[0], &row[1], &row[2], &row[3]]));
    }
    out
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let snapshot = tokio::task::spawn_blocking({
        let path = path.clone();
        move || config::load(&path)
    })
    .await
    .context("configuration loader failed")??;
    for line in describe(&snapshot).lines() {
        tracing::info!("{line}");
    }
    if let Some(ca) = &snapshot.tls.dev_ca {
        tracing::info!(ca.file = %ca.display(), "self-signed development certificates: trust this CA, e.g. curl --cacert {}", ca.display());
    }
    let listeners = Listeners::bind(&snapshot.listen).await?;
    let stop_echo = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = snapshot.demo_echo {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the demo echo backend on {addr} (demo.echo)"))?;
        tracing::info!(echo.addr = %addr, "demo echo backend listening");
        let stop = stop_echo.clone();
        tokio::spawn(
            async move { portcullis::echo::serve(listener, stop.cancelled_owned()).await },
        );
    }
    let shared = Shared::new(snapshot, path);
    spawn_sighup(Arc::clone(&shared))?;
    tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            shared.wait_ready().await;
            systemd::ready(&serving_status(&shared));
        }
    });
    let report = portcullis::run(listeners, shared, async {
        shutdown_signal().await;
        systemd::stopping();
    })
    .await?;
    stop_echo.cancel();
    if !report.drained {
        anyhow::bail!("shutdown grace period (server.shutdown_grace_secs) ended before every connection finished");
    }
    Ok(())
}

/// The service manager's status line while serving.
fn serving_status(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    format!(
        "serving {} services, config sha256 {}",
        snap.routes.len(),
        snap.hash
    )
}

fn spawn_sighup(shared: Arc<Shared>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading configuration");
                systemd::reloading();
                let status = match shared.reload().await {
                    Ok(_) => serving_status(&shared),
                    Err(_) => format!(
                        "{}; last reload rejected (see the log)",
                        serving_status(&shared)
                    ),
                };
                // The previous snapshot keeps serving after a rejected reload, so the service is ready either way.
                systemd::ready(&status);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = shared;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn echo(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind the echo backend on {listen}"))?;
    tracing::info!(echo.addr = %listen, "echo backend listening");
    portcullis::echo::serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
