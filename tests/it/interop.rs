//! Issue 5 interop: the real proxies from Debian (nginx, Caddy) on loopback in front of the echo upstream, with
//! Portcullis as their auth server, configured from the snippets in `deploy/forward-auth/` rendered with this
//! test's ports and files.
//!
//! Through each proxy: a bypass service is reachable anonymously; a protected one sends a browser to sign in; a full
//! sign-in through the real OpenID provider (`idp`) ends on the service with identity headers at the backend; a
//! Bearer token is accepted; a wrong group gets 403; a client-sent `Remote-User` is never what the backend sees;
//! a sign-out takes effect at once despite the decision cache. A missing program skips loudly, or panics when
//! `CI=true` (`.ci/run` installs nginx and caddy). HAProxy is not tested: its auth-request Lua script is not
//! packaged in Debian.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::harness::{
    client_builder, refused_addr, Echo, EchoReport, Gateway, TestGateway, DOMAIN,
};
use crate::idp::{self, Idp};
use crate::idp_keys::{now, sign_hs256};

const SECRET: &str = "interop-hmac-secret-0123456789-abcdefghijkl";
const CLIENT_SECRET: &str = "interop-client-secret";
const APP: &str = "app.example.test";
const OPEN: &str = "open.example.test";
const ADMINS: &str = "admins.example.test";

/// The path of `program`, or `None` after a loud SKIPPED line (a panic when `CI=true`).
fn program(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let found = dirs
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the interop tests need {name}; .ci/run installs it (apt-get install {name})");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n========== SKIPPED: {name} not installed; forward-auth interop test through {name} skipped (apt-get install {name}) =========="
        );
    }
    found
}

/// Gateway `top_level` TOML: the HS256 issuer and browser sign-in at `issuer`.
fn top_level(issuer: &str) -> String {
    format!(
        "[[auth.issuers]]\nname = \"inhouse\"\nissuer = \"inhouse\"\nsecret = {SECRET:?}\n\n\
         [oidc]\nissuer = {issuer:?}\nclient_id = \"gateway\"\nclient_secret = {CLIENT_SECRET:?}\n\
         token_endpoint_auth_method = \"client_secret_basic\"\n\n\
         [session]\nsecret = \"interop-session-secret-0123456789-abcdefgh\"\n"
    )
}

/// Portcullis with the provider, the echo upstream, and the services app (group staff), open (bypass) and
/// admins (group admins).
struct Setup {
    echo: Echo,
    gw: Gateway,
    idp: Idp,
}

impl Setup {
    async fn start() -> Result<Option<Setup>> {
        let echo = Echo::start().await?;
        // The provider must know the callback URL, which has the gateway's port: start the gateway with a
        // placeholder issuer, then the provider, then reload with the real issuer.
        let mut gw = TestGateway::new()
            .server("trusted_proxies = [\"127.0.0.1\"]")
            .top_level(&top_level("http://127.0.0.1:9"))
            .service(
                "app",
                &format!("upstream = {:?}\nallow_groups = [\"staff\"]\n", echo.url()),
            )
            .service(
                "open",
                &format!("upstream = {:?}\nbypass_auth = true\n", echo.url()),
            )
            .service(
                "admins",
                &format!("upstream = {:?}\nallow_groups = [\"admins\"]\n", echo.url()),
            )
            .spawn()
            .await?;
        let callback = format!(
            "https://auth.{DOMAIN}:{}/oauth2/callback",
            gw.addrs.https.port()
        );
        let Some(idp) = Idp::start(json!({
            "clients": [{"client_id": "gateway", "client_secret": CLIENT_SECRET, "redirect_uris": [callback],
                "token_endpoint_auth_method": "client_secret_basic"}],
            "users": [{"id": "alice", "password": "alice-pw", "email": "alice@example.test", "name": "Alice",
                "groups": ["staff"]}],
        }))
        .await
        else {
            return Ok(None);
        };
        let issuer = idp.issuer.clone();
        gw.update(|c| c.top_level = vec![top_level(&issuer)])?;
        gw.reload().await?;
        Ok(Some(Setup { echo, gw, idp }))
    }

    /// The admin listener as `host:port`, the auth server address of the snippets.
    fn portcullis(&self) -> String {
        self.gw
            .addrs
            .admin
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Writes a certificate for every `*.example.test` host; returns (chain, key) paths.
    fn certificate(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (chain, key) = self
            .gw
            .ca
            .issue(&[format!("*.{DOMAIN}")], Duration::from_secs(3600))?;
        let (c, k) = (dir.join("proxy.pem"), dir.join("proxy.key"));
        std::fs::write(&c, chain)?;
        std::fs::write(&k, key)?;
        Ok((c, k))
    }
}

/// A proxy process; killed on drop.
struct Proxy {
    port: u16,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Spawns `cmd`, collects its output, and waits until `port` accepts connections.
    async fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Result<Proxy> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn proxy")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&output);
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if std::env::var("TEST_LOG").as_deref() == Ok("1") {
                        eprintln!("[proxy] {l}");
                    }
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(l);
                }
            });
        }
        let mut proxy = Proxy {
            port,
            child,
            output,
            _dir: dir,
        };
        for _ in 0..300 {
            if let Some(status) = proxy.child.try_wait()? {
                bail!("proxy exited ({status}):\n{}", proxy.output());
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("proxy did not listen on {port}:\n{}", proxy.output());
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(template))?;
    let mut out = text;
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(at) = out.find("{{") {
        bail!(
            "unrendered placeholder in {template}: {}",
            &out[at..(at + 30).min(out.len())]
        );
    }
    Ok(out)
}

async fn start_nginx(s: &Setup, nginx: &Path) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = s.certificate(dir.path())?;
    let port = refused_addr().await?.port();
    let site = render(
        "deploy/forward-auth/nginx.conf",
        &[
            ("LISTEN", format!("127.0.0.1:{port}")),
            ("SERVER_NAMES", format!("{APP} {OPEN} {ADMINS}")),
            ("CERT", cert.display().to_string()),
            ("KEY", key.display().to_string()),
            ("PORTCULLIS", s.portcullis()),
            ("UPSTREAM", s.echo.url()),
        ],
    )?;
    std::fs::write(dir.path().join("portcullis.conf"), site)?;
    let d = dir.path().display();
    // Root may not hand workers to `nobody` (they could not read the temp dir): run them as root here.
    let user = if nix_is_root() { "user root;\n" } else { "" };
    let main = format!(
        "{user}daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr notice;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         include {d}/portcullis.conf;\n}}\n"
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main)?;
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&conf);
    Proxy::spawn(cmd, port, dir).await
}

async fn start_caddy(s: &Setup, caddy: &Path) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = s.certificate(dir.path())?;
    let port = refused_addr().await?.port();
    let site = render(
        "deploy/forward-auth/Caddyfile",
        &[
            (
                "SITES",
                [APP, OPEN, ADMINS]
                    .iter()
                    .map(|h| format!("https://{h}:{port}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("CERT", cert.display().to_string()),
            ("KEY", key.display().to_string()),
            ("PORTCULLIS", s.portcullis()),
            ("UPSTREAM", s.echo.direct.to_string()),
        ],
    )?;
    let d = dir.path().display();
    let caddyfile =
        format!("{{\n  admin off\n  auto_https off\n  storage file_system {d}/data\n}}\n\n{site}");
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, caddyfile)?;
    let mut cmd = Command::new(caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"));
    Proxy::spawn(cmd, port, dir).await
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn token(groups: &[&str]) -> String {
    let t = now();
    sign_hs256(
        SECRET.as_bytes(),
        None,
        &json!({"iss": "inhouse", "sub": "u-1", "preferred_username": "ann", "email": "ann@example.test",
            "groups": groups, "iat": t, "exp": t + 600}),
    )
}

/// Everything the issue asks of a proxy, through the proxy on `p.port`.
async fn exercise(s: &Setup, p: &Proxy, name: &str) -> Result<()> {
    let url = |host: &str, path: &str| format!("https://{host}:{}{path}", p.port);
    let ctx = |what: &str| format!("{name}: {what}\n--- proxy output ---\n{}", p.output());
    let browser = client_builder(&s.gw.ca_pem)?.cookie_store(true).build()?;
    let api = &s.gw.client;

    // Bypass service, anonymously; the client's Remote-User does not reach the backend.
    let r = api
        .get(url(OPEN, "/hello"))
        .header("Remote-User", "mallory")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", ctx("bypass"));
    let report: EchoReport = r.json().await?;
    assert_eq!(report.uri, "/hello");
    assert!(
        report.all("remote-user").is_empty(),
        "{}: {:?}",
        ctx("spoof on bypass"),
        report.headers
    );

    // A browser is sent to sign in, back to where it was going.
    let r = browser
        .get(url(APP, "/x?y=1"))
        .header("Accept", "text/html")
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "{}",
        ctx("browser to sign-in")
    );
    let start = r
        .headers()
        .get(LOCATION)
        .context("Location")?
        .to_str()?
        .to_owned();
    let want = format!(
        "https://auth.{DOMAIN}:{}/oauth2/start?rd=https%3A%2F%2F{APP}%3A{}%2Fx%3Fy%3D1",
        s.gw.addrs.https.port(),
        p.port
    );
    assert_eq!(start, want, "{}", ctx("sign-in URL"));
    // An API client gets 401.
    let r = api
        .get(url(APP, "/x"))
        .header("Accept", "application/json")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{}", ctx("api 401"));

    // Full sign-in through the provider, ending on the service with identity headers at the backend.
    let r = s.idp.sign_in(&browser, &start, "alice", "alice-pw").await;
    let callback = idp::location(&r).with_context(|| ctx("no redirect to the callback"))?;
    let r = browser.get(&callback).send().await?;
    assert_eq!(r.status(), StatusCode::FOUND, "{}", ctx("callback"));
    let cookie = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("_portcullis="))
        .and_then(|c| c.split(';').next())
        .context("session cookie")?
        .to_owned();
    let back = r
        .headers()
        .get(LOCATION)
        .context("Location")?
        .to_str()?
        .to_owned();
    assert_eq!(back, url(APP, "/x?y=1"));
    let r = browser
        .get(&back)
        .header("Accept", "text/html")
        .header("Remote-User", "mallory")
        .header("remote-groups", "admins")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", ctx("signed in"));
    let report: EchoReport = r.json().await?;
    assert_eq!(report.uri, "/x?y=1");
    assert_eq!(
        report.all("remote-user"),
        vec!["alice"],
        "{}",
        ctx("identity at the backend")
    );
    assert_eq!(report.all("remote-groups"), vec!["staff"]);
    assert_eq!(report.header("remote-email"), Some("alice@example.test"));
    assert_eq!(report.header("remote-name"), Some("Alice"));

    // Signed in but not in the group.
    let r = browser
        .get(url(ADMINS, "/"))
        .header("Accept", "text/html")
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "{}",
        ctx("wrong group (session)")
    );

    // Bearer tokens: accepted, and the wrong group is 403.
    let r = api
        .get(url(APP, "/api"))
        .header("Authorization", format!("Bearer {}", token(&["staff"])))
        .header("Remote-User", "mallory")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", ctx("bearer"));
    let report: EchoReport = r.json().await?;
    assert_eq!(report.all("remote-user"), vec!["ann"]);
    let r = api
        .get(url(APP, "/api"))
        .header("Authorization", format!("Bearer {}", token(&["guests"])))
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "{}",
        ctx("bearer wrong group")
    );

    // Sign-out takes effect at once, although the allow was just cached: the old cookie is refused.
    let r = api
        .get(url(APP, "/y"))
        .header("Cookie", &cookie)
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        ctx("old cookie before sign-out")
    );
    let r = api
        .get(s.gw.url(&format!("auth.{DOMAIN}"), "/oauth2/sign_out"))
        .header("Cookie", &cookie)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FOUND, "sign-out");
    let r = api
        .get(url(APP, "/y"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        ctx("old cookie after sign-out")
    );
    Ok(())
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_the_echo_upstream() -> Result<()> {
    let Some(nginx) = program("nginx") else {
        return Ok(());
    };
    let Some(s) = Setup::start().await? else {
        return Ok(());
    };
    let proxy = start_nginx(&s, &nginx).await?;
    exercise(&s, &proxy, "nginx").await
}

#[tokio::test]
async fn caddy_forward_auth_in_front_of_the_echo_upstream() -> Result<()> {
    let Some(caddy) = program("caddy") else {
        return Ok(());
    };
    let Some(s) = Setup::start().await? else {
        return Ok(());
    };
    let proxy = start_caddy(&s, &caddy).await?;
    exercise(&s, &proxy, "caddy").await
}
