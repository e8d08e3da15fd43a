//! The configuration file as the operator wrote it: serde models only.
//!
//! Every struct here mirrors a TOML table, keeps strings, `Option`s and `*_secs` integers, and denies unknown
//! keys. No logic lives here: defaults, parsing and cross-checks belong to `validate`, which turns these into the
//! runtime types of `snapshot`. Keys are optional at this level so that a missing one is reported by `validate`
//! together with every other problem, with its key path, instead of stopping deserialization.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The root domain: a service without `hosts` is served at `NAME.<domain>`.
    pub domain: Option<String>,
    /// Listeners and network settings.
    #[serde(default)]
    pub server: FileServer,
    /// Certificates.
    #[serde(default)]
    pub tls: FileTls,
    /// Token issuers and JWKS cache settings.
    #[serde(default)]
    pub auth: FileAuth,
    /// Browser sign-in through an OpenID Connect provider.
    pub oidc: Option<FileOidc>,
    /// Browser sessions.
    pub session: Option<FileSession>,
    /// Forward-auth endpoints on hosts of their own.
    pub forward_auth: Option<FileForwardAuth>,
    /// The built-in echo backend of the demo.
    pub demo: Option<FileDemo>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, FileService>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Address of the HTTPS listener, `ip:port`.
    pub https: Option<String>,
    /// Address of the optional plain HTTP listener, which redirects to HTTPS.
    pub http: Option<String>,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: Option<String>,
    /// Peers (CIDRs or single addresses) whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// How long open connections may keep running after a shutdown signal.
    pub shutdown_grace_secs: Option<u64>,
    /// Whether the config file and certificate directory are polled for changes (SIGHUP always reloads).
    pub watch: Option<bool>,
    /// Which responses carry `X-Request-Id` back to the client: `always` (default) or `errors` (status >= 400).
    pub response_request_id: Option<String>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: FileTimeouts,
}

/// `[server.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// TLS handshake.
    pub tls_handshake_secs: Option<u64>,
    /// Reading a request's headers.
    pub request_header_secs: Option<u64>,
    /// Connecting to an upstream.
    pub upstream_connect_secs: Option<u64>,
    /// Waiting for an upstream's response headers.
    pub upstream_response_secs: Option<u64>,
    /// A client connection with no request in flight and no traffic.
    pub idle_secs: Option<u64>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Directory of PEM certificate/key pairs, picked by SNI; relative to the config file.
    pub certs_dir: Option<String>,
    /// Host name whose certificate is served to clients that send no SNI.
    pub default_certificate: Option<String>,
    /// Generate a local CA and a certificate covering every service host when the directory lacks one.
    pub self_signed: Option<bool>,
    /// Automatic certificates.
    pub acme: Option<FileAcme>,
}

/// `[tls.acme]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    /// Directory URL of the ACME server (`https://`).
    pub directory: Option<String>,
    /// Contact e-mail of the account.
    pub contact: Option<String>,
    /// Extra CA certificates (PEM) trusted for the directory.
    pub ca_file: Option<String>,
    /// `http-01` (default), `tls-alpn-01` or `dns-01`.
    pub challenge: Option<String>,
    /// Program (or program and leading arguments) run as `... set|clear <domain> <txt-value>` for dns-01.
    pub dns_hook: Option<FileOneOrMany>,
    /// Names to get certificates for; default every exact service host.
    pub hosts: Option<Vec<String>>,
    /// Renew this many days before expiry (default 30).
    pub renew_before_days: Option<u64>,
    /// First delay after a failed order (default 60).
    pub retry_initial_secs: Option<u64>,
    /// Largest delay between failed orders (default 3600).
    pub retry_max_secs: Option<u64>,
}

/// `[demo]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDemo {
    /// Address where `run` starts the built-in echo backend.
    pub echo: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileOneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

/// `[services.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    /// `http://host:port` or `https://host:port`.
    pub upstream: Option<String>,
    /// Host names (exact or `*.domain`); default `NAME.<domain>`.
    pub hosts: Option<Vec<String>>,
    /// Serve without authentication. `bypassAuth` is accepted for configs written for Nix modules.
    #[serde(alias = "bypassAuth")]
    pub bypass_auth: Option<bool>,
    /// Forward the client's Host header (default) instead of the upstream's authority.
    pub preserve_host: Option<bool>,
    /// Extra CA certificates (PEM) trusted for an `https` upstream.
    pub upstream_ca_file: Option<String>,
    /// Overrides `server.timeouts.upstream_response_secs` for this service.
    pub upstream_response_secs: Option<u64>,
    /// KiB read from the upstream at a time; also the largest response head accepted (default 32).
    pub upstream_read_buffer_kib: Option<u32>,
    /// Users (the `sub` or configured username claim) allowed in.
    pub allow_users: Option<Vec<String>>,
    /// Groups allowed in.
    pub allow_groups: Option<Vec<String>>,
    /// E-mail addresses allowed in, exact or `*@domain`.
    pub allow_emails: Option<Vec<String>>,
    /// Claims that must hold one of the given values.
    pub require_claims: Option<BTreeMap<String, FileOneOrMany>>,
    /// Accepted audiences; overrides the issuers'.
    pub audiences: Option<Vec<String>>,
    /// Names (or issuer URLs) of the issuers this service trusts; default all.
    pub issuers: Option<Vec<String>>,
    /// `bypass` lets CORS preflight `OPTIONS` requests through unauthenticated; `enforce` (default) does not.
    pub cors_preflight: Option<String>,
    /// Dotted path of the claim holding groups; overrides the issuer's.
    pub groups_claim: Option<String>,
    /// Whether the client's `Authorization` header is passed upstream (default false).
    pub pass_authorization: Option<bool>,
    /// Names of the identity headers sent to the backend.
    pub identity_headers: Option<FileIdentityHeaders>,
    /// Path rules, evaluated in order, first match wins.
    pub rules: Option<Vec<FileRule>>,
}

/// `[services.NAME.identity_headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentityHeaders {
    /// Header(s) carrying the user name (default `Remote-User`).
    pub user: Option<FileOneOrMany>,
    /// Header(s) carrying the e-mail (default `Remote-Email`).
    pub email: Option<FileOneOrMany>,
    /// Header(s) carrying the groups (default `Remote-Groups`).
    pub groups: Option<FileOneOrMany>,
    /// Header(s) carrying the display name (default `Remote-Name`).
    pub name: Option<FileOneOrMany>,
    /// Separator between groups (default `,`).
    pub group_separator: Option<String>,
    /// Extra headers: header name -> dotted claim path.
    pub claims: Option<BTreeMap<String, String>>,
}

/// `[[services.NAME.rules]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// Path patterns: exact (`/health`) or prefix (`/api/public/*`).
    pub paths: Option<Vec<String>>,
    /// Methods the rule applies to; default all.
    pub methods: Option<Vec<String>>,
    /// `bypass`, `deny` or `allow` (default `allow`, with the allow keys below).
    pub policy: Option<String>,
    /// As on the service.
    pub allow_users: Option<Vec<String>>,
    /// As on the service.
    pub allow_groups: Option<Vec<String>>,
    /// As on the service.
    pub allow_emails: Option<Vec<String>>,
    /// As on the service.
    pub require_claims: Option<BTreeMap<String, FileOneOrMany>>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// Token issuers.
    pub issuers: Option<Vec<FileIssuer>>,
    /// JWKS cache tuning.
    #[serde(default)]
    pub jwks: FileJwks,
    /// Memory budget of the verified-token cache, in MiB (0 disables it).
    pub token_cache_mib: Option<u64>,
    /// Memory budget of the cache of introspection answers (opaque tokens), in MiB (0 disables it).
    pub introspection_cache_mib: Option<u64>,
}

/// `[[auth.issuers]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    /// Short name used by services' `issuers = [...]`; default: the issuer URL.
    pub name: Option<String>,
    /// The exact `iss` value.
    pub issuer: Option<String>,
    /// JWKS URL; default: discovered from `<issuer>/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values.
    pub audiences: Option<Vec<String>>,
    /// Accepted algorithms; default all asymmetric ones (or HS256/384/512 for a shared-secret issuer).
    pub algorithms: Option<Vec<String>>,
    /// Clock leeway for `exp`, `nbf` and `iat`.
    pub leeway_secs: Option<u64>,
    /// Shared HMAC secret (makes this a shared-secret issuer).
    pub secret: Option<String>,
    /// File holding the shared HMAC secret.
    pub secret_file: Option<String>,
    /// Dotted path of the groups claim (default `groups`).
    pub groups_claim: Option<String>,
    /// Claim used as the user name (default `preferred_username`, then `sub`).
    pub username_claim: Option<String>,
    /// RFC 7662 introspection endpoint for opaque tokens.
    pub introspection_endpoint: Option<String>,
    /// Client id for introspection.
    pub client_id: Option<String>,
    /// Client secret for introspection.
    pub client_secret: Option<String>,
    /// File holding the client secret for introspection.
    pub client_secret_file: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub introspection_auth_method: Option<String>,
    /// Upper bound on how long an introspection answer is cached.
    pub introspection_cache_secs: Option<u64>,
    /// Extra CA certificates (PEM) for reaching the issuer over HTTPS.
    pub ca_file: Option<String>,
}

/// `[auth.jwks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwks {
    /// Lower bound of the cache TTL taken from `Cache-Control: max-age`.
    pub min_ttl_secs: Option<u64>,
    /// Upper bound of the cache TTL.
    pub max_ttl_secs: Option<u64>,
    /// Minimum time between refetches triggered by unknown key ids, per issuer.
    pub unknown_kid_cooldown_secs: Option<u64>,
    /// How long the last good keys keep serving while the issuer is unreachable.
    pub max_stale_secs: Option<u64>,
    /// Timeout of one fetch.
    pub fetch_timeout_secs: Option<u64>,
    /// Largest accepted JWKS or discovery document.
    pub max_bytes: Option<u64>,
}

/// `[oidc]`: the relying party for browser sign-in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOidc {
    /// The provider's issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: Option<String>,
    /// Name of this issuer for services' `issuers = [...]` (default `oidc`).
    pub name: Option<String>,
    /// The client id registered at the provider.
    pub client_id: Option<String>,
    /// The client secret.
    pub client_secret: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<String>,
    /// Scopes requested (default `openid profile email groups`).
    pub scopes: Option<Vec<String>>,
    /// `auto` (default), `client_secret_basic`, `client_secret_post`, `private_key_jwt` or `none`.
    pub token_endpoint_auth_method: Option<String>,
    /// PEM private key for `private_key_jwt`.
    pub private_key_file: Option<String>,
    /// Signing algorithm of the `private_key_jwt` assertion (default RS256 for RSA keys, ES256 for EC keys).
    pub private_key_algorithm: Option<String>,
    /// Host of the sign-in portal (default `auth.<domain>`).
    pub portal: Option<String>,
    /// Cookie domains: one per root domain (default `[domain]`).
    pub cookie_domains: Option<Vec<String>>,
    /// Merge the userinfo endpoint's claims into the session (default true).
    pub userinfo: Option<bool>,
    /// Dotted path of the groups claim (default `groups`).
    pub groups_claim: Option<String>,
    /// Claim used as the user name (default `preferred_username`, then `sub`).
    pub username_claim: Option<String>,
    /// Clock leeway for ID token times (default 60).
    pub leeway_secs: Option<u64>,
    /// Extra CA certificates (PEM) for reaching the provider.
    pub ca_file: Option<String>,
}

/// `[session]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSession {
    /// Key (at least 32 bytes) that signs session cookies and encrypts sign-in state; share it between replicas.
    pub secret: Option<String>,
    /// File holding the key.
    pub secret_file: Option<String>,
    /// `memory` (default) or `redis://host:port/db` to share sessions between replicas.
    pub store: Option<String>,
    /// Session cookie name (default `_portcullis`).
    pub cookie_name: Option<String>,
    /// A session unused this long ends (default 43200).
    pub idle_timeout_secs: Option<u64>,
    /// A session ends this long after sign-in, used or not (default 604800).
    pub max_lifetime_secs: Option<u64>,
    /// Claims are re-read from the provider (refresh) at least this often (default 300).
    pub refresh_secs: Option<u64>,
}

/// `[forward_auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    /// Hosts that serve only the forward-auth endpoints (besides the admin listener and the portal host).
    pub hosts: Option<Vec<String>>,
}
