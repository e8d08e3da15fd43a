//! A real OpenID provider for the integration tests: the certified `oidc-provider` npm package, started on loopback
//! by [`Idp::start`] from `tests/idp/server.mjs` (setup schema in `tests/idp/README.md`).
//!
//! The provider is strict about client authentication (the method used must be the registered
//! `token_endpoint_auth_method`, like Authelia), signs users in with a plain HTML form (no consent page), confirms
//! RP-initiated logout automatically, delivers back-channel logout tokens, and has test controls under `/_test/`.
//!
//! The tests at the bottom prove the provider and these helpers end to end, without the gateway.

// Test harness: a failed setup step is a test failure, so panicking with a message is the error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::LOCATION;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How long the provider may take to print its ready line (first start may also run `npm ci` before this).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running test OpenID provider. Dropping it kills the `node` process (and closing its stdin makes it exit too).
pub(crate) struct Idp {
    /// `http://127.0.0.1:<port>`, also the base of every endpoint.
    pub(crate) issuer: String,
    http: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
    _child: Child,
    _stdin: ChildStdin,
    _setup_file: tempfile::NamedTempFile,
}

impl Idp {
    /// Starts a provider configured by `setup` (see `tests/idp/README.md`). Returns `None` — after printing a loud
    /// `SKIPPED` line — when `node` is not installed, unless `CI=true`, where that is a panic. Installs
    /// `tests/idp/node_modules` with `npm ci` first when missing (once; parallel tests wait for it).
    pub(crate) async fn start(setup: Value) -> Option<Idp> {
        if let Err(why) = node_usable() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "the OpenID provider tests need Node.js >= 20.19 ({why}); .ci/run installs it"
                );
            }
            // Straight to the process's stderr, not eprintln!, so the test harness's capture does not hide it.
            let _ = writeln!(
                std::io::stderr(),
                "\n========== SKIPPED: node not installed or unusable ({why}); OpenID provider test skipped =========="
            );
            return None;
        }
        let dir = idp_dir();
        tokio::task::spawn_blocking(move || ensure_node_modules(&dir))
            .await
            .expect("npm ci task panicked");

        let mut setup_file = tempfile::Builder::new()
            .prefix("idp-setup-")
            .suffix(".json")
            .tempfile()
            .expect("create the IdP setup file");
        serde_json::to_writer_pretty(&mut setup_file, &setup).expect("write the IdP setup file");

        let mut child = Command::new("node")
            .arg(idp_dir().join("server.mjs"))
            .arg(setup_file.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node tests/idp/server.mjs");
        let stdin = child.stdin.take().expect("child stdin");
        let stdout = child.stdout.take().expect("child stdout");
        let stderr = child.stderr.take().expect("child stderr");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("TEST_LOG").is_some_and(|v| v == "1");
        let sink = logs.clone();
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("{line}");
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });

        let mut stdout = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await;
        let issuer = match &ready {
            Ok(Ok(Some(line))) => serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["issuer"].as_str().map(str::to_owned)),
            _ => None,
        };
        let Some(issuer) = issuer else {
            // Let it finish writing why (the stderr task ends at EOF once the process is gone).
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
            let logs = logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
            panic!("the test OpenID provider did not start (ready line: {ready:?}); its stderr:\n{logs}");
        };
        // Nothing else comes on stdout, but keep the pipe drained.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        Some(Idp {
            issuer,
            http: plain_client(),
            logs,
            _child: child,
            _stdin: stdin,
            _setup_file: setup_file,
        })
    }

    /// `issuer` + `path` (`path` starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Replaces `user`'s groups; the next token refresh, sign-in and userinfo call see the new ones.
    pub(crate) async fn set_groups(&self, user: &str, groups: &[&str]) {
        let res = self
            .http
            .post(self.url(&format!("/_test/users/{user}/groups")))
            .json(&groups)
            .send()
            .await
            .expect("POST /_test/users/:id/groups");
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "set_groups({user}): {:?}",
            res.text().await
        );
    }

    /// Requests seen per endpoint since start (or the last [`Idp::reset_stats`]): `token`, `userinfo`, `jwks`, `auth`,
    /// `discovery`, `end_session` (always present), and when non-zero `auth_resume`, `interaction`, `revocation`,
    /// `introspection`, `login_ok`, `login_failed`, `strict_auth_rejected`, `backchannel_logout_ok`,
    /// `backchannel_logout_error`.
    pub(crate) async fn stats(&self) -> Value {
        self.http
            .get(self.url("/_test/stats"))
            .send()
            .await
            .expect("GET /_test/stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Sets all counters of [`Idp::stats`] back to zero.
    pub(crate) async fn reset_stats(&self) {
        let res = self
            .http
            .post(self.url("/_test/stats/reset"))
            .send()
            .await
            .expect("POST /_test/stats/reset");
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    /// The provider's discovery document.
    pub(crate) async fn discovery(&self) -> Value {
        self.http
            .get(self.url("/.well-known/openid-configuration"))
            .send()
            .await
            .expect("GET discovery")
            .json()
            .await
            .expect("discovery JSON")
    }

    /// Everything the provider wrote to stderr so far (one line per request, logins, logout deliveries, errors).
    /// Also echoed live with `TEST_LOG=1`.
    pub(crate) fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Walks a browser sign-in from `start_url` (the provider's authorize URL, or a gateway URL that redirects to
    /// it): GETs and follows `Location`s by hand, submits the login form with `user`/`password` when it appears,
    /// and returns the first response that redirects away from the provider after reaching it (normally the
    /// redirect to the client's `redirect_uri` with `code`, `state` and `iss`; not followed). Any non-redirect
    /// response is returned as is (a refused redirect URI's error page, a wrong password's 401 login form). The
    /// client must keep cookies and must not follow redirects itself.
    pub(crate) async fn sign_in(
        &self,
        client: &reqwest::Client,
        start_url: &str,
        user: &str,
        password: &str,
    ) -> reqwest::Response {
        let origin = Url::parse(&self.issuer).expect("issuer URL").origin();
        let mut url = Url::parse(start_url).expect("start URL");
        let mut reached_idp = false;
        for _ in 0..20 {
            let at_idp = url.origin() == origin;
            reached_idp |= at_idp;
            let res = if at_idp && url.path().starts_with("/interaction/") {
                // The login form (or an automatic consent redirect).
                let page = client
                    .get(url.clone())
                    .send()
                    .await
                    .expect("GET interaction");
                if page.status() == StatusCode::OK {
                    login(client, url.as_str(), user, password).await
                } else {
                    page
                }
            } else {
                client
                    .get(url.clone())
                    .send()
                    .await
                    .expect("GET during sign-in")
            };
            let Some(next) = location(&res) else {
                return res;
            };
            let next = url.join(&next).expect("Location URL");
            if reached_idp && res.url().origin() == origin && next.origin() != origin {
                return res;
            }
            url = next;
        }
        panic!("sign-in did not leave the provider after 20 redirects (last: {url})");
    }
}

/// Submits the provider's login form found at `login_page_url` (an `/interaction/<uid>` URL) as `user`/`password`
/// and returns the form POST's response without following it: on success a 303 whose `Location` resumes the
/// authorization at the provider (`/auth/<uid>`), on a wrong login or password a 401 with the form again. Redirects
/// are not followed unless `client` itself follows them; `client` must keep cookies (the interaction cookie).
pub(crate) async fn login(
    client: &reqwest::Client,
    login_page_url: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let page = client
        .get(login_page_url)
        .send()
        .await
        .expect("GET login page");
    let page_url = page.url().clone();
    let html = page.text().await.expect("login page body");
    let action = form_action(&html)
        .unwrap_or_else(|| panic!("no <form method=\"post\"> in the login page:\n{html}"));
    let action = page_url.join(&action).expect("form action URL");
    client
        .post(action)
        .form(&[("login", user), ("password", password)])
        .send()
        .await
        .expect("POST login form")
}

/// The `action` of the first `<form method="post" ...>` in `html`, HTML entities for `&` undone.
pub(crate) fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form method=\"post\"")?;
    let tag = &html[start..start + html[start..].find('>')?];
    let at = tag.find("action=\"")? + "action=\"".len();
    let value = &tag[at..at + tag[at..].find('"')?];
    Some(value.replace("&amp;", "&"))
}

/// The `Location` header of a redirect response, if any.
pub(crate) fn location(res: &reqwest::Response) -> Option<String> {
    if !res.status().is_redirection() {
        return None;
    }
    res.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The payload of a compact JWT, decoded without any signature check (tests only).
pub(crate) fn jwt_payload(jwt: &str) -> Value {
    let payload = jwt
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes =
        base64url_decode(payload).unwrap_or_else(|| panic!("JWT payload is not base64url: {jwt}"));
    serde_json::from_slice(&bytes).expect("JWT payload JSON")
}

/// A PKCE pair for `code_challenge_method=S256`.
pub(crate) struct Pkce {
    /// Sent to the token endpoint as `code_verifier`.
    pub(crate) verifier: String,
    /// Sent to the authorize endpoint as `code_challenge`.
    pub(crate) challenge: String,
}

impl Pkce {
    /// A fresh random verifier and its S256 challenge.
    pub(crate) fn new() -> Pkce {
        use rand::RngCore;
        use sha2::Digest;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let verifier = base64url_encode(&bytes);
        let challenge = base64url_encode(&sha2::Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

/// A reqwest client for talking to the provider directly: no proxy, no redirects followed.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

/// `Ok` when `node --version` runs and is at least 20.19 (what oidc-provider 9 needs).
fn node_usable() -> Result<(), String> {
    let out = match std::process::Command::new("node").arg("--version").output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err("`node` not found on PATH".into()),
        Err(e) => return Err(format!("`node --version` failed: {e}")),
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (20, 19) {
        return Err(format!("node {version} is older than 20.19"));
    }
    Ok(())
}

/// Runs `npm ci --prefix tests/idp` unless `node_modules` is complete. Serialized within this process by a mutex
/// and across processes (e.g. nextest) by a lock directory.
fn ensure_node_modules(dir: &Path) {
    static LOCK: Mutex<()> = Mutex::new(());
    let installed = || dir.join("node_modules").join(".package-lock.json").exists();
    if installed() {
        return;
    }
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lock_dir = dir.join(".npm-ci.lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if installed() {
            return;
        }
        match std::fs::create_dir(&lock_dir) {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Another process is installing; take over a lock left behind by a killed one.
                let stale = std::fs::metadata(&lock_dir)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| {
                        SystemTime::now().duration_since(t).unwrap_or_default()
                            > Duration::from_secs(300)
                    });
                if stale {
                    let _ = std::fs::remove_dir(&lock_dir);
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {}",
                    lock_dir.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot create {}: {e}", lock_dir.display()),
        }
    }
    eprintln!(
        "tests/idp/node_modules missing: running npm ci --prefix {}",
        dir.display()
    );
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status();
    let _ = std::fs::remove_dir(&lock_dir);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("npm ci --prefix {} failed ({s})", dir.display()),
        Err(e) => panic!("cannot run npm ci (is npm installed?): {e}"),
    }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::io::Write as _;

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    const REDIRECT: &str = "http://127.0.0.1:1/callback";
    const SIGNED_OUT: &str = "http://127.0.0.1:1/signed-out";
    const SCOPE: &str = "openid profile email groups";

    /// Three clients (basic, post, public) and two users (alice in `admins`, bob in nothing).
    fn setup(backchannel_logout_uri: Option<&str>) -> Value {
        let mut basic = json!({
            "client_id": "basic-app", "client_secret": "basic-secret",
            "redirect_uris": [REDIRECT], "post_logout_redirect_uris": [SIGNED_OUT],
            "token_endpoint_auth_method": "client_secret_basic",
        });
        if let Some(uri) = backchannel_logout_uri {
            basic["backchannel_logout_uri"] = json!(uri);
            basic["backchannel_logout_session_required"] = json!(true);
        }
        json!({
            "clients": [
                basic,
                {
                    "client_id": "post-app", "client_secret": "post-secret",
                    "redirect_uris": [REDIRECT], "post_logout_redirect_uris": [SIGNED_OUT],
                    "token_endpoint_auth_method": "client_secret_post",
                },
                {
                    "client_id": "spa", "redirect_uris": [REDIRECT],
                    "token_endpoint_auth_method": "none",
                    "grant_types": ["authorization_code", "refresh_token"],
                },
            ],
            "users": [
                { "id": "alice", "password": "alice-pw", "email": "alice@example.test", "name": "Alice", "groups": ["admins"] },
                { "id": "bob", "password": "bob-pw", "email": "bob@example.test", "name": "Bob", "groups": [] },
            ],
        })
    }

    /// A browser-like client: cookie jar, no automatic redirects.
    fn browser() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .expect("reqwest client")
    }

    /// How a token request authenticates the client.
    #[derive(Clone, Copy)]
    enum Auth<'a> {
        Basic(&'a str),
        Post(&'a str),
        None,
    }

    fn authorize_url(idp: &Idp, client_id: &str, redirect_uri: &str, pkce: &Pkce) -> String {
        let mut url = Url::parse(&idp.url("/auth")).expect("auth URL");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", SCOPE)
            .append_pair("state", "state-123")
            .append_pair("nonce", "nonce-456")
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    fn query(url: &str) -> HashMap<String, String> {
        Url::parse(url)
            .expect("URL")
            .query_pairs()
            .into_owned()
            .collect()
    }

    /// Signs `user` in through the browser flow and returns the authorization code.
    async fn code_for(
        idp: &Idp,
        browser: &reqwest::Client,
        client_id: &str,
        pkce: &Pkce,
        user: &str,
        pw: &str,
    ) -> String {
        let res = idp
            .sign_in(
                browser,
                &authorize_url(idp, client_id, REDIRECT, pkce),
                user,
                pw,
            )
            .await;
        let to = location(&res)
            .unwrap_or_else(|| panic!("sign-in ended with {} instead of a redirect", res.status()));
        assert!(to.starts_with(REDIRECT), "redirected to {to}");
        let q = query(&to);
        assert_eq!(q.get("state").map(String::as_str), Some("state-123"));
        assert_eq!(q.get("iss"), Some(&idp.issuer));
        q.get("code")
            .unwrap_or_else(|| panic!("no code in {to}"))
            .clone()
    }

    async fn token_request(
        idp: &Idp,
        client_id: &str,
        auth: Auth<'_>,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        let mut req = plain_client().post(idp.url("/token"));
        match auth {
            Auth::Basic(secret) => req = req.basic_auth(client_id, Some(secret)),
            Auth::Post(secret) => {
                form.extend([("client_id", client_id), ("client_secret", secret)])
            }
            Auth::None => form.push(("client_id", client_id)),
        }
        req.form(&form).send().await.expect("POST /token")
    }

    async fn exchange(
        idp: &Idp,
        client_id: &str,
        auth: Auth<'_>,
        code: &str,
        pkce: &Pkce,
    ) -> reqwest::Response {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ];
        token_request(idp, client_id, auth, &form).await
    }

    async fn userinfo(idp: &Idp, access_token: &str) -> Value {
        let res = plain_client()
            .get(idp.url("/me"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("userinfo");
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.expect("userinfo JSON")
    }

    async fn refresh(idp: &Idp, refresh_token: &str) -> reqwest::Response {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        token_request(idp, "basic-app", Auth::Basic("basic-secret"), &form).await
    }

    async fn tokens(res: reqwest::Response) -> Value {
        let status = res.status();
        let body: Value = res.json().await.expect("token JSON");
        assert_eq!(status, StatusCode::OK, "token response: {body}");
        for field in ["id_token", "access_token", "refresh_token"] {
            assert!(body[field].is_string(), "no {field} in {body}");
        }
        assert_eq!(body["token_type"], "Bearer");
        body
    }

    /// Sign-in + code exchange for `client_id`; returns the token response.
    async fn full_flow(
        idp: &Idp,
        browser: &reqwest::Client,
        client_id: &str,
        auth: Auth<'_>,
    ) -> Value {
        let pkce = Pkce::new();
        let code = code_for(idp, browser, client_id, &pkce, "alice", "alice-pw").await;
        let body = tokens(exchange(idp, client_id, auth, &code, &pkce).await).await;
        let claims = jwt_payload(body["id_token"].as_str().expect("id_token"));
        assert_eq!(claims["iss"], idp.issuer.as_str());
        assert_eq!(claims["aud"], client_id);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["nonce"], "nonce-456");
        assert_eq!(claims["email"], "alice@example.test");
        assert_eq!(claims["name"], "Alice");
        assert_eq!(claims["groups"], json!(["admins"]));
        body
    }

    async fn error_of(res: reqwest::Response) -> (StatusCode, Value) {
        let status = res.status();
        (status, res.json().await.expect("error JSON"))
    }

    macro_rules! start {
        ($setup:expr) => {
            match Idp::start($setup).await {
                Some(idp) => idp,
                None => return,
            }
        };
    }

    #[tokio::test]
    async fn discovery_advertises_what_the_gateway_needs() {
        let idp = start!(setup(None));
        let d = idp.discovery().await;
        assert_eq!(d["issuer"], idp.issuer.as_str());
        for (field, path) in [
            ("authorization_endpoint", "/auth"),
            ("token_endpoint", "/token"),
            ("userinfo_endpoint", "/me"),
            ("jwks_uri", "/jwks"),
            ("end_session_endpoint", "/session/end"),
            ("revocation_endpoint", "/token/revocation"),
        ] {
            assert_eq!(d[field], idp.url(path).as_str(), "{field}");
        }
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post", "none"])
        );
        assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(d["response_types_supported"], json!(["code"]));
        assert_eq!(d["backchannel_logout_supported"], true);
        assert_eq!(d["backchannel_logout_session_supported"], true);
        let scopes = d["scopes_supported"].as_array().expect("scopes");
        for s in ["openid", "profile", "email", "groups", "offline_access"] {
            assert!(
                scopes.contains(&json!(s)),
                "scope {s} missing from {scopes:?}"
            );
        }
        assert!(d["claims_supported"]
            .as_array()
            .expect("claims")
            .contains(&json!("groups")));

        let jwks: Value = plain_client()
            .get(idp.url("/jwks"))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        let algs: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["alg"].as_str())
            .collect();
        assert_eq!(algs, ["RS256", "ES256"]);
        assert!(
            jwks["keys"][0].get("d").is_none(),
            "private key material published"
        );
        let stats = idp.stats().await;
        assert_eq!(
            (stats["discovery"].as_u64(), stats["jwks"].as_u64()),
            (Some(1), Some(1)),
            "{stats}"
        );
    }

    #[tokio::test]
    async fn code_flow_client_secret_basic() {
        let idp = start!(setup(None));
        let body = full_flow(&idp, &browser(), "basic-app", Auth::Basic("basic-secret")).await;
        let header: Value = {
            let h = body["id_token"]
                .as_str()
                .expect("id_token")
                .split('.')
                .next()
                .expect("header");
            serde_json::from_slice(&base64url_decode(h).expect("b64")).expect("json")
        };
        assert_eq!(header["alg"], "RS256");
        let stats = idp.stats().await;
        assert_eq!(stats["token"], 1, "{stats}");
        assert_eq!(stats["auth"], 1, "{stats}");
        assert_eq!(stats["login_ok"], 1, "{stats}");
    }

    #[tokio::test]
    async fn code_flow_client_secret_post() {
        let idp = start!(setup(None));
        full_flow(&idp, &browser(), "post-app", Auth::Post("post-secret")).await;
    }

    #[tokio::test]
    async fn code_flow_public_client_requires_pkce() {
        let idp = start!(setup(None));
        full_flow(&idp, &browser(), "spa", Auth::None).await;

        // Without a code_challenge the public client is refused (the error goes back to the redirect URI).
        let mut url = Url::parse(&idp.url("/auth")).expect("url");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "spa")
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("scope", SCOPE);
        let res = browser().get(url).send().await.expect("GET /auth");
        let to = location(&res).expect("redirect with error");
        let q = query(&to);
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_request"),
            "{to}"
        );
        assert!(
            q.get("error_description")
                .is_some_and(|d| d.contains("PKCE")),
            "{to}"
        );

        // A wrong verifier fails at the token endpoint.
        let pkce = Pkce::new();
        let code = code_for(&idp, &browser(), "spa", &pkce, "alice", "alice-pw").await;
        let (status, err) =
            error_of(exchange(&idp, "spa", Auth::None, &code, &Pkce::new()).await).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn strict_client_auth_rejects_the_unregistered_method() {
        let idp = start!(setup(None));
        let b = browser();

        // post on a basic-only client.
        let pkce = Pkce::new();
        let code = code_for(&idp, &b, "basic-app", &pkce, "alice", "alice-pw").await;
        let (status, err) =
            error_of(exchange(&idp, "basic-app", Auth::Post("basic-secret"), &code, &pkce).await)
                .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(err["error"], "invalid_client");
        let desc = err["error_description"].as_str().expect("description");
        assert!(
            desc.contains("method 'client_secret_post'")
                && desc.contains("does not allow this method"),
            "{desc}"
        );
        // The code was not consumed by the refused attempt: the right method still works.
        tokens(exchange(&idp, "basic-app", Auth::Basic("basic-secret"), &code, &pkce).await).await;

        // basic on a post-only client.
        let pkce = Pkce::new();
        let code = code_for(&idp, &b, "post-app", &pkce, "alice", "alice-pw").await;
        let res = exchange(&idp, "post-app", Auth::Basic("post-secret"), &code, &pkce).await;
        assert!(res.headers().contains_key("www-authenticate"));
        let (status, err) = error_of(res).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client")),
            "{err}"
        );
        assert!(err["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("method 'client_secret_basic'")));

        // No authentication at all on a confidential client.
        let (status, err) =
            error_of(exchange(&idp, "post-app", Auth::None, &code, &pkce).await).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client")),
            "{err}"
        );
        assert!(err["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("method 'none'")));

        // A secret on the public client.
        let (status, err) =
            error_of(exchange(&idp, "spa", Auth::Post("x"), &code, &pkce).await).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client")),
            "{err}"
        );

        // The revocation endpoint is guarded the same way.
        let res = plain_client()
            .post(idp.url("/token/revocation"))
            .basic_auth("post-app", Some("post-secret"))
            .form(&[("token", "whatever")])
            .send()
            .await
            .expect("revocation");
        assert_eq!(error_of(res).await.1["error"], "invalid_client");
        assert_eq!(idp.stats().await["strict_auth_rejected"], 5);
    }

    #[tokio::test]
    async fn wrong_client_secret_is_invalid_client() {
        let idp = start!(setup(None));
        let b = browser();
        for (client, auth) in [
            ("basic-app", Auth::Basic("nope")),
            ("post-app", Auth::Post("nope")),
        ] {
            let pkce = Pkce::new();
            let code = code_for(&idp, &b, client, &pkce, "alice", "alice-pw").await;
            let (status, err) = error_of(exchange(&idp, client, auth, &code, &pkce).await).await;
            assert_eq!(
                (status, err["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("invalid_client")),
                "{client}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn wrong_password_rerenders_the_form_with_401() {
        let idp = start!(setup(None));
        let b = browser();
        let res = idp
            .sign_in(
                &b,
                &authorize_url(&idp, "basic-app", REDIRECT, &Pkce::new()),
                "alice",
                "wrong",
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let html = res.text().await.expect("html");
        assert!(html.contains("Invalid login or password"), "{html}");
        assert!(
            html.contains("<input name=\"login\" value=\"alice\""),
            "{html}"
        );
        assert!(form_action(&html)
            .is_some_and(|a| a.starts_with("/interaction/") && a.ends_with("/login")));
        assert_eq!(idp.stats().await["login_failed"], 1);
    }

    #[tokio::test]
    async fn refuses_an_unregistered_redirect_uri() {
        let idp = start!(setup(None));
        let url = authorize_url(&idp, "basic-app", "http://127.0.0.1:1/evil", &Pkce::new());
        let res = browser().get(url).send().await.expect("GET /auth");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(location(&res).is_none());
        let html = res.text().await.expect("html");
        assert!(html.contains("invalid_redirect_uri"), "{html}");
    }

    #[tokio::test]
    async fn refresh_and_userinfo_reflect_a_group_change() {
        let idp = start!(setup(None));
        let first = full_flow(&idp, &browser(), "basic-app", Auth::Basic("basic-secret")).await;
        let info = userinfo(&idp, first["access_token"].as_str().expect("at")).await;
        assert_eq!(
            (&info["sub"], &info["groups"]),
            (&json!("alice"), &json!(["admins"])),
            "{info}"
        );

        idp.set_groups("alice", &["users", "auditors"]).await;
        let old_rt = first["refresh_token"].as_str().expect("rt");
        let second = tokens(refresh(&idp, old_rt).await).await;
        let claims = jwt_payload(second["id_token"].as_str().expect("id_token"));
        assert_eq!(claims["groups"], json!(["users", "auditors"]), "{claims}");
        assert_eq!(claims["sub"], "alice");
        let info = userinfo(&idp, second["access_token"].as_str().expect("at")).await;
        assert_eq!(info["groups"], json!(["users", "auditors"]), "{info}");

        // Rotation: a new refresh token each time; the used one is dead.
        let new_rt = second["refresh_token"].as_str().expect("rt");
        assert_ne!(new_rt, old_rt);
        let (status, err) = error_of(refresh(&idp, old_rt).await).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{err}"
        );
        let stats = idp.stats().await;
        assert_eq!(
            (stats["token"].as_u64(), stats["userinfo"].as_u64()),
            (Some(3), Some(2)),
            "{stats}"
        );
    }

    #[tokio::test]
    async fn single_sign_on_across_clients_skips_the_login_form() {
        let idp = start!(setup(None));
        let b = browser();
        full_flow(&idp, &b, "basic-app", Auth::Basic("basic-secret")).await;
        // Same browser, another client: no form (the password is not even needed), consent is automatic.
        let pkce = Pkce::new();
        let code = code_for(&idp, &b, "post-app", &pkce, "alice", "not-used").await;
        tokens(exchange(&idp, "post-app", Auth::Post("post-secret"), &code, &pkce).await).await;
        let stats = idp.stats().await;
        assert_eq!(
            (stats["login_ok"].as_u64(), stats["login_failed"].as_u64()),
            (Some(1), None),
            "{stats}"
        );
    }

    /// RP-initiated logout: end_session with id_token_hint goes (automatically confirmed) to the post-logout URI
    /// with the state, ends the OP session (the next sign-in shows the form) and revokes the refresh token.
    #[tokio::test]
    async fn end_session_redirects_to_post_logout_uri() {
        let idp = start!(setup(None));
        let b = browser();
        let t = full_flow(&idp, &b, "basic-app", Auth::Basic("basic-secret")).await;
        let mut url = Url::parse(&idp.url("/session/end")).expect("url");
        url.query_pairs_mut()
            .append_pair("id_token_hint", t["id_token"].as_str().expect("id_token"))
            .append_pair("post_logout_redirect_uri", SIGNED_OUT)
            .append_pair("state", "bye-1");
        let res = idp.sign_in(&b, url.as_str(), "unused", "unused").await;
        assert_eq!(
            location(&res).as_deref(),
            Some(&*format!("{SIGNED_OUT}?state=bye-1"))
        );

        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().expect("rt")),
        ];
        let (status, err) =
            error_of(token_request(&idp, "basic-app", Auth::Basic("basic-secret"), &form).await)
                .await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{err}"
        );

        let res = idp
            .sign_in(
                &b,
                &authorize_url(&idp, "basic-app", REDIRECT, &Pkce::new()),
                "alice",
                "wrong",
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "the session survived the logout"
        );
        assert_eq!(idp.stats().await["end_session"], 1);
    }

    /// A client's back-channel logout endpoint, served by hyper on loopback (over TLS with `tls`): every POSTed
    /// body arrives on the channel. Returns the port.
    async fn backchannel_receiver(
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let ok = req.method() == hyper::Method::POST
                                && req.uri().path() == "/backchannel-logout";
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                            let status = if ok {
                                StatusCode::OK
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        (port, rx)
    }

    /// A self-signed certificate for `host` (its own CA) as an acceptor, and its PEM.
    fn self_signed(host: &str) -> (tokio_rustls::TlsAcceptor, String) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec![host.to_owned()])
                .expect("self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert.pem(),
        )
    }

    /// Signs alice in to basic-app, logs out via end_session and returns the ID token claims and the logout token
    /// claims delivered to the back-channel endpoint.
    async fn logout_and_receive(
        idp: &Idp,
        rx: &mut mpsc::UnboundedReceiver<String>,
    ) -> (Value, Value) {
        let b = browser();
        let t = full_flow(idp, &b, "basic-app", Auth::Basic("basic-secret")).await;
        let id_token = jwt_payload(t["id_token"].as_str().expect("id_token"));
        assert!(rx.try_recv().is_err(), "logout token before logout");

        let mut url = Url::parse(&idp.url("/session/end")).expect("url");
        url.query_pairs_mut()
            .append_pair("id_token_hint", t["id_token"].as_str().expect("id_token"))
            .append_pair("post_logout_redirect_uri", SIGNED_OUT);
        let res = idp.sign_in(&b, url.as_str(), "unused", "unused").await;
        assert_eq!(location(&res).as_deref(), Some(SIGNED_OUT));

        // Delivery is awaited before the redirect, so the token is already here.
        let body = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(body)) => body,
            _ => panic!("no logout token; provider log:\n{}", idp.logs()),
        };
        let form: HashMap<String, String> = Url::parse(&format!("http://x/?{body}"))
            .expect("form")
            .query_pairs()
            .into_owned()
            .collect();
        let token = form
            .get("logout_token")
            .unwrap_or_else(|| panic!("no logout_token in {body}"));
        (id_token, jwt_payload(token))
    }

    #[tokio::test]
    async fn backchannel_logout_delivers_a_logout_token() {
        let (port, mut rx) = backchannel_receiver(None).await;
        let idp = start!(setup(Some(&format!(
            "http://127.0.0.1:{port}/backchannel-logout"
        ))));
        let (id_token, claims) = logout_and_receive(&idp, &mut rx).await;
        // `sid` is in ID tokens of clients registered with backchannel_logout_session_required.
        assert!(
            id_token["sid"].is_string(),
            "no sid in the ID token {id_token}"
        );
        assert_eq!(claims["iss"], idp.issuer.as_str());
        assert_eq!(claims["aud"], "basic-app");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["sid"], id_token["sid"]);
        assert!(
            claims["events"]
                .get("http://schemas.openid.net/event/backchannel-logout")
                .is_some(),
            "{claims}"
        );
        assert!(claims.get("nonce").is_none());
        let stats = idp.stats().await;
        assert_eq!(stats["backchannel_logout_ok"], 1, "{stats}\n{}", idp.logs());
    }

    /// Like the gateway's setup: https with a test CA, on a host name mapped to loopback by `host_overrides`.
    #[tokio::test]
    async fn backchannel_logout_over_https_with_a_test_ca_and_host_override() {
        let (acceptor, ca_pem) = self_signed("auth.example.test");
        let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
        ca_file.write_all(ca_pem.as_bytes()).expect("write CA");
        let (port, mut rx) = backchannel_receiver(Some(acceptor)).await;
        let mut setup = setup(Some(&format!(
            "https://auth.example.test:{port}/backchannel-logout"
        )));
        setup["backchannel_ca_file"] = json!(ca_file.path());
        setup["host_overrides"] = json!({ "auth.example.test": "127.0.0.1" });
        let idp = start!(setup);
        let (id_token, claims) = logout_and_receive(&idp, &mut rx).await;
        assert_eq!(
            (&claims["sub"], &claims["sid"]),
            (&json!("alice"), &id_token["sid"])
        );
        assert_eq!(idp.stats().await["backchannel_logout_ok"], 1);
    }

    /// Without the CA the delivery fails (certificate not trusted) and is counted; the logout itself still completes.
    #[tokio::test]
    async fn backchannel_logout_to_an_untrusted_certificate_fails_but_logout_completes() {
        let (acceptor, _) = self_signed("localhost");
        let (port, _rx) = backchannel_receiver(Some(acceptor)).await;
        let idp = start!(setup(Some(&format!(
            "https://localhost:{port}/backchannel-logout"
        ))));
        let b = browser();
        let t = full_flow(&idp, &b, "basic-app", Auth::Basic("basic-secret")).await;
        let mut url = Url::parse(&idp.url("/session/end")).expect("url");
        url.query_pairs_mut()
            .append_pair("id_token_hint", t["id_token"].as_str().expect("id_token"))
            .append_pair("post_logout_redirect_uri", SIGNED_OUT);
        let res = idp.sign_in(&b, url.as_str(), "unused", "unused").await;
        assert_eq!(location(&res).as_deref(), Some(SIGNED_OUT));
        assert!(
            idp.logs().contains("self-signed certificate"),
            "{}",
            idp.logs()
        );
        let stats = idp.stats().await;
        assert_eq!(
            (
                stats["backchannel_logout_error"].as_u64(),
                stats["backchannel_logout_ok"].as_u64()
            ),
            (Some(1), None)
        );
    }

    #[tokio::test]
    async fn backchannel_logout_insecure_loopback_skips_certificate_checks() {
        let (acceptor, _) = self_signed("localhost");
        let (port, mut rx) = backchannel_receiver(Some(acceptor)).await;
        let mut setup = setup(Some(&format!(
            "https://localhost:{port}/backchannel-logout"
        )));
        setup["backchannel_insecure_loopback"] = json!(true);
        let idp = start!(setup);
        let (_, claims) = logout_and_receive(&idp, &mut rx).await;
        assert_eq!(claims["sub"], "alice");
    }

    #[tokio::test]
    async fn stats_reset_and_unknown_user_groups() {
        let idp = start!(setup(None));
        idp.discovery().await;
        idp.reset_stats().await;
        assert_eq!(idp.stats().await["discovery"], 0);
        let res = plain_client()
            .post(idp.url("/_test/users/nobody/groups"))
            .json(&json!(["x"]))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(idp.logs().contains("listening on"));
    }

    #[tokio::test]
    #[should_panic(expected = "user needs id and password")]
    async fn a_provider_that_cannot_start_shows_why() {
        if node_usable().is_err() {
            panic!("user needs id and password (node missing: nothing to check)");
        }
        let _ = Idp::start(json!({ "users": [{ "id": "x" }] })).await;
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(
                base64url_decode(&base64url_encode(&bytes)).as_deref(),
                Some(&bytes[..])
            );
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
    }
}
