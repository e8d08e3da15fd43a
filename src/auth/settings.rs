//! Runtime auth settings built from `[auth]`: issuers with parsed URLs, algorithms, keys and claim mapping, and
//! the JWKS cache tuning.
//!
//! Building reads only local files (secrets, CA files), never the network, and reports every problem with its
//! key path. Nothing here holds state that changes at runtime; caches live in the `Authenticator`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};

use super::claims::ClaimPath;
use super::client::{is_allowed_scheme, HttpClient};
use crate::config::file::{FileAuth, FileIssuer, FileJwks};
use crate::config::{resolve_secret, ProblemKind, Problems, Secret};

/// The asymmetric algorithms accepted by default (RFC 7518 §3.1 plus EdDSA, RFC 8037).
pub(crate) const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Default clock leeway for `exp`, `nbf` and `iat`.
pub(crate) const DEFAULT_LEEWAY_SECS: u64 = 60;
/// Largest accepted leeway.
pub(crate) const MAX_LEEWAY_SECS: u64 = 600;
/// Default upper bound on how long an introspection answer is cached.
pub(crate) const DEFAULT_INTROSPECTION_CACHE_SECS: u64 = 60;

/// Default of `auth.token_cache_mib`.
pub(crate) const DEFAULT_TOKEN_CACHE_MIB: u64 = 16;
/// Default of `auth.introspection_cache_mib`.
pub(crate) const DEFAULT_INTROSPECTION_CACHE_MIB: u64 = 16;
/// Largest accepted `auth.token_cache_mib` and `auth.introspection_cache_mib`.
pub(crate) const MAX_TOKEN_CACHE_MIB: u64 = 4096;

/// Runtime auth settings built from `[auth]` at config load (part of the immutable config snapshot).
#[derive(Debug)]
pub struct AuthSettings {
    pub(crate) issuers: Vec<Arc<Issuer>>,
    pub(crate) jwks: JwksTuning,
    /// Browser sign-in, when `[oidc]` is configured.
    pub(crate) oidc: Option<Arc<super::oidc::OidcSettings>>,
    /// `auth.token_cache_mib` in bytes: what the verified-token cache may hold (0: no cache).
    pub(crate) token_cache_bytes: u64,
    /// `auth.introspection_cache_mib` in bytes: what the cache of introspection answers may hold (0: no cache).
    pub(crate) introspection_cache_bytes: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            jwks: JwksTuning::default(),
            oidc: None,
            token_cache_bytes: DEFAULT_TOKEN_CACHE_MIB << 20,
            introspection_cache_bytes: DEFAULT_INTROSPECTION_CACHE_MIB << 20,
        }
    }
}

impl AuthSettings {
    /// Whether any issuer is configured.
    pub fn has_issuers(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// The issuers, in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        self.issuers.iter().map(|i| &**i)
    }

    /// Browser sign-in settings, when configured.
    pub fn oidc(&self) -> Option<&super::oidc::OidcSettings> {
        self.oidc.as_deref()
    }

    /// The JWKS cache tuning.
    pub fn jwks(&self) -> &JwksTuning {
        &self.jwks
    }

    /// The verified-token cache's budget in bytes (`auth.token_cache_mib`; 0: no cache).
    pub fn token_cache_bytes(&self) -> u64 {
        self.token_cache_bytes
    }

    /// The introspection cache's budget in bytes (`auth.introspection_cache_mib`; 0: no cache).
    pub fn introspection_cache_bytes(&self) -> u64 {
        self.introspection_cache_bytes
    }

    /// The issuer with this name or `iss` URL.
    pub(crate) fn find(&self, name_or_url: &str) -> Option<&Arc<Issuer>> {
        self.issuers
            .iter()
            .find(|i| i.name == name_or_url || i.url == name_or_url)
    }
}

/// `[auth.jwks]` as runtime values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksTuning {
    /// Lower bound of the TTL from `Cache-Control: max-age` (default 60 s).
    pub min_ttl: Duration,
    /// Upper bound of that TTL (default 3600 s).
    pub max_ttl: Duration,
    /// TTL when the answer has no `max-age` (300 s, clamped to the bounds).
    pub default_ttl: Duration,
    /// Minimum time between unknown-`kid` refetches per issuer (default 30 s).
    pub unknown_kid_cooldown: Duration,
    /// How long the last good keys serve past their TTL while the issuer is unreachable (default 6 h).
    pub max_stale: Duration,
    /// Timeout of one fetch (default 5 s).
    pub fetch_timeout: Duration,
    /// Largest accepted document (default 256 KiB).
    pub max_bytes: usize,
}

impl Default for JwksTuning {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            default_ttl: Duration::from_secs(300),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(6 * 3600),
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
        }
    }
}

/// One trusted token issuer.
#[derive(Debug)]
pub struct Issuer {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) kind: IssuerKind,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) leeway: u64,
    pub(crate) groups_claim: ClaimPath,
    pub(crate) username_claim: Option<ClaimPath>,
    pub(crate) introspection: Option<Introspection>,
    pub(crate) client: Option<HttpClient>,
    /// Digest of everything that decides whether a token verifies; a verified-claims cache entry made under
    /// another configuration of the same issuer is not reused.
    pub(crate) fingerprint: [u8; 32],
    /// See [`Issuer::cache_key`]; made once, as it is looked up on every request with a token.
    cache_key: String,
}

impl Issuer {
    /// The short name services use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exact `iss` value.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The accepted audiences (empty: `aud` not checked).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The accepted algorithms.
    pub fn algorithms(&self) -> Vec<String> {
        self.algorithms.iter().map(|a| format!("{a:?}")).collect()
    }

    /// Whether this is a shared-secret (HMAC) issuer.
    pub fn is_shared_secret(&self) -> bool {
        matches!(self.kind, IssuerKind::Hmac(_))
    }

    /// The key of this issuer's JWKS cache entry: issuer URL plus key source.
    pub(crate) fn cache_key(&self) -> &str {
        &self.cache_key
    }
}

/// Where an issuer's keys come from.
pub(crate) enum IssuerKind {
    /// A shared HMAC secret; only HS256/384/512.
    Hmac(Box<super::jwt::HmacKey>),
    /// Public keys from a JWKS; only asymmetric algorithms.
    Jwks(JwksSource),
}

impl std::fmt::Debug for IssuerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuerKind::Hmac(_) => f.write_str("Hmac(<redacted>)"),
            IssuerKind::Jwks(s) => write!(f, "Jwks({s:?})"),
        }
    }
}

/// The JWKS location.
#[derive(Debug, Clone)]
pub(crate) enum JwksSource {
    /// `jwks_uri` as configured.
    Explicit(Uri),
    /// The discovery document whose `jwks_uri` names the key set.
    Discovery(Uri),
}

/// RFC 7662 introspection settings of an issuer.
#[derive(Debug)]
pub(crate) struct Introspection {
    pub(crate) endpoint: Uri,
    pub(crate) client_id: String,
    pub(crate) secret: Secret,
    pub(crate) method: ClientAuthMethod,
    pub(crate) cache_bound: Duration,
}

/// How the gateway authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuthMethod {
    /// HTTP Basic with the form-encoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// Builds the runtime auth settings from `[auth]`; problems are reported with key paths under `auth.`.
pub fn build_auth(file: &FileAuth, base_dir: &Path, problems: &mut Problems) -> AuthSettings {
    let jwks = build_jwks(&file.jwks, problems);
    let mut issuers: Vec<Arc<Issuer>> = Vec::new();
    for (i, fi) in file.issuers.iter().flatten().enumerate() {
        let path = format!("auth.issuers.{i}");
        if let Some(issuer) = build_issuer(fi, &path, base_dir, problems) {
            if issuers.iter().any(|o| o.url == issuer.url) {
                problems.push(
                    format!("{path}.issuer"),
                    ProblemKind::Conflict {
                        reason: format!("issuer {:?} is configured twice", issuer.url),
                    },
                );
                continue;
            }
            if issuers.iter().any(|o| o.name == issuer.name) {
                problems.push(
                    format!("{path}.name"),
                    ProblemKind::Conflict {
                        reason: format!("issuer name {:?} is used twice", issuer.name),
                    },
                );
                continue;
            }
            issuers.push(Arc::new(issuer));
        }
    }
    let token_cache_bytes = cache_budget(
        "auth.token_cache_mib",
        file.token_cache_mib,
        DEFAULT_TOKEN_CACHE_MIB,
        problems,
    );
    let introspection_cache_bytes = cache_budget(
        "auth.introspection_cache_mib",
        file.introspection_cache_mib,
        DEFAULT_INTROSPECTION_CACHE_MIB,
        problems,
    );
    AuthSettings {
        issuers,
        jwks,
        oidc: None,
        token_cache_bytes,
        introspection_cache_bytes,
    }
}

/// A cache's memory budget in bytes from its `*_mib` key: the default when unset, a problem naming the key when
/// it is over [`MAX_TOKEN_CACHE_MIB`].
fn cache_budget(key: &str, mib: Option<u64>, default: u64, problems: &mut Problems) -> u64 {
    let mib = mib.unwrap_or(default);
    if mib > MAX_TOKEN_CACHE_MIB {
        problems.invalid(
            key,
            mib.to_string(),
            format!("must be at most {MAX_TOKEN_CACHE_MIB} (0 turns the cache off)"),
        );
        default << 20
    } else {
        mib << 20
    }
}

fn build_jwks(f: &FileJwks, problems: &mut Problems) -> JwksTuning {
    let d = JwksTuning::default();
    let secs = |v: Option<u64>, def: Duration| v.map(Duration::from_secs).unwrap_or(def);
    let mut t = JwksTuning {
        min_ttl: secs(f.min_ttl_secs, d.min_ttl),
        max_ttl: secs(f.max_ttl_secs, d.max_ttl),
        default_ttl: d.default_ttl,
        unknown_kid_cooldown: secs(f.unknown_kid_cooldown_secs, d.unknown_kid_cooldown),
        max_stale: secs(f.max_stale_secs, d.max_stale),
        fetch_timeout: secs(f.fetch_timeout_secs, d.fetch_timeout),
        max_bytes: f
            .max_bytes
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
            .unwrap_or(d.max_bytes),
    };
    if t.min_ttl > t.max_ttl {
        problems.push(
            "auth.jwks.min_ttl_secs",
            ProblemKind::Conflict {
                reason: format!(
                    "min_ttl_secs ({}) is larger than max_ttl_secs ({})",
                    t.min_ttl.as_secs(),
                    t.max_ttl.as_secs()
                ),
            },
        );
    }
    if t.fetch_timeout.is_zero() {
        problems.invalid("auth.jwks.fetch_timeout_secs", "0", "must be at least 1");
        t.fetch_timeout = d.fetch_timeout;
    }
    if t.max_bytes < 1024 {
        problems.invalid(
            "auth.jwks.max_bytes",
            t.max_bytes.to_string(),
            "must be at least 1024",
        );
    }
    t.default_ttl = t.default_ttl.clamp(t.min_ttl, t.max_ttl.max(t.min_ttl));
    t
}

fn parse_url(s: &str, path: &str, problems: &mut Problems) -> Option<Uri> {
    match s.parse::<Uri>() {
        Ok(u) if is_allowed_scheme(&u) => Some(u),
        Ok(_) => {
            problems.invalid(
                path,
                s,
                "must be an https URL (plain http only to a loopback address)",
            );
            None
        }
        Err(e) => {
            problems.invalid(path, s, e.to_string());
            None
        }
    }
}

pub(crate) fn build_issuer(
    f: &FileIssuer,
    path: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Issuer> {
    let before = problems.len();
    let Some(url) = f.issuer.as_deref() else {
        problems.push(
            format!("{path}.issuer"),
            ProblemKind::Required {
                hint: Some("the exact `iss` value, e.g. \"https://auth.example.com\""),
            },
        );
        return None;
    };
    // `iss` is a StringOrURI (RFC 7519 §4.1.1): only discovery needs it to be a URL.
    let discovery = f.secret.is_none() && f.secret_file.is_none() && f.jwks_uri.is_none();
    let url_parsed = if discovery {
        parse_url(url, &format!("{path}.issuer"), problems)
    } else if url.trim().is_empty() {
        problems.invalid(format!("{path}.issuer"), url, "must not be empty");
        None
    } else {
        None
    };
    let secret = resolve_secret(
        f.secret.as_deref(),
        f.secret_file.as_deref(),
        &format!("{path}.secret"),
        base_dir,
        problems,
    );
    let shared = f.secret.is_some() || f.secret_file.is_some();
    if shared && f.jwks_uri.is_some() {
        problems.push(
            format!("{path}.jwks_uri"),
            ProblemKind::Conflict {
                reason: "a shared-secret issuer (`secret`/`secret_file`) has no JWKS; remove one of them"
                    .into(),
            },
        );
    }

    let algorithms = match &f.algorithms {
        None if shared => {
            let len = secret.as_ref().map_or(0, |s| s.expose().len());
            HMAC.iter()
                .copied()
                .filter(|a| len >= hmac_min_len(*a))
                .collect()
        }
        None => ASYMMETRIC.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            if list.is_empty() {
                problems.invalid(
                    format!("{path}.algorithms"),
                    "[]",
                    "list at least one algorithm",
                );
            }
            for (j, name) in list.iter().enumerate() {
                let apath = format!("{path}.algorithms.{j}");
                match name.parse::<Algorithm>() {
                    Ok(a) if shared && !HMAC.contains(&a) => problems.invalid(
                        apath,
                        name,
                        "a shared-secret issuer accepts only HS256, HS384 or HS512",
                    ),
                    Ok(a) if !shared && HMAC.contains(&a) => problems.invalid(
                        apath,
                        name,
                        "HMAC algorithms need a shared-secret issuer (`secret_file`); a JWKS issuer accepts only public-key algorithms",
                    ),
                    Ok(a) => {
                        if let Some(s) = &secret {
                            if s.expose().len() < hmac_min_len(a) {
                                problems.invalid(
                                    apath.clone(),
                                    name,
                                    format!(
                                        "the secret is shorter than the {} bytes this algorithm requires (RFC 7518 §3.2)",
                                        hmac_min_len(a)
                                    ),
                                );
                            }
                        }
                        if !out.contains(&a) {
                            out.push(a);
                        }
                    }
                    Err(_) => problems.invalid(
                        apath,
                        name,
                        "expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512 (`none` is never accepted)",
                    ),
                }
            }
            out
        }
    };
    if let Some(s) = &secret {
        if s.expose().len() < 32 {
            problems.invalid(
                format!("{path}.secret"),
                "<redacted>",
                "an HMAC secret must be at least 32 bytes (RFC 7518 §3.2)",
            );
        }
    }

    let source = match (&f.jwks_uri, &url_parsed) {
        (Some(j), _) => {
            parse_url(j, &format!("{path}.jwks_uri"), problems).map(JwksSource::Explicit)
        }
        (None, Some(_)) if discovery => {
            let disc = format!(
                "{}/.well-known/openid-configuration",
                url.trim_end_matches('/')
            );
            disc.parse::<Uri>().ok().map(JwksSource::Discovery)
        }
        (None, _) => None,
    };

    let audiences = match &f.audiences {
        Some(a) if a.is_empty() || a.iter().any(|s| s.is_empty()) => {
            problems.invalid(
                format!("{path}.audiences"),
                format!("{a:?}"),
                "audiences must be non-empty strings; omit the key to accept any audience",
            );
            Vec::new()
        }
        Some(a) => a.clone(),
        None => Vec::new(),
    };

    let leeway = f.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS);
    if leeway > MAX_LEEWAY_SECS {
        problems.invalid(
            format!("{path}.leeway_secs"),
            leeway.to_string(),
            format!("at most {MAX_LEEWAY_SECS}"),
        );
    }
    let claim = |key: &str, v: Option<&str>, problems: &mut Problems| {
        v.and_then(|s| match ClaimPath::parse(s) {
            Ok(c) => Some(c),
            Err(reason) => {
                problems.invalid(format!("{path}.{key}"), s, reason);
                None
            }
        })
    };
    let groups_claim = claim("groups_claim", f.groups_claim.as_deref(), problems)
        .unwrap_or_else(|| ClaimPath("groups".into()));
    let username_claim = claim("username_claim", f.username_claim.as_deref(), problems);

    let introspection = build_introspection(f, path, base_dir, problems);

    let client = f.ca_file.as_deref().and_then(|ca| {
        let full = base_dir.join(ca);
        let certs = match std::fs::read(&full) {
            Ok(pem) => rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_default(),
            Err(source) => {
                problems.push(
                    format!("{path}.ca_file"),
                    ProblemKind::File { path: full, source },
                );
                return None;
            }
        };
        if certs.is_empty() {
            problems.invalid(
                format!("{path}.ca_file"),
                ca,
                "no PEM certificate in the file",
            );
            return None;
        }
        match HttpClient::new(&certs) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.invalid(format!("{path}.ca_file"), ca, e.to_string());
                None
            }
        }
    });

    if problems.len() > before {
        return None;
    }
    let secret_digest: [u8; 32] = secret
        .as_ref()
        .map(|s| Sha256::digest(s.expose().as_bytes()).into())
        .unwrap_or_default();
    let kind = match (secret, source) {
        (Some(s), _) => IssuerKind::Hmac(Box::new(super::jwt::HmacKey::new(s.expose().as_bytes()))),
        (None, Some(src)) => IssuerKind::Jwks(src),
        (None, None) => return None,
    };
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    match &kind {
        IssuerKind::Hmac(_) => {
            h.update(b"\0hmac\0");
            // The secret's digest, so a changed secret invalidates cached verifications.
            h.update(secret_digest);
        }
        IssuerKind::Jwks(JwksSource::Explicit(u)) | IssuerKind::Jwks(JwksSource::Discovery(u)) => {
            h.update(b"\0jwks\0");
            h.update(u.to_string().as_bytes());
        }
    }
    for a in &algorithms {
        h.update(format!("{a:?}").as_bytes());
    }
    let cache_key = match &kind {
        IssuerKind::Hmac(_) => url.to_owned(),
        IssuerKind::Jwks(JwksSource::Explicit(u)) => format!("{url} {u}"),
        IssuerKind::Jwks(JwksSource::Discovery(u)) => format!("{url} {u}"),
    };
    Some(Issuer {
        cache_key,
        name: f.name.clone().unwrap_or_else(|| url.to_owned()),
        url: url.to_owned(),
        kind,
        audiences,
        algorithms,
        leeway,
        groups_claim,
        username_claim,
        introspection,
        client,
        fingerprint: h.finalize().into(),
    })
}

fn hmac_min_len(a: Algorithm) -> usize {
    match a {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn build_introspection(
    f: &FileIssuer,
    path: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Introspection> {
    let Some(ep) = f.introspection_endpoint.as_deref() else {
        for (key, set) in [
            ("client_id", f.client_id.is_some()),
            (
                "client_secret",
                f.client_secret.is_some() || f.client_secret_file.is_some(),
            ),
            (
                "introspection_auth_method",
                f.introspection_auth_method.is_some(),
            ),
            (
                "introspection_cache_secs",
                f.introspection_cache_secs.is_some(),
            ),
        ] {
            if set {
                problems.push(
                    format!("{path}.{key}"),
                    ProblemKind::Conflict {
                        reason: format!("`{key}` is only used with `introspection_endpoint`"),
                    },
                );
            }
        }
        return None;
    };
    let endpoint = parse_url(ep, &format!("{path}.introspection_endpoint"), problems);
    let secret = resolve_secret(
        f.client_secret.as_deref(),
        f.client_secret_file.as_deref(),
        &format!("{path}.client_secret"),
        base_dir,
        problems,
    );
    if f.client_id.is_none() {
        problems.push(
            format!("{path}.client_id"),
            ProblemKind::Required {
                hint: Some("introspection needs the gateway's client credentials"),
            },
        );
    }
    if secret.is_none() && f.client_secret.is_none() && f.client_secret_file.is_none() {
        problems.push(
            format!("{path}.client_secret"),
            ProblemKind::Required {
                hint: Some("set `client_secret` or `client_secret_file`"),
            },
        );
    }
    let method = match f.introspection_auth_method.as_deref() {
        None | Some("client_secret_basic") => Some(ClientAuthMethod::Basic),
        Some("client_secret_post") => Some(ClientAuthMethod::Post),
        Some(other) => {
            problems.invalid(
                format!("{path}.introspection_auth_method"),
                other,
                "expected `client_secret_basic` or `client_secret_post`",
            );
            None
        }
    };
    let cache_bound = Duration::from_secs(
        f.introspection_cache_secs
            .unwrap_or(DEFAULT_INTROSPECTION_CACHE_SECS),
    );
    Some(Introspection {
        endpoint: endpoint?,
        client_id: f.client_id.clone()?,
        secret: secret?,
        method: method?,
        cache_bound,
    })
}
