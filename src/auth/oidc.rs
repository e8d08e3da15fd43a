//! The OpenID Connect relying party: `[oidc]`/`[session]` settings, provider discovery, the authorization code
//! flow with PKCE (RFC 7636) bound to an encrypted state cookie, the code exchange and refresh (openidconnect
//! crate), ID token verification through the shared JWKS cache, userinfo merging, and back-channel logout.
//!
//! Every failure is an [`OidcError`] that names its cause and the setting to change; it never becomes a bare
//! 500. Codes, tokens, secrets and cookie values are never logged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::claims::numeric_date;
use super::client::HttpClient;
use super::error::{FetchError, TokenRejection};
use super::session::{random_id, CookieKeys, Session, StoreError, StoreSpec, LOGIN_TTL_SECS};
use super::settings::{AuthSettings, Issuer};
use crate::config::file::{FileIssuer, FileOidc, FileSession};
use crate::config::{resolve_secret, ProblemKind, Problems, Secret};

/// Default scopes.
const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];
/// Default idle timeout of a session.
const DEFAULT_IDLE_SECS: u64 = 12 * 3600;
/// Default maximum session lifetime.
const DEFAULT_MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// Default interval between claim refreshes.
const DEFAULT_REFRESH_SECS: u64 = 300;
/// Timeout of one call to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest provider answer read.
const PROVIDER_MAX_BYTES: usize = 512 * 1024;
/// The back-channel logout event (OpenID Connect Back-Channel Logout 1.0 §2.4).
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How the gateway authenticates at the token endpoint (OpenID Connect Core §9).
#[derive(Clone)]
pub(crate) enum ClientAuth {
    /// Chosen from the provider's `token_endpoint_auth_methods_supported`, basic first.
    Auto,
    /// HTTP Basic.
    Basic,
    /// `client_secret` in the form body.
    Post,
    /// A JWT assertion signed with our private key (RFC 7523).
    PrivateKeyJwt(Arc<(EncodingKey, Algorithm)>),
    /// A public client: PKCE only.
    None,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ClientAuth {
    fn name(&self) -> &'static str {
        match self {
            ClientAuth::Auto => "auto",
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
            ClientAuth::None => "none",
        }
    }
}

/// `[oidc]` and `[session]` as runtime values.
#[derive(Debug)]
pub struct OidcSettings {
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) client_id: String,
    pub(crate) secret: Option<Secret>,
    pub(crate) auth: ClientAuth,
    pub(crate) scopes: Vec<String>,
    /// The portal host (lowercase).
    pub(crate) portal: String,
    /// Overrides the port in URLs the browser sees (default: the bound HTTPS port).
    pub(crate) external_port: Option<u16>,
    pub(crate) cookie_domains: Vec<String>,
    pub(crate) userinfo: bool,
    pub(crate) cookies: CookieKeys,
    pub(crate) store: StoreSpec,
    pub(crate) idle: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) refresh_every: Duration,
    pub(crate) client: HttpClient,
}

impl OidcSettings {
    /// The portal host.
    pub fn portal(&self) -> &str {
        &self.portal
    }

    /// `https://<portal>[:port]`, the origin browsers see, for a listener bound on `bound_port`.
    pub fn portal_origin(&self, bound_port: u16) -> String {
        origin(&self.portal, self.external_port.unwrap_or(bound_port))
    }

    /// The redirect URI to register at the provider.
    pub fn redirect_uri(&self, bound_port: u16) -> String {
        format!("{}/oauth2/callback", self.portal_origin(bound_port))
    }

    /// The cookie domain a host belongs to.
    pub(crate) fn cookie_domain_for(&self, host: &str) -> Option<&str> {
        self.cookie_domains
            .iter()
            .find(|d| {
                host == d.as_str()
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            })
            .map(String::as_str)
    }

    /// Lines describing the effective sign-in settings for `portcullis check` and the start-up log (no secrets).
    pub fn describe(&self, https_port: u16) -> Vec<String> {
        let store = match &self.store {
            StoreSpec::Memory => "memory".to_owned(),
            StoreSpec::Redis(u) => super::session::redacted(u),
        };
        vec![
            format!(
                "oidc        issuer {}  client_id {}  token_endpoint_auth_method {}  scopes {}  userinfo {}",
                self.issuer.url,
                self.client_id,
                self.auth.name(),
                self.scopes.join(" "),
                self.userinfo
            ),
            format!("oidc        portal {}  cookie_domains {}", self.portal, self.cookie_domains.join(", ")),
            format!("oidc        redirect URI to register at the provider: {}", self.redirect_uri(https_port)),
            format!(
                "oidc        post-logout redirect URI to register: {}/oauth2/signed-out",
                self.portal_origin(https_port)
            ),
            format!(
                "session     store {}  cookie {}  idle_timeout {}s  max_lifetime {}s  refresh {}s",
                store,
                self.cookies.name,
                self.idle.as_secs(),
                self.max_lifetime.as_secs(),
                self.refresh_every.as_secs()
            ),
        ]
    }

    /// Removes the gateway's own cookies from a request going upstream.
    pub fn strip_cookies(&self, headers: &mut http::HeaderMap) {
        self.cookies.strip_from_request(headers);
    }

    /// The token endpoint auth method as configured.
    pub fn auth_method(&self) -> &'static str {
        self.auth.name()
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The issuer URL.
    pub fn issuer_url(&self) -> &str {
        &self.issuer.url
    }
}

/// `https://host` with the port unless it is 443.
pub(crate) fn origin(host: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// Builds `[oidc]`/`[session]` into `auth` (the provider also becomes a trusted Bearer issuer named `oidc.name`,
/// unless `[[auth.issuers]]` already lists its URL). Reads only local files.
pub fn build_oidc(
    oidc: Option<&FileOidc>,
    session: Option<&FileSession>,
    domain: Option<&str>,
    base_dir: &Path,
    auth: &mut AuthSettings,
    problems: &mut Problems,
) {
    let Some(f) = oidc else {
        if session.is_some() {
            problems.push(
                "session",
                ProblemKind::Conflict {
                    reason:
                        "sessions need browser sign-in: add an [oidc] table, or remove [session]"
                            .into(),
                },
            );
        }
        return;
    };
    let before = problems.len();
    let Some(client_id) = f.client_id.clone().filter(|c| !c.is_empty()) else {
        problems.push(
            "oidc.client_id",
            ProblemKind::Required {
                hint: Some("the client id registered at the provider"),
            },
        );
        return;
    };
    let secret = resolve_secret(
        f.client_secret.as_deref(),
        f.client_secret_file.as_deref(),
        "oidc.client_secret",
        base_dir,
        problems,
    );
    let auth_method = match f.token_endpoint_auth_method.as_deref().unwrap_or("auto") {
        "auto" => Some(ClientAuth::Auto),
        "client_secret_basic" => Some(ClientAuth::Basic),
        "client_secret_post" => Some(ClientAuth::Post),
        "none" => Some(ClientAuth::None),
        "private_key_jwt" => {
            private_key(f, base_dir, problems).map(|k| ClientAuth::PrivateKeyJwt(Arc::new(k)))
        }
        other => {
            problems.invalid(
                "oidc.token_endpoint_auth_method",
                other,
                "expected auto, client_secret_basic, client_secret_post, private_key_jwt or none",
            );
            None
        }
    };
    match (&auth_method, &secret) {
        (Some(ClientAuth::Basic | ClientAuth::Post), None) => problems.push(
            "oidc.client_secret",
            ProblemKind::Required {
                hint: Some("client_secret_basic and client_secret_post need `client_secret` or `client_secret_file`"),
            },
        ),
        (Some(ClientAuth::None | ClientAuth::PrivateKeyJwt(_)), Some(_)) => problems.push(
            "oidc.client_secret",
            ProblemKind::Conflict {
                reason: "this token_endpoint_auth_method sends no client secret; remove it".into(),
            },
        ),
        _ => {}
    }
    let scopes = f
        .scopes
        .clone()
        .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect());
    if !scopes.iter().any(|s| s == "openid") {
        problems.invalid("oidc.scopes", scopes.join(" "), "must include `openid`");
    }
    let portal = match (f.portal.as_deref(), domain) {
        (Some(p), _) => crate::router::Host::parse(p)
            .map(|h| h.as_str().to_owned())
            .map_err(|_| {
                problems.invalid(
                    "oidc.portal",
                    p,
                    "expected a host name such as auth.example.test",
                )
            })
            .ok(),
        (None, Some(d)) => Some(format!("auth.{d}")),
        (None, None) => {
            problems.push(
                "oidc.portal",
                ProblemKind::Required {
                    hint: Some("or set a top-level `domain` (portal defaults to auth.<domain>)"),
                },
            );
            None
        }
    };
    let cookie_domains: Vec<String> = match (&f.cookie_domains, domain) {
        (Some(list), _) => list
            .iter()
            .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
            .collect(),
        (None, Some(d)) => vec![d.to_owned()],
        (None, None) => Vec::new(),
    };
    for (i, d) in cookie_domains.iter().enumerate() {
        if !d.contains('.') || crate::router::Host::parse(d).is_err() {
            problems.invalid(
                format!("oidc.cookie_domains.{i}"),
                d.as_str(),
                "browsers refuse cookies for a single-label or invalid domain (such as `localhost`): use a domain with a dot, e.g. `home.example`",
            );
        }
    }
    if cookie_domains.is_empty() {
        problems.push(
            "oidc.cookie_domains",
            ProblemKind::Required {
                hint: Some("or set a top-level `domain`"),
            },
        );
    }
    if let Some(p) = &portal {
        if !cookie_domains
            .iter()
            .any(|d| p == d || p.ends_with(&format!(".{d}")))
        {
            problems.push(
                "oidc.portal",
                ProblemKind::Conflict {
                    reason: format!("portal {p} is not under any cookie domain ({}); the session cookie could not reach the services", cookie_domains.join(", ")),
                },
            );
        }
    }
    let s = session.cloned().unwrap_or_default();
    let key = resolve_secret(
        s.secret.as_deref(),
        s.secret_file.as_deref(),
        "session.secret",
        base_dir,
        problems,
    );
    match &key {
        None => problems.push(
            "session.secret",
            ProblemKind::Required {
                hint: Some("a random key of at least 32 bytes that signs session cookies (share it between replicas), e.g. `secret_file = \"/run/secrets/session_key\"`"),
            },
        ),
        Some(k) if k.expose().len() < 32 => problems.invalid("session.secret", "<redacted>", "must be at least 32 bytes"),
        Some(_) => {}
    }
    let store = match s.store.as_deref().unwrap_or("memory") {
        "memory" => StoreSpec::Memory,
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            match redis::Client::open(url) {
                Ok(_) => StoreSpec::Redis(url.to_owned()),
                Err(e) => {
                    problems.invalid("session.store", "<redis url>", e.to_string());
                    StoreSpec::Memory
                }
            }
        }
        other => {
            problems.invalid(
                "session.store",
                other,
                "expected `memory` or a `redis://host:port/db` URL",
            );
            StoreSpec::Memory
        }
    };
    let secs = |v: Option<u64>, d: u64, path: &str, problems: &mut Problems| match v {
        Some(0) => {
            problems.invalid(path, "0", "must be at least 1");
            Duration::from_secs(d)
        }
        Some(v) => Duration::from_secs(v),
        None => Duration::from_secs(d),
    };
    let idle = secs(
        s.idle_timeout_secs,
        DEFAULT_IDLE_SECS,
        "session.idle_timeout_secs",
        problems,
    );
    let max_lifetime = secs(
        s.max_lifetime_secs,
        DEFAULT_MAX_LIFETIME_SECS,
        "session.max_lifetime_secs",
        problems,
    );
    let refresh_every = secs(
        s.refresh_secs,
        DEFAULT_REFRESH_SECS,
        "session.refresh_secs",
        problems,
    );

    // The provider is also an issuer: its keys come from the shared JWKS cache, and Bearer tokens it issues for
    // this client are accepted like any configured issuer's.
    let url = f.issuer.clone().unwrap_or_default();
    if url.is_empty() {
        problems.push(
            "oidc.issuer",
            ProblemKind::Required {
                hint: Some("the provider's issuer URL, e.g. https://auth.example.test"),
            },
        );
    }
    let issuer = match auth.find(&url) {
        Some(existing) => Some(Arc::clone(existing)),
        None if !url.is_empty() => {
            let fi = FileIssuer {
                name: Some(f.name.clone().unwrap_or_else(|| "oidc".into())),
                issuer: Some(url.clone()),
                audiences: Some(vec![client_id.clone()]),
                groups_claim: f.groups_claim.clone(),
                username_claim: f.username_claim.clone(),
                leeway_secs: f.leeway_secs,
                ca_file: f.ca_file.clone(),
                ..FileIssuer::default()
            };
            super::settings::build_issuer(&fi, "oidc", base_dir, problems).map(Arc::new)
        }
        None => None,
    };
    let client = issuer
        .as_ref()
        .and_then(|i| i.client.clone())
        .unwrap_or_else(HttpClient::with_webpki_roots);
    if problems.len() > before {
        return;
    }
    let (Some(issuer), Some(auth_method), Some(portal), Some(key)) =
        (issuer, auth_method, portal, key)
    else {
        return;
    };
    if auth.find(&issuer.url).is_none() {
        auth.issuers.push(Arc::clone(&issuer));
    }
    let cookie_name = s
        .cookie_name
        .clone()
        .unwrap_or_else(|| "_portcullis".into());
    auth.oidc = Some(Arc::new(OidcSettings {
        issuer,
        client_id,
        secret,
        auth: auth_method,
        scopes,
        portal,
        external_port: None,
        cookie_domains,
        userinfo: f.userinfo.unwrap_or(true),
        cookies: CookieKeys::new(&key, cookie_name),
        store,
        idle,
        max_lifetime,
        refresh_every,
        client,
    }));
}

fn private_key(
    f: &FileOidc,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<(EncodingKey, Algorithm)> {
    let Some(file) = f.private_key_file.as_deref() else {
        problems.push(
            "oidc.private_key_file",
            ProblemKind::Required {
                hint: Some("private_key_jwt signs with this PEM key"),
            },
        );
        return None;
    };
    let full = base_dir.join(file);
    let pem = match std::fs::read(&full) {
        Ok(p) => p,
        Err(source) => {
            problems.push(
                "oidc.private_key_file",
                ProblemKind::File { path: full, source },
            );
            return None;
        }
    };
    let alg = match f.private_key_algorithm.as_deref() {
        None => {
            if String::from_utf8_lossy(&pem).contains("EC PRIVATE KEY") {
                Algorithm::ES256
            } else {
                Algorithm::RS256
            }
        }
        Some(a) => match a.parse::<Algorithm>() {
            Ok(a) if !super::jwt::is_hmac(a) => a,
            _ => {
                problems.invalid(
                    "oidc.private_key_algorithm",
                    a,
                    "expected an asymmetric JWS algorithm such as RS256 or ES256",
                );
                return None;
            }
        },
    };
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    };
    match key {
        Ok(k) => Some((k, alg)),
        Err(e) => {
            problems.invalid(
                "oidc.private_key_file",
                file,
                format!("not a usable {alg:?} private key: {e}"),
            );
            None
        }
    }
}

/// Why a sign-in, refresh or logout failed. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Discovery failed.
    #[error("cannot read the provider's discovery document {url} (oidc.issuer)")]
    Discovery {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: FetchError,
    },
    /// The discovery document does not describe a usable provider.
    #[error("the provider's discovery document is not usable: {reason} (oidc.issuer)")]
    BadDiscovery {
        /// What is wrong.
        reason: String,
    },
    /// The provider answered the sign-in with an error.
    #[error("the provider refused the sign-in: {error}{}", description.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Provider {
        /// `error`.
        error: String,
        /// `error_description`.
        description: Option<String>,
    },
    /// No state cookie for this callback.
    #[error("no sign-in is pending for this browser (the state cookie is missing: it expired after {LOGIN_TTL_SECS}s, the callback was opened in another browser, or cookies are blocked for the portal)")]
    StateMissing,
    /// The state was already used.
    #[error("this sign-in response was already used (replayed state)")]
    StateReplayed,
    /// The state is too old.
    #[error("the sign-in took longer than {LOGIN_TTL_SECS}s; start again")]
    StateExpired,
    /// The callback lacks `code` or `state`.
    #[error("the callback has no `code` or `state` parameter")]
    BadCallback,
    /// The token endpoint refused the client.
    #[error("the provider rejected the client credentials at the token endpoint (invalid_client) sent with token_endpoint_auth_method = {method}; the client registration at the provider must allow this method and secret, or set oidc.token_endpoint_auth_method to the registered one{}", description.as_ref().map(|d| format!(" (provider said: {d})")).unwrap_or_default())]
    InvalidClient {
        /// The method used.
        method: &'static str,
        /// The provider's description.
        description: Option<String>,
    },
    /// The token endpoint refused the code, the redirect URI or the refresh token.
    #[error("the provider refused the {} ({error}){}{}",
        if redirect_uri.is_some() { "authorization code" } else { "refresh token" },
        description.as_ref().map(|d| format!(": {d}")).unwrap_or_default(),
        redirect_uri.as_ref().map(|u| format!("; if it mentions the redirect URI, register exactly {u}")).unwrap_or_default())]
    Grant {
        /// `error`.
        error: String,
        /// `error_description`.
        description: Option<String>,
        /// Our redirect URI, for a code exchange.
        redirect_uri: Option<String>,
    },
    /// The token endpoint could not be reached or answered nonsense.
    #[error("the token endpoint failed: {reason}")]
    TokenEndpoint {
        /// What happened.
        reason: String,
    },
    /// The ID token is missing or invalid.
    #[error("the ID token is invalid: {reason}")]
    IdToken {
        /// Why.
        reason: String,
    },
    /// The ID token's times do not fit our clock.
    #[error("the ID token's time claims do not fit this host's clock ({reason}, leeway oidc.leeway_secs = {leeway}s): check that both this host and the provider keep time (NTP)")]
    ClockSkew {
        /// Which check.
        reason: TokenRejection,
        /// The leeway.
        leeway: u64,
    },
    /// Userinfo failed.
    #[error("the userinfo endpoint failed (set oidc.userinfo = false to skip it)")]
    Userinfo(#[source] FetchError),
    /// Userinfo names another subject (OpenID Connect Core §5.3.2).
    #[error("the userinfo answer is for another subject than the ID token; refusing it")]
    UserinfoSubject,
    /// The session store failed.
    #[error("the session store is unavailable (session.store)")]
    Store(#[from] StoreError),
    /// The logout token is invalid.
    #[error("invalid logout token: {reason}")]
    LogoutToken {
        /// Why.
        reason: String,
    },
}

impl OidcError {
    /// The status of the page shown for this error.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            OidcError::Provider { .. }
            | OidcError::StateMissing
            | OidcError::StateReplayed
            | OidcError::StateExpired
            | OidcError::BadCallback
            | OidcError::LogoutToken { .. } => S::BAD_REQUEST,
            OidcError::Discovery { .. }
            | OidcError::BadDiscovery { .. }
            | OidcError::InvalidClient { .. }
            | OidcError::Grant { .. }
            | OidcError::TokenEndpoint { .. }
            | OidcError::IdToken { .. }
            | OidcError::ClockSkew { .. }
            | OidcError::Userinfo(_)
            | OidcError::UserinfoSubject => S::BAD_GATEWAY,
            OidcError::Store(_) => S::SERVICE_UNAVAILABLE,
        }
    }
}

/// What discovery says about the provider, cached per issuer.
#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) metadata: CoreProviderMetadata,
    pub(crate) end_session: Option<String>,
    pub(crate) methods: Vec<String>,
}

/// The encrypted sign-in state carried by the browser between start and callback.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LoginState {
    pub(crate) state: String,
    pub(crate) nonce: String,
    pub(crate) verifier: String,
    pub(crate) rd: String,
    pub(crate) created: u64,
}

/// Sends an openidconnect request through our client (no redirects, timeout, size limit).
async fn send(
    client: &HttpClient,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, FetchError> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
    client
        .exchange(req, PROVIDER_TIMEOUT, PROVIDER_MAX_BYTES)
        .await
}

type SendFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<openidconnect::HttpResponse, FetchError>> + Send>,
>;

/// The HTTP client handed to openidconnect: owned futures, so request futures stay `Send` for any lifetime.
fn http_client(client: &HttpClient) -> impl Fn(openidconnect::HttpRequest) -> SendFuture {
    let client = client.clone();
    move |r| {
        let c = client.clone();
        Box::pin(async move { send(&c, r).await })
    }
}

/// Discovery of `oidc.issuer` (OpenID Connect Discovery 1.0 §4).
pub(crate) async fn discover(o: &OidcSettings) -> Result<Provider, OidcError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        o.issuer.url.trim_end_matches('/')
    );
    let uri: http::Uri = url.parse().map_err(|_| OidcError::BadDiscovery {
        reason: format!("{url} is not a URL"),
    })?;
    let (body, _) = o
        .client
        .get(&uri, PROVIDER_TIMEOUT, PROVIDER_MAX_BYTES)
        .await
        .map_err(|source| OidcError::Discovery {
            url: url.clone(),
            source,
        })?;
    let raw: Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| OidcError::BadDiscovery {
            reason: e.to_string(),
        })?;
    let metadata: CoreProviderMetadata =
        serde_json::from_slice(&body).map_err(|e| OidcError::BadDiscovery {
            reason: e.to_string(),
        })?;
    if metadata.issuer().as_str() != o.issuer.url {
        return Err(OidcError::BadDiscovery {
            reason: format!(
                "it names issuer {} but oidc.issuer is {} (they must be identical, including the trailing slash)",
                metadata.issuer().as_str(),
                o.issuer.url
            ),
        });
    }
    if metadata.token_endpoint().is_none() {
        return Err(OidcError::BadDiscovery {
            reason: "it has no token_endpoint".into(),
        });
    }
    let methods = raw
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        // OpenID Connect Discovery §3: the default is client_secret_basic.
        .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]);
    let end_session = raw
        .get("end_session_endpoint")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Provider {
        metadata,
        end_session,
        methods,
    })
}

/// The method actually used: the configured one, or for `auto` the first of basic, post, none that the provider
/// supports (and that fits whether a secret is configured).
pub(crate) fn effective_auth(o: &OidcSettings, p: &Provider) -> ClientAuth {
    match &o.auth {
        ClientAuth::Auto => {
            let has = |m: &str| p.methods.iter().any(|x| x == m);
            let chosen = if o.secret.is_none() {
                ClientAuth::None
            } else if has("client_secret_basic") {
                ClientAuth::Basic
            } else if has("client_secret_post") {
                ClientAuth::Post
            } else {
                ClientAuth::Basic
            };
            tracing::info!(oidc.issuer = %o.issuer.url, oidc.auth_method = chosen.name(), supported = ?p.methods, "token_endpoint_auth_method auto: chose {}", chosen.name());
            chosen
        }
        other => other.clone(),
    }
}

/// Starts a sign-in: the authorization URL to send the browser to and the state cookie to set.
pub(crate) fn start(
    o: &OidcSettings,
    p: &Provider,
    rd: &str,
    redirect_uri: &str,
    now: u64,
) -> Result<(String, String), OidcError> {
    let client = CoreClient::from_provider_metadata(
        p.metadata.clone(),
        ClientId::new(o.client_id.clone()),
        None,
    )
    .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| {
        OidcError::BadDiscovery {
            reason: e.to_string(),
        }
    })?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    for s in o.scopes.iter().filter(|s| s.as_str() != "openid") {
        req = req.add_scope(Scope::new(s.clone()));
    }
    let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
    let login = LoginState {
        state: state.secret().clone(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        rd: rd.to_owned(),
        created: now,
    };
    let value = serde_json::to_string(&login).map_err(|e| OidcError::TokenEndpoint {
        reason: e.to_string(),
    })?;
    Ok((
        url.to_string(),
        o.cookies.login_cookie(&login.state, &value),
    ))
}

/// The query of a callback.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CallbackQuery {
    pub(crate) code: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) error_description: Option<String>,
}

/// Reads the state cookie of a callback, checking age.
pub(crate) fn login_state(
    o: &OidcSettings,
    headers: &HeaderMap,
    q: &CallbackQuery,
    now: u64,
) -> Result<LoginState, OidcError> {
    let state = q.state.as_deref().ok_or(OidcError::BadCallback)?;
    let raw = o
        .cookies
        .login_state(headers, state)
        .ok_or(OidcError::StateMissing)?;
    let login: LoginState = serde_json::from_str(&raw).map_err(|_| OidcError::StateMissing)?;
    if login.state != state {
        return Err(OidcError::StateMissing);
    }
    if now.saturating_sub(login.created) > LOGIN_TTL_SECS {
        return Err(OidcError::StateExpired);
    }
    Ok(login)
}

/// Token endpoint answer, reduced to what a session keeps.
pub(crate) struct Tokens {
    pub(crate) id_token: Option<String>,
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
}

/// Exchanges the code (with the PKCE verifier) at the token endpoint.
pub(crate) async fn exchange(
    o: &OidcSettings,
    p: &Provider,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
    now: u64,
) -> Result<Tokens, OidcError> {
    let auth = effective_auth(o, p);
    let client = build_client(o, p, &auth, Some(redirect_uri))?;
    let mut req = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| OidcError::BadDiscovery {
            reason: e.to_string(),
        })?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
    if let Some(assertion) = client_assertion_for(o, p, &auth, now)? {
        req = req
            .add_extra_param("client_assertion_type", JWT_BEARER_ASSERTION)
            .add_extra_param("client_assertion", assertion);
    }
    let http = http_client(&o.client);
    let resp = req
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, &auth, redirect_uri))?;
    Ok(Tokens::from(&resp))
}

impl From<&openidconnect::core::CoreTokenResponse> for Tokens {
    fn from(resp: &openidconnect::core::CoreTokenResponse) -> Self {
        Tokens {
            id_token: resp.id_token().map(ToString::to_string),
            access_token: resp.access_token().secret().clone(),
            refresh_token: resp.refresh_token().map(|r| r.secret().clone()),
        }
    }
}

/// The `client_assertion_type` of RFC 7523 §2.2.
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client assertion to send, for `private_key_jwt`.
fn client_assertion_for(
    o: &OidcSettings,
    p: &Provider,
    auth: &ClientAuth,
    now: u64,
) -> Result<Option<String>, OidcError> {
    match auth {
        ClientAuth::PrivateKeyJwt(k) => client_assertion(o, p, k, now).map(Some),
        ClientAuth::Auto | ClientAuth::Basic | ClientAuth::Post | ClientAuth::None => Ok(None),
    }
}

/// Uses the refresh token (same client authentication as the sign-in).
pub(crate) async fn refresh(
    o: &OidcSettings,
    p: &Provider,
    refresh_token: &str,
    now: u64,
) -> Result<Tokens, OidcError> {
    let auth = effective_auth(o, p);
    let client = build_client(o, p, &auth, None)?;
    let token = RefreshToken::new(refresh_token.to_owned());
    let mut req = client
        .exchange_refresh_token(&token)
        .map_err(|e| OidcError::BadDiscovery {
            reason: e.to_string(),
        })?;
    if let Some(assertion) = client_assertion_for(o, p, &auth, now)? {
        req = req
            .add_extra_param("client_assertion_type", JWT_BEARER_ASSERTION)
            .add_extra_param("client_assertion", assertion);
    }
    let http = http_client(&o.client);
    let resp = req
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, &auth, ""))?;
    Ok(Tokens::from(&resp))
}

type Client = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn build_client(
    o: &OidcSettings,
    p: &Provider,
    auth: &ClientAuth,
    redirect_uri: Option<&str>,
) -> Result<Client, OidcError> {
    let secret = match auth {
        ClientAuth::Basic | ClientAuth::Post => o
            .secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose().to_owned())),
        ClientAuth::Auto | ClientAuth::PrivateKeyJwt(_) | ClientAuth::None => None,
    };
    let mut client = CoreClient::from_provider_metadata(
        p.metadata.clone(),
        ClientId::new(o.client_id.clone()),
        secret,
    )
    .set_auth_type(match auth {
        ClientAuth::Basic => AuthType::BasicAuth,
        ClientAuth::Auto | ClientAuth::Post | ClientAuth::PrivateKeyJwt(_) | ClientAuth::None => {
            AuthType::RequestBody
        }
    });
    if let Some(r) = redirect_uri {
        client = client.set_redirect_uri(RedirectUrl::new(r.to_owned()).map_err(|e| {
            OidcError::BadDiscovery {
                reason: e.to_string(),
            }
        })?);
    }
    Ok(client)
}

/// The RFC 7523 §2.2 client assertion for `private_key_jwt`.
fn client_assertion(
    o: &OidcSettings,
    p: &Provider,
    k: &(EncodingKey, Algorithm),
    now: u64,
) -> Result<String, OidcError> {
    let aud = p
        .metadata
        .token_endpoint()
        .map(|u| u.as_str().to_owned())
        .unwrap_or_default();
    let claims = serde_json::json!({
        "iss": o.client_id, "sub": o.client_id, "aud": aud,
        "jti": random_id(), "iat": now, "exp": now + 60,
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(k.1), &claims, &k.0).map_err(|e| {
        OidcError::TokenEndpoint {
            reason: format!("cannot sign the client assertion: {e}"),
        }
    })
}

fn token_error<E: std::error::Error + 'static>(
    e: RequestTokenError<E, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
    auth: &ClientAuth,
    redirect_uri: &str,
) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let description = r.error_description().cloned();
            match r.error() {
                CoreErrorResponseType::InvalidClient
                | CoreErrorResponseType::UnauthorizedClient => OidcError::InvalidClient {
                    method: auth.name(),
                    description,
                },
                other => OidcError::Grant {
                    error: other.to_string(),
                    description,
                    redirect_uri: (!redirect_uri.is_empty()).then(|| redirect_uri.to_owned()),
                },
            }
        }
        RequestTokenError::Request(e) => OidcError::TokenEndpoint {
            reason: crate::error::chain(&e),
        },
        RequestTokenError::Parse(e, _) => OidcError::TokenEndpoint {
            reason: format!("unreadable answer: {e}"),
        },
        RequestTokenError::Other(s) => OidcError::TokenEndpoint { reason: s },
    }
}

/// Checks the claims of a signature-verified ID token (OpenID Connect Core §3.1.3.7).
pub(crate) fn check_id_token(
    o: &OidcSettings,
    claims: &Map<String, Value>,
    nonce: Option<&str>,
    now: i64,
) -> Result<(), OidcError> {
    let leeway = o.issuer.leeway;
    if let Err(reason) = super::jwt::check_claims(
        claims,
        std::slice::from_ref(&o.client_id),
        now,
        leeway as i64,
    ) {
        return Err(match reason {
            TokenRejection::Expired
            | TokenRejection::NotYetValid
            | TokenRejection::IssuedInFuture => OidcError::ClockSkew { reason, leeway },
            other => OidcError::IdToken {
                reason: other.to_string(),
            },
        });
    }
    if claims.get("iss").and_then(Value::as_str) != Some(o.issuer.url.as_str()) {
        return Err(OidcError::IdToken {
            reason: "wrong iss".into(),
        });
    }
    // §3.1.3.7 items 4 and 5: with several audiences `azp` must be present, and it must be us when present.
    let several = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != o.client_id => {
            return Err(OidcError::IdToken {
                reason: "azp names another client".into(),
            })
        }
        None if several => {
            return Err(OidcError::IdToken {
                reason: "several audiences and no azp".into(),
            })
        }
        _ => {}
    }
    if let Some(n) = nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(n) {
            return Err(OidcError::IdToken {
                reason: "nonce does not match this sign-in".into(),
            });
        }
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(OidcError::IdToken {
            reason: "no sub".into(),
        });
    }
    Ok(())
}

/// Fetches userinfo and merges it into `claims`; a different `sub` is refused (OpenID Connect Core §5.3.2).
pub(crate) async fn merge_userinfo(
    o: &OidcSettings,
    p: &Provider,
    access_token: &str,
    claims: &mut Map<String, Value>,
) -> Result<(), OidcError> {
    let Some(endpoint) = p.metadata.userinfo_endpoint() else {
        return Ok(());
    };
    let req = Request::get(endpoint.as_str())
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {access_token}"),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| OidcError::Userinfo(FetchError::BadRequest(e)))?;
    let (body, _) = o
        .client
        .fetch(req, PROVIDER_TIMEOUT, PROVIDER_MAX_BYTES)
        .await
        .map_err(OidcError::Userinfo)?;
    let info: Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| OidcError::Userinfo(FetchError::Json(e)))?;
    if info.get("sub") != claims.get("sub") {
        return Err(OidcError::UserinfoSubject);
    }
    for (k, v) in info {
        if !matches!(
            k.as_str(),
            "iss" | "aud" | "exp" | "iat" | "nbf" | "nonce" | "azp" | "sid"
        ) {
            claims.insert(k, v);
        }
    }
    Ok(())
}

/// Builds the session record after a sign-in or refresh.
pub(crate) fn session_from(
    o: &OidcSettings,
    claims: Map<String, Value>,
    tokens: &Tokens,
    previous: Option<&Session>,
    now: u64,
) -> Session {
    Session {
        issuer: o.issuer.url.clone(),
        sub: claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        sid: claims
            .get("sid")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| previous.and_then(|p| p.sid.clone())),
        id_token: tokens
            .id_token
            .clone()
            .or_else(|| previous.and_then(|p| p.id_token.clone())),
        refresh_token: tokens
            .refresh_token
            .clone()
            .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
        created_at: previous.map_or(now, |p| p.created_at),
        last_seen: now,
        refresh_at: now + o.refresh_every.as_secs(),
        identity: Default::default(),
        claims: Arc::new(claims),
    }
}

/// When a session ends by itself: the idle deadline, capped by the maximum lifetime.
pub(crate) fn session_deadline(o: &OidcSettings, s: &Session, now: u64) -> u64 {
    (now + o.idle.as_secs()).min(s.created_at + o.max_lifetime.as_secs())
}

/// Validates a back-channel logout token's claims (Back-Channel Logout 1.0 §2.6); returns (sid, sub).
pub(crate) fn check_logout_claims(
    o: &OidcSettings,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<(Option<String>, Option<String>), OidcError> {
    let bad = |reason: &str| OidcError::LogoutToken {
        reason: reason.to_owned(),
    };
    if claims.get("iss").and_then(Value::as_str) != Some(o.issuer.url.as_str()) {
        return Err(bad("wrong iss"));
    }
    super::jwt::check_audience(claims, std::slice::from_ref(&o.client_id))
        .map_err(|_| bad("wrong aud"))?;
    match numeric_date(claims, "iat") {
        Some(Ok(iat)) if iat <= now + o.issuer.leeway as i64 => {}
        _ => return Err(bad("missing or future iat")),
    }
    if let Some(Ok(exp)) = numeric_date(claims, "exp") {
        if now > exp + o.issuer.leeway as i64 {
            return Err(bad("expired"));
        }
    }
    if claims.contains_key("nonce") {
        return Err(bad("a logout token must not carry a nonce"));
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.contains_key(BACKCHANNEL_EVENT));
    if !has_event {
        return Err(bad("no back-channel logout event"));
    }
    let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    if sid.is_none() && sub.is_none() {
        return Err(bad("neither sid nor sub"));
    }
    Ok((sid, sub))
}

/// The end-session URL for RP-initiated logout (RP-Initiated Logout 1.0 §2), when the provider has one.
pub(crate) fn end_session_url(
    p: &Provider,
    id_token: Option<&str>,
    post_logout: &str,
) -> Option<String> {
    let base = p.end_session.as_deref()?;
    let mut url = url_with(base, &[("post_logout_redirect_uri", post_logout)]);
    if let Some(t) = id_token {
        url = url_with(&url, &[("id_token_hint", t)]);
    }
    Some(url)
}

/// `base` with the query parameters appended.
pub(crate) fn url_with(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_owned();
    for (k, v) in params {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&super::client::form_encode(k));
        out.push('=');
        out.push_str(&super::client::form_encode(v));
    }
    out
}

/// `portcullis check --online`: fetches discovery and the key set and reports, in plain words, everything that
/// would make sign-in fail. An empty list means nothing was found.
pub async fn online_check(o: &OidcSettings) -> Vec<String> {
    let p = match discover(o).await {
        Ok(p) => p,
        Err(e) => return vec![crate::error::chain(&e)],
    };
    let mut findings = Vec::new();
    let method = effective_auth(o, &p).name();
    if !matches!(o.auth, ClientAuth::Auto) && !p.methods.iter().any(|m| m == method) {
        findings.push(format!(
            "oidc.token_endpoint_auth_method is {method}, but the provider supports only {} (token_endpoint_auth_methods_supported)",
            p.methods.join(", ")
        ));
    }
    if let Some(supported) = p.metadata.scopes_supported() {
        let supported: Vec<&str> = supported.iter().map(|s| s.as_str()).collect();
        for s in &o.scopes {
            if !supported.contains(&s.as_str()) {
                findings.push(format!(
                    "scope {s:?} (oidc.scopes) is not in the provider's scopes_supported ({})",
                    supported.join(" ")
                ));
            }
        }
    }
    if let Some(claims) = p.metadata.claims_supported() {
        let claims: Vec<&str> = claims.iter().map(|c| c.as_str()).collect();
        let groups = o.issuer.groups_claim.as_str();
        if !claims.contains(&groups) {
            findings.push(format!(
                "the groups claim {groups:?} (oidc.groups_claim) is not in the provider's claims_supported: allow_groups rules will see no groups"
            ));
        }
    }
    let jwks = p.metadata.jwks_uri().url().as_str().to_owned();
    if let Ok(uri) = jwks.parse::<http::Uri>() {
        if let Err(e) = o
            .client
            .get(&uri, PROVIDER_TIMEOUT, PROVIDER_MAX_BYTES)
            .await
        {
            findings.push(format!(
                "the key set {jwks} cannot be fetched: {}",
                crate::error::chain(&e)
            ));
        }
    }
    let mut endpoints = vec![(
        "token_endpoint",
        p.metadata.token_endpoint().map(|u| u.as_str().to_owned()),
    )];
    endpoints.push((
        "userinfo_endpoint",
        p.metadata
            .userinfo_endpoint()
            .map(|u| u.as_str().to_owned()),
    ));
    for (name, url) in endpoints {
        let Some(url) = url else { continue };
        let Ok(req) = Request::get(url.as_str()).body(Full::new(Bytes::new())) else {
            continue;
        };
        // Any HTTP answer (even 400 or 405) proves the endpoint is reachable.
        if let Err(e) = o
            .client
            .exchange(req, PROVIDER_TIMEOUT, PROVIDER_MAX_BYTES)
            .await
        {
            findings.push(format!(
                "the {name} {url} is unreachable: {}",
                crate::error::chain(&e)
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::{FileOidc, FileSession};

    fn settings() -> Arc<OidcSettings> {
        let mut auth = AuthSettings::default();
        let mut problems = Problems::default();
        let oidc = FileOidc {
            issuer: Some("https://idp.example.test".into()),
            client_id: Some("gw".into()),
            client_secret: Some("secret".into()),
            ..FileOidc::default()
        };
        let session = FileSession {
            secret: Some("0123456789abcdef0123456789abcdef-unit".into()),
            ..FileSession::default()
        };
        build_oidc(
            Some(&oidc),
            Some(&session),
            Some("example.test"),
            Path::new(""),
            &mut auth,
            &mut problems,
        );
        assert!(
            problems.is_empty(),
            "{:?}",
            problems.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        auth.oidc.clone().expect("oidc settings")
    }

    fn callback_with_state(o: &OidcSettings, created: u64) -> (HeaderMap, CallbackQuery) {
        let login = LoginState {
            state: "STATE-abc".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            rd: "https://app.example.test/".into(),
            created,
        };
        let set = o
            .cookies
            .login_cookie(&login.state, &serde_json::to_string(&login).expect("json"));
        let mut h = HeaderMap::new();
        let pair = set.split(';').next().expect("pair").to_owned();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(&pair).expect("header"),
        );
        let q = CallbackQuery {
            code: Some("c".into()),
            state: Some(login.state),
            ..CallbackQuery::default()
        };
        (h, q)
    }

    #[test]
    fn issue_4_state_older_than_the_login_window_is_expired() {
        let o = settings();
        let (h, q) = callback_with_state(&o, 1_000);
        assert!(login_state(&o, &h, &q, 1_000 + LOGIN_TTL_SECS).is_ok());
        assert!(matches!(
            login_state(&o, &h, &q, 1_000 + LOGIN_TTL_SECS + 1),
            Err(OidcError::StateExpired)
        ));
    }

    #[test]
    fn state_cookie_for_another_state_is_missing() {
        let o = settings();
        let (h, mut q) = callback_with_state(&o, 1_000);
        q.state = Some("OTHER-state".into());
        assert!(matches!(
            login_state(&o, &h, &q, 1_001),
            Err(OidcError::StateMissing)
        ));
    }

    #[test]
    fn single_label_cookie_domain_is_refused() {
        let mut auth = AuthSettings::default();
        let mut problems = Problems::default();
        let oidc = FileOidc {
            issuer: Some("https://idp.example.test".into()),
            client_id: Some("gw".into()),
            client_secret: Some("secret".into()),
            portal: Some("auth.localhost".into()),
            cookie_domains: Some(vec!["localhost".into()]),
            ..FileOidc::default()
        };
        let session = FileSession {
            secret: Some("0123456789abcdef0123456789abcdef-unit".into()),
            ..FileSession::default()
        };
        build_oidc(
            Some(&oidc),
            Some(&session),
            None,
            Path::new(""),
            &mut auth,
            &mut problems,
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("oidc.cookie_domains.0") && t.contains("single-label")),
            "{text:?}"
        );
        assert!(auth.oidc.is_none());
    }

    #[test]
    fn id_token_clock_skew_names_the_leeway_setting() {
        let o = settings();
        let now = 10_000;
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(o.issuer.url.clone()));
        claims.insert("aud".into(), Value::from("gw"));
        claims.insert("sub".into(), Value::from("alice"));
        claims.insert("nonce".into(), Value::from("n"));
        claims.insert("exp".into(), Value::from(now + 300));
        claims.insert("iat".into(), Value::from(now + 3_600));
        let err = check_id_token(&o, &claims, Some("n"), now).expect_err("issued in the future");
        assert!(matches!(err, OidcError::ClockSkew { .. }));
        assert!(err.to_string().contains("oidc.leeway_secs"), "{err}");
        claims.insert("iat".into(), Value::from(now));
        assert!(check_id_token(&o, &claims, Some("n"), now).is_ok());
        assert!(matches!(
            check_id_token(&o, &claims, Some("other"), now),
            Err(OidcError::IdToken { .. })
        ));
    }
}
