//! The `portcullis` binary: command line, telemetry, configuration, then the library's `run`.
//!
//! Everything that can fail before serving fails here with a message that names the setting to change.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portcullis::config::{self, Mode, Snapshot};
use portcullis::telemetry::{self, LogFormat};
use portcullis::{Listeners, Shared};

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
        Command::Check { config } => return check(&config),
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

fn check(path: &Path) -> ExitCode {
    match config::load_with(path, &|n| std::env::var(n).ok(), Mode::Check) {
        Ok(snapshot) => {
            print!("{}", describe(&snapshot));
            println!("\n{} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
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
    let report = portcullis::run(listeners, shared, shutdown_signal()).await?;
    stop_echo.cancel();
    if !report.drained {
        anyhow::bail!("shutdown grace period (server.shutdown_grace_secs) ended before every connection finished");
    }
    Ok(())
}

fn spawn_sighup(shared: Arc<Shared>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = shared.reload().await;
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
