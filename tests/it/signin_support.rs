//! Helpers for the browser sign-in tests (`signin.rs`): gateways wired to the real test OpenID provider, browser-like
//! clients, cookie inspection, and a real `redis-server` for the replica tests.
//!
//! The order of start-up is forced by what is known when: the gateway's HTTPS port exists only after it binds, and
//! the provider's issuer only after it starts. So the gateways start without `[oidc]`, the provider is started with
//! their exact redirect URIs, and then `[oidc]`/`[session]` are written and reloaded.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, SET_COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

use crate::harness::{client_builder, refused_addr, Echo, EchoReport, Gateway, TestGateway};
use crate::idp::{location, Idp, Pkce};

/// The sign-in portal.
pub(crate) const PORTAL: &str = "auth.example.test";
/// A protected service.
pub(crate) const APP: &str = "app.example.test";
/// A second protected service on another subdomain (single sign-on).
pub(crate) const OTHER: &str = "other.example.test";
/// A service only for the `admins` group.
pub(crate) const ADMIN: &str = "admin.example.test";
/// A protected service under a second root domain.
pub(crate) const ORG_APP: &str = "app.example.org";
/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "_portcullis";
/// The key that signs session cookies (shared by replicas).
const SESSION_SECRET: &str = "signin-test-session-key-0123456789-abcdefghijklmnop";
/// Scopes the tests request when they talk to the provider directly.
const SCOPE: &str = "openid profile email groups";
/// Accept header of a browser navigation.
pub(crate) const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// Client secrets registered at the provider.
pub(crate) const BASIC_SECRET: &str = "basic-secret-0123456789";
pub(crate) const POST_SECRET: &str = "post-secret-0123456789";
pub(crate) const NOBC_SECRET: &str = "nobc-secret-0123456789";

/// How a test wants its gateways and provider.
pub(crate) struct Opts {
    /// The gateway's `oidc.client_id`.
    pub(crate) client_id: &'static str,
    /// The gateway's `oidc.client_secret` (none for a public client).
    pub(crate) secret: Option<&'static str>,
    /// The gateway's `oidc.token_endpoint_auth_method`.
    pub(crate) method: &'static str,
    /// Extra lines in `[oidc]`.
    pub(crate) oidc_extra: String,
    /// Extra lines in `[session]`.
    pub(crate) session_extra: String,
    /// How many gateways (replicas) share the configuration.
    pub(crate) replicas: usize,
    /// Register a different redirect URI at the provider than the one the gateway uses.
    pub(crate) wrong_redirect_uri: bool,
    /// Add the `org` service on `app.example.org`.
    pub(crate) org_service: bool,
}

impl Opts {
    /// The gateway as `basic-app` with `client_secret_basic`.
    pub(crate) fn basic() -> Opts {
        Opts::client("basic-app", Some(BASIC_SECRET), "client_secret_basic")
    }

    /// The gateway as `client_id` with this secret and method.
    pub(crate) fn client(
        client_id: &'static str,
        secret: Option<&'static str>,
        method: &'static str,
    ) -> Opts {
        Opts {
            client_id,
            secret,
            method,
            oidc_extra: String::new(),
            session_extra: String::new(),
            replicas: 1,
            wrong_redirect_uri: false,
            org_service: false,
        }
    }

    /// Adds lines to `[session]`.
    pub(crate) fn session(mut self, extra: &str) -> Opts {
        self.session_extra.push_str(extra);
        self.session_extra.push('\n');
        self
    }

    /// Adds lines to `[oidc]`.
    pub(crate) fn oidc(mut self, extra: &str) -> Opts {
        self.oidc_extra.push_str(extra);
        self.oidc_extra.push('\n');
        self
    }
}

/// Gateways configured for browser sign-in against a running test provider.
pub(crate) struct Env {
    /// The gateways (replicas share config, session key and store).
    pub(crate) gws: Vec<Gateway>,
    /// The provider.
    pub(crate) idp: Idp,
    /// The echo upstream (kept running).
    _echo: Echo,
    _ca_file: tempfile::NamedTempFile,
}

impl Env {
    /// Starts everything; `None` (after the provider's loud SKIPPED line) when `node` is missing locally.
    pub(crate) async fn start(opts: Opts) -> Result<Option<Env>> {
        let echo = Echo::start().await?;
        let upstream = echo.url();
        let mut gws = Vec::new();
        for _ in 0..opts.replicas.max(1) {
            let mut b = TestGateway::new()
                .certificate(&[
                    "example.test",
                    "*.example.test",
                    "example.org",
                    "*.example.org",
                ])
                .service("app", &format!("upstream = {upstream:?}"))
                .service("other", &format!("upstream = {upstream:?}"))
                .service(
                    "admin",
                    &format!("upstream = {upstream:?}\nallow_groups = [\"admins\"]"),
                );
            if opts.org_service {
                b = b.service(
                    "org",
                    &format!("upstream = {upstream:?}\nhosts = [{ORG_APP:?}]"),
                );
            }
            gws.push(b.spawn().await?);
        }

        // The provider trusts the first gateway's CA for back-channel deliveries to the portal.
        let mut ca_file = tempfile::Builder::new()
            .prefix("signin-ca-")
            .suffix(".pem")
            .tempfile()?;
        ca_file.write_all(gws[0].ca_pem.as_bytes())?;
        ca_file.flush()?;

        let callback_path = if opts.wrong_redirect_uri {
            "/oauth2/callback-registered-elsewhere"
        } else {
            "/oauth2/callback"
        };
        let callbacks: Vec<String> = gws.iter().map(|g| g.url(PORTAL, callback_path)).collect();
        let signed_out: Vec<String> = gws
            .iter()
            .map(|g| g.url(PORTAL, "/oauth2/signed-out"))
            .collect();
        let backchannel = gws[0].url(PORTAL, "/oauth2/backchannel-logout");
        let setup = json!({
            "clients": [
                {
                    "client_id": "basic-app", "client_secret": BASIC_SECRET,
                    "redirect_uris": callbacks, "post_logout_redirect_uris": signed_out,
                    "token_endpoint_auth_method": "client_secret_basic",
                    "backchannel_logout_uri": backchannel,
                    "backchannel_logout_session_required": true,
                },
                {
                    "client_id": "post-app", "client_secret": POST_SECRET,
                    "redirect_uris": callbacks, "post_logout_redirect_uris": signed_out,
                    "token_endpoint_auth_method": "client_secret_post",
                },
                {
                    "client_id": "spa",
                    "redirect_uris": callbacks, "post_logout_redirect_uris": signed_out,
                    "token_endpoint_auth_method": "none",
                },
                {
                    "client_id": "nobc-app", "client_secret": NOBC_SECRET,
                    "redirect_uris": callbacks, "post_logout_redirect_uris": signed_out,
                    "token_endpoint_auth_method": "client_secret_basic",
                },
            ],
            "users": [
                { "id": "alice", "password": "alice-pw", "email": "alice@example.test", "name": "Alice", "groups": ["admins", "staff"] },
                { "id": "bob", "password": "bob-pw", "email": "bob@example.test", "name": "Bob", "groups": ["staff"] },
            ],
            "backchannel_ca_file": ca_file.path().display().to_string(),
            "host_overrides": { PORTAL: "127.0.0.1" },
        });
        let Some(idp) = Idp::start(setup).await else {
            return Ok(None);
        };

        let secret = opts
            .secret
            .map(|s| format!("client_secret = {s:?}\n"))
            .unwrap_or_default();
        let oidc = format!(
            "[oidc]\nissuer = {:?}\nclient_id = {:?}\n{secret}token_endpoint_auth_method = {:?}\n{}\n[session]\nsecret = {SESSION_SECRET:?}\n{}",
            idp.issuer, opts.client_id, opts.method, opts.oidc_extra, opts.session_extra
        );
        for gw in &mut gws {
            gw.update(|c| {
                c.top_level.push(oidc.clone());
            })?;
            gw.reload().await?;
        }
        Ok(Some(Env {
            gws,
            idp,
            _echo: echo,
            _ca_file: ca_file,
        }))
    }

    /// The first gateway.
    pub(crate) fn gw(&self) -> &Gateway {
        &self.gws[0]
    }

    /// `https://HOST:PORT/PATH` on the first gateway.
    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        self.gw().url(host, path)
    }

    /// A browser: cookie jar, no automatic redirects, `Accept: text/html`, trusting every gateway's CA and
    /// resolving the test hosts (also `*.example.org`) to 127.0.0.1.
    pub(crate) fn browser(&self) -> reqwest::Client {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(BROWSER_ACCEPT));
        self.client_builder()
            .cookie_store(true)
            .default_headers(headers)
            .build()
            .expect("browser client")
    }

    /// A client without a cookie jar or default headers (an API client, or a hand-crafted `Cookie`).
    pub(crate) fn api(&self) -> reqwest::Client {
        self.client_builder().build().expect("api client")
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut b = client_builder(&self.gws[0].ca_pem)
            .expect("client builder")
            .dns_resolver(Arc::new(LoopbackResolver))
            .timeout(Duration::from_secs(30));
        for gw in &self.gws[1..] {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(gw.ca_pem.as_bytes()).expect("CA PEM"),
            );
        }
        b
    }

    /// Walks a browser from `start` (a service URL) through the provider's login form to the gateway's callback
    /// and returns the callback's response (not followed).
    pub(crate) async fn sign_in(
        &self,
        browser: &reqwest::Client,
        start: &str,
        user: &str,
        password: &str,
    ) -> Result<reqwest::Response> {
        let res = self.idp.sign_in(browser, start, user, password).await;
        let Some(callback) = location(&res) else {
            bail!(
                "the provider did not redirect back (status {}): {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        };
        if !callback.contains("/oauth2/callback") {
            bail!("the provider redirected to {callback}, not to the gateway's callback");
        }
        Ok(browser.get(callback).send().await?)
    }

    /// [`Env::sign_in`], requiring success: the callback redirects back to `start` with a session cookie. Returns
    /// the session cookie's `Set-Cookie` value.
    pub(crate) async fn signed_in(
        &self,
        browser: &reqwest::Client,
        start: &str,
        user: &str,
        password: &str,
    ) -> Result<String> {
        let res = self.sign_in(browser, start, user, password).await?;
        let status = res.status();
        let set = set_cookie(&res, SESSION_COOKIE);
        let loc = location(&res);
        if status != StatusCode::FOUND || set.is_none() {
            bail!(
                "callback answered {status} (Location {loc:?}): {}\nprovider log:\n{}",
                res.text().await.unwrap_or_default(),
                self.idp.logs()
            );
        }
        assert_eq!(
            loc.as_deref(),
            Some(start),
            "the callback returns to where sign-in began"
        );
        Ok(set.unwrap_or_default())
    }

    /// GETs `url` with `client` and parses the echo report, requiring 200.
    pub(crate) async fn echo_at(&self, client: &reqwest::Client, url: &str) -> Result<EchoReport> {
        let res = client.get(url).send().await?;
        if res.status() != StatusCode::OK {
            bail!(
                "GET {url}: {} (Location {:?}): {}",
                res.status(),
                location(&res),
                res.text().await.unwrap_or_default()
            );
        }
        Ok(res.json().await?)
    }

    /// Status of an API-like GET (`Accept: application/json`) with `client`.
    pub(crate) async fn api_status(&self, client: &reqwest::Client, url: &str) -> Result<u16> {
        Ok(client
            .get(url)
            .header(ACCEPT, "application/json")
            .send()
            .await?
            .status()
            .as_u16())
    }

    /// Tokens for `user` straight from the provider (code flow with PKCE as `basic-app`, the redirect URI the gateway
    /// uses, but the code is exchanged here instead of at the gateway's callback).
    pub(crate) async fn provider_tokens(&self, user: &str, password: &str) -> Result<Value> {
        let b = self.browser();
        let pkce = Pkce::new();
        let redirect_uri = self.url(PORTAL, "/oauth2/callback");
        let mut url = Url::parse(&self.idp.url("/auth"))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "basic-app")
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", SCOPE)
            .append_pair("state", "direct-state")
            .append_pair("nonce", "direct-nonce")
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        let res = self.idp.sign_in(&b, url.as_str(), user, password).await;
        let back = location(&res).context("no redirect back from the provider")?;
        let code = query(&back)
            .remove("code")
            .with_context(|| format!("no code in {back}"))?;
        let res = b
            .post(self.idp.url("/token"))
            .basic_auth("basic-app", Some(BASIC_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
                ("code_verifier", pkce.verifier.as_str()),
            ])
            .send()
            .await?;
        if res.status() != StatusCode::OK {
            bail!("token endpoint: {} {}", res.status(), res.text().await?);
        }
        Ok(res.json().await?)
    }

    /// Ends the provider session of `browser` directly at the provider (not through the gateway): RP-less logout,
    /// confirmed automatically; back-channel deliveries happen before it answers.
    pub(crate) async fn end_provider_session(&self, browser: &reqwest::Client) -> Result<()> {
        let res = self
            .idp
            .sign_in(browser, &self.idp.url("/session/end"), "-", "-")
            .await;
        if res.status() != StatusCode::OK {
            bail!(
                "provider logout ended with {} (Location {:?})",
                res.status(),
                location(&res)
            );
        }
        Ok(())
    }

    /// A counter from the provider's `/_test/stats` (0 when absent).
    pub(crate) async fn stat(&self, name: &str) -> u64 {
        self.idp.stats().await[name].as_u64().unwrap_or(0)
    }
}

/// The `Set-Cookie` value for cookie `name` in a response, if any.
pub(crate) fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&prefix))
        .map(str::to_owned)
}

/// Every `Set-Cookie` value of a response.
pub(crate) fn set_cookies(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// The `name=value` part of a `Set-Cookie` value.
pub(crate) fn pair(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The query parameters of a URL.
pub(crate) fn query(url: &str) -> HashMap<String, String> {
    Url::parse(url)
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// Resolves `*.test`, `example.org` and `*.example.org` to 127.0.0.1 (the port comes from the URL).
struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let n = name.as_str();
        let ok = n.ends_with(".test") || n == "example.org" || n.ends_with(".example.org");
        Box::pin(async move {
            if ok {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    0,
                )));
                Ok(addrs)
            } else {
                Err("only test names resolve in tests".into())
            }
        })
    }
}

/// A real `redis-server` on loopback: no persistence, killed on drop.
pub(crate) struct Redis {
    /// Its port.
    pub(crate) port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    /// Starts `redis-server` on a free port. `None` (after a loud SKIPPED line) when it is not installed, unless
    /// `CI=true`, where that is a panic.
    pub(crate) async fn start() -> Result<Option<Redis>> {
        if let Err(why) = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
        {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "the replica tests need redis-server ({why}); install the redis-server package"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n========== SKIPPED: redis-server not installed ({why}); Redis session store test skipped =========="
            );
            return Ok(None);
        }
        let port = refused_addr().await?.port();
        let mut r = Redis { port, child: None };
        r.restart().await?;
        Ok(Some(r))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers `PING`.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        self.child = Some(child);
        let port = self.port;
        let up = crate::harness::wait_until(Duration::from_secs(10), || async move {
            ping(port).await.unwrap_or(false)
        })
        .await;
        if !up {
            bail!("redis-server did not answer PING on port {port}");
        }
        Ok(())
    }

    /// Kills the server and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ping(port: u16) -> Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    s.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await??;
    Ok(buf[..n].starts_with(b"+PONG"))
}
