//! Forward-auth: the front door's decision, answered to a proxy that stays in front (nginx `auth_request`,
//! Traefik ForwardAuth, Caddy `forward_auth`, HAProxy, Envoy HTTP `ext_authz`, oauth2-proxy-style `/oauth2/auth`).
//!
//! The original request is read from the proxy's metadata ([`describe`]), looked up in the same `[services]`
//! table and decided by [`Authenticator::authorize`] with the forwarded method, host and raw path (normalized
//! there, exactly as on the front door). The answer is shaped per endpoint ([`shape`]): 2xx with identity
//! headers, 302/303 or 401 with the sign-in URL, 403, 400. Decisions of a credential are cached for a few
//! seconds ([`DecisionCache`]); a sign-out removes its session's entries.
//!
//! Nothing here decides who may call: the caller passes whether the peer is a trusted proxy, and an untrusted one
//! gets 400 before any header is read. Tokens and cookie values are never logged.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE,
    LOCATION, WWW_AUTHENTICATE,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use serde_json::Value;

use super::authenticator::Authenticator;
use super::error::{AuthError, DenyReason};
use super::identity::{apply_identity, joined_groups, Permit};
use super::path::normalized_forms;
use super::policy::{RuleRef, ServicePolicy};
use super::portal::{is_browser, sign_in_url, PortalResponse};
use super::settings::AuthSettings;
use crate::router::Host;

/// Path prefix of the Envoy endpoint; the original path follows it.
pub const EXT_AUTHZ_PREFIX: &str = "/api/authz/ext-authz";

/// How long a decision is reused for the same credential, service, method and path.
const DECISION_TTL: Duration = Duration::from_secs(5);
/// Most decisions kept.
const DECISION_CAPACITY: u64 = 10_000;

/// The forward-auth endpoints, each with the contract of the auth server people already configure for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/authz/forward-auth` (Traefik, Caddy, HAProxy): `X-Forwarded-Method/-Proto/-Host/-Uri`; a browser
    /// that must sign in gets 302/303.
    ForwardAuth,
    /// `/api/authz/auth-request` (nginx): `X-Original-URL` and `X-Original-Method`; never 3xx, since nginx
    /// turns anything but 2xx/401/403 into 500.
    AuthRequest,
    /// `/api/authz/ext-authz/<path>` (Envoy HTTP `ext_authz`): the real method, the path after the prefix and
    /// `Host` (or `X-Forwarded-Host`); only 200 allows.
    ExtAuthz,
    /// `/oauth2/auth` (oauth2-proxy style): 202 / 401 / 403 with `X-Auth-Request-*` headers.
    OAuth2Auth,
}

impl Endpoint {
    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/api/authz/forward-auth" => Some(Endpoint::ForwardAuth),
            "/api/authz/auth-request" => Some(Endpoint::AuthRequest),
            "/oauth2/auth" => Some(Endpoint::OAuth2Auth),
            p if p == EXT_AUTHZ_PREFIX || p.starts_with("/api/authz/ext-authz/") => {
                Some(Endpoint::ExtAuthz)
            }
            _ => None,
        }
    }

    /// A fixed label for logs.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ForwardAuth => "forward-auth",
            Endpoint::AuthRequest => "auth-request",
            Endpoint::ExtAuthz => "ext-authz",
            Endpoint::OAuth2Auth => "oauth2-auth",
        }
    }
}

/// The original request as the proxy described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Original {
    pub(crate) method: Method,
    pub(crate) scheme: &'static str,
    /// The authority as sent (host and optional port), validated by [`Host::parse`].
    pub(crate) authority: String,
    pub(crate) host: Host,
    pub(crate) path_and_query: PathAndQuery,
}

impl Original {
    /// The URL the client asked for, for `rd`.
    pub(crate) fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme, self.authority, self.path_and_query
        )
    }
}

/// Why the proxy's description of the original request is unusable (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A required header is absent.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A header that must appear once appears several times (or holds a list).
    #[error("header {0} is repeated or holds a list")]
    Repeated(&'static str),
    /// A header's value is not what the contract allows.
    #[error("header {0} is malformed")]
    Malformed(&'static str),
}

const X_FORWARDED_METHOD: &str = "x-forwarded-method";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_URI: &str = "x-forwarded-uri";
const X_ORIGINAL_URL: &str = "x-original-url";
const X_ORIGINAL_METHOD: &str = "x-original-method";

/// The single value of a header, as visible ASCII without whitespace.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, MetadataError> {
    let mut all = headers.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(MetadataError::Repeated(name));
    }
    let s = v.to_str().map_err(|_| MetadataError::Malformed(name))?;
    if s.is_empty() || s.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(MetadataError::Malformed(name));
    }
    Ok(Some(s))
}

fn required<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, MetadataError> {
    single(headers, name)?.ok_or(MetadataError::Missing(name))
}

fn method(raw: &str, name: &'static str) -> Result<Method, MetadataError> {
    if raw.contains(',') {
        return Err(MetadataError::Repeated(name));
    }
    Method::from_bytes(raw.as_bytes()).map_err(|_| MetadataError::Malformed(name))
}

fn scheme(raw: Option<&str>, name: &'static str) -> Result<&'static str, MetadataError> {
    match raw {
        None => Ok("https"),
        Some(s) if s.eq_ignore_ascii_case("https") => Ok("https"),
        Some(s) if s.eq_ignore_ascii_case("http") => Ok("http"),
        Some(s) if s.contains(',') => Err(MetadataError::Repeated(name)),
        Some(_) => Err(MetadataError::Malformed(name)),
    }
}

fn host(raw: &str, name: &'static str) -> Result<(String, Host), MetadataError> {
    if raw.contains(',') {
        return Err(MetadataError::Repeated(name));
    }
    // Userinfo and anything but a host name (and port) are refused by `Host::parse`.
    let host = Host::parse(raw).map_err(|_| MetadataError::Malformed(name))?;
    Ok((raw.to_owned(), host))
}

/// An origin-form request target (RFC 9112 §3.2.1), parsed as the front door's HTTP parser would: absolute-form,
/// `*`, fragments and anything `http::Uri` refuses are malformed.
fn origin_form(raw: &str, name: &'static str) -> Result<PathAndQuery, MetadataError> {
    if !raw.starts_with('/') || raw.contains('#') {
        return Err(MetadataError::Malformed(name));
    }
    let pq = PathAndQuery::try_from(raw).map_err(|_| MetadataError::Malformed(name))?;
    if pq.as_str() != raw {
        return Err(MetadataError::Malformed(name));
    }
    Ok(pq)
}

/// `X-Original-URL`: an absolute `http`/`https` URL without userinfo or fragment.
fn absolute_url(raw: &str) -> Result<(&'static str, String, Host, PathAndQuery), MetadataError> {
    let bad = || MetadataError::Malformed(X_ORIGINAL_URL);
    if raw.contains('#') {
        return Err(bad());
    }
    let uri: Uri = raw.parse().map_err(|_| bad())?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        _ => return Err(bad()),
    };
    let authority = uri.authority().ok_or_else(bad)?.as_str();
    if authority.contains('@') {
        return Err(bad());
    }
    let host = Host::parse(authority).map_err(|_| bad())?;
    let pq = match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        Some(pq) if pq.as_str().is_empty() => PathAndQuery::from_static("/"),
        // `https://host?x` has an empty path and a query.
        Some(pq) if pq.as_str().starts_with('?') => {
            PathAndQuery::try_from(format!("/{}", pq.as_str())).map_err(|_| bad())?
        }
        Some(_) => return Err(bad()),
        None => PathAndQuery::from_static("/"),
    };
    Ok((scheme, authority.to_owned(), host, pq))
}

fn from_forwarded(headers: &HeaderMap) -> Result<Original, MetadataError> {
    let method = method(required(headers, X_FORWARDED_METHOD)?, X_FORWARDED_METHOD)?;
    let scheme = scheme(single(headers, X_FORWARDED_PROTO)?, X_FORWARDED_PROTO)?;
    let (authority, host) = host(required(headers, X_FORWARDED_HOST)?, X_FORWARDED_HOST)?;
    let path_and_query = origin_form(required(headers, X_FORWARDED_URI)?, X_FORWARDED_URI)?;
    Ok(Original {
        method,
        scheme,
        authority,
        host,
        path_and_query,
    })
}

fn from_original(headers: &HeaderMap) -> Result<Original, MetadataError> {
    let method = method(required(headers, X_ORIGINAL_METHOD)?, X_ORIGINAL_METHOD)?;
    let (scheme, authority, host, path_and_query) =
        absolute_url(required(headers, X_ORIGINAL_URL)?)?;
    Ok(Original {
        method,
        scheme,
        authority,
        host,
        path_and_query,
    })
}

/// Reads the original request from a forward-auth call. `method` and `uri` are the call's own.
///
/// # Errors
/// [`MetadataError`] for absent, repeated or malformed metadata, including path targets the front door's
/// parser would not accept.
pub(crate) fn describe(
    endpoint: Endpoint,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Original, MetadataError> {
    match endpoint {
        Endpoint::ForwardAuth => from_forwarded(headers),
        Endpoint::AuthRequest => from_original(headers),
        // Written for oauth2-proxy: nginx configs send `X-Original-URL`, Traefik and Caddy `X-Forwarded-*`.
        Endpoint::OAuth2Auth => {
            if headers.contains_key(X_ORIGINAL_URL) {
                from_original(headers)
            } else {
                from_forwarded(headers)
            }
        }
        Endpoint::ExtAuthz => {
            let raw = uri
                .path_and_query()
                .map_or("", |p| p.as_str())
                .strip_prefix(EXT_AUTHZ_PREFIX)
                .unwrap_or("");
            let raw = if raw.is_empty() || raw.starts_with('?') {
                format!("/{raw}")
            } else {
                raw.to_owned()
            };
            let path_and_query = origin_form(&raw, ":path")?;
            let (authority, host) = match single(headers, X_FORWARDED_HOST)? {
                Some(h) => host(h, X_FORWARDED_HOST)?,
                None => host(required(headers, "host")?, "host")?,
            };
            let scheme = scheme(single(headers, X_FORWARDED_PROTO)?, X_FORWARDED_PROTO)?;
            Ok(Original {
                method: method.clone(),
                scheme,
                authority,
                host,
                path_and_query,
            })
        }
    }
}

/// What the answer needs besides the decision.
pub(crate) struct Shaping<'a> {
    pub(crate) endpoint: Endpoint,
    /// The call itself is HEAD: no body.
    pub(crate) head: bool,
    /// The sign-in URL for this request, when browser sign-in is configured.
    pub(crate) sign_in: Option<&'a str>,
    /// The caller looks like a browser navigation.
    pub(crate) browser: bool,
    pub(crate) original_method: &'a Method,
}

fn response(status: StatusCode, body: &'static str, head: bool) -> PortalResponse {
    let body = if head || body.is_empty() {
        Bytes::new()
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if status != StatusCode::FOUND && status != StatusCode::SEE_OTHER {
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A 400 for an unusable call (untrusted peer, bad metadata).
pub(crate) fn bad_request(head: bool) -> PortalResponse {
    response(StatusCode::BAD_REQUEST, "bad request\n", head)
}

/// A 403 (unknown host, CONNECT).
pub(crate) fn forbidden(head: bool) -> PortalResponse {
    response(StatusCode::FORBIDDEN, "forbidden\n", head)
}

/// Turns a decision into the endpoint's answer. Pure: no I/O, no logging.
pub(crate) fn shape(
    s: &Shaping<'_>,
    policy: &ServicePolicy,
    decision: &Result<Permit, AuthError>,
) -> PortalResponse {
    let permit = match decision {
        Ok(p) => p,
        Err(e) => return deny(s, e),
    };
    let status = if s.endpoint == Endpoint::OAuth2Auth {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut r = response(status, "ok\n", s.head);
    let h = r.headers_mut();
    match (s.endpoint, permit.identity()) {
        (Endpoint::OAuth2Auth, Some(id)) => {
            let mut set = |name: &'static str, v: Option<&str>| {
                if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
                    h.insert(HeaderName::from_static(name), v);
                }
            };
            set("x-auth-request-user", Some(&id.user));
            set("x-auth-request-email", id.email.as_deref());
            set(
                "x-auth-request-groups",
                joined_groups(policy, id).as_deref(),
            );
        }
        (Endpoint::OAuth2Auth, None) => {}
        (Endpoint::ForwardAuth | Endpoint::AuthRequest | Endpoint::ExtAuthz, _) => {
            // The same headers, names and formatting the front door sends the backend.
            let mut identity = HeaderMap::new();
            apply_identity(policy, permit, &mut identity);
            h.extend(identity);
        }
    }
    r
}

fn deny(s: &Shaping<'_>, e: &AuthError) -> PortalResponse {
    match e {
        AuthError::SignInRequired => {
            let redirect = matches!(s.endpoint, Endpoint::ForwardAuth | Endpoint::ExtAuthz)
                && s.browser
                && s.sign_in.is_some();
            let mut r = if redirect {
                // RFC 9110 §15.4: 303 makes the browser GET the sign-in page after a form POST.
                let status =
                    if s.original_method == Method::GET || s.original_method == Method::HEAD {
                        StatusCode::FOUND
                    } else {
                        StatusCode::SEE_OTHER
                    };
                response(status, "", s.head)
            } else {
                let mut r = response(StatusCode::UNAUTHORIZED, "unauthorized\n", s.head);
                if let Some(c) = e.www_authenticate() {
                    r.headers_mut().insert(WWW_AUTHENTICATE, c);
                }
                r
            };
            if let Some(v) = s.sign_in.and_then(|u| HeaderValue::from_str(u).ok()) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
        AuthError::NoCredentials
        | AuthError::InvalidToken { .. }
        | AuthError::NotConfigured { .. } => {
            let mut r = response(StatusCode::UNAUTHORIZED, "unauthorized\n", s.head);
            if let Some(c) = e.www_authenticate() {
                r.headers_mut().insert(WWW_AUTHENTICATE, c);
            }
            r
        }
        AuthError::Forbidden { .. } => forbidden(s.head),
        AuthError::BadPath { .. } => bad_request(s.head),
        AuthError::SessionStore(_) | AuthError::IssuerUnavailable { .. } => response(
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication unavailable\n",
            s.head,
        ),
    }
}

/// What the server around the endpoints provides.
pub struct ForwardAuthContext<'a> {
    /// The bound HTTPS port (sign-in URLs carry it unless it is 443).
    pub https_port: u16,
    /// The calling peer.
    pub peer: IpAddr,
    /// Whether the peer is in `server.trusted_proxies`: only those may describe a request.
    pub peer_trusted: bool,
    /// The running configuration's hash: decisions are never reused across a reload.
    pub config_hash: &'a str,
    /// The service policy for a host.
    pub lookup: &'a (dyn Fn(&str) -> Option<&'a ServicePolicy> + Sync),
}

/// Whose decision a cache entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DecisionKey {
    /// SHA-256 of every `Authorization` value (never the token itself).
    authorization: Option<[u8; 32]>,
    /// The verified session id of the session cookie.
    session: Option<String>,
    service: String,
    method: Method,
    preflight: bool,
    /// The normalized readings of the path (what rules are matched on).
    forms: Vec<String>,
    config: String,
}

/// A cached decision: an allow, or a policy deny; other outcomes are never cached.
#[derive(Debug, Clone)]
pub(crate) struct CachedDecision {
    outcome: Result<Permit, (RuleRef, DenyReason)>,
}

impl CachedDecision {
    fn issuer_and_subject(&self) -> Option<(&str, &str)> {
        let id = self.outcome.as_ref().ok()?.identity()?;
        Some((id.issuer.as_str(), id.subject.as_str()))
    }
}

/// Decisions by credential, service, method and normalized path, for [`DECISION_TTL`].
pub(crate) struct DecisionCache(moka::sync::Cache<DecisionKey, CachedDecision>);

impl Default for DecisionCache {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(DECISION_CAPACITY)
                .time_to_live(DECISION_TTL)
                .support_invalidation_closures()
                .build(),
        )
    }
}

/// Which sessions ended, for [`Authenticator::sessions_ended`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum EndedSessions<'a> {
    /// One session of this gateway (sign-out).
    One(&'a str),
    /// Sessions of a provider user (back-channel logout); `None`: every session of the issuer.
    Provider {
        issuer: &'a str,
        sub: Option<&'a str>,
    },
}

impl Authenticator {
    /// Removes cached forward-auth decisions of ended sessions, so a sign-out takes effect at once.
    pub(crate) fn sessions_ended(&self, ended: EndedSessions<'_>) {
        let cache = &self.inner.decisions.0;
        let result = match ended {
            EndedSessions::One(id) => {
                let id = id.to_owned();
                cache.invalidate_entries_if(move |k, _| k.session.as_deref() == Some(id.as_str()))
            }
            EndedSessions::Provider { issuer, sub } => {
                let issuer = issuer.to_owned();
                let sub = sub.map(str::to_owned);
                cache.invalidate_entries_if(move |k, v| {
                    // A cached deny carries no identity: drop every session-keyed one to be safe.
                    k.session.is_some()
                        && v.issuer_and_subject().is_none_or(|(i, s)| {
                            i == issuer && sub.as_deref().is_none_or(|sub| sub == s)
                        })
                })
            }
        };
        if let Err(e) = result {
            // Cannot happen with `support_invalidation_closures`; fall back to dropping everything.
            tracing::error!(error = %e, "cannot invalidate cached forward-auth decisions selectively");
            cache.invalidate_all();
        }
    }

    /// [`Authenticator::authorize`] through the decision cache.
    async fn authorize_cached(
        &self,
        auth: &AuthSettings,
        policy: &ServicePolicy,
        config_hash: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Permit, AuthError> {
        let key = decision_key(auth, policy, config_hash, method, path, headers);
        if let Some(k) = &key {
            if let Some(hit) = self.inner.decisions.0.get(k) {
                if self.still_valid(&hit) {
                    tracing::debug!(service = %policy.name, auth.cached = true, "forward-auth decision reused");
                    return hit
                        .outcome
                        .map_err(|(rule, reason)| AuthError::Forbidden { rule, reason });
                }
            }
        }
        let decision = self.authorize(auth, policy, method, path, headers).await;
        if let Some(k) = key {
            let outcome = match &decision {
                Ok(p) if p.identity().is_some() => Some(Ok(p.clone())),
                Err(AuthError::Forbidden { rule, reason }) => Some(Err((*rule, reason.clone()))),
                Ok(_) | Err(_) => None,
            };
            if let Some(outcome) = outcome {
                self.inner.decisions.0.insert(k, CachedDecision { outcome });
            }
        }
        decision
    }

    /// A cached allow of a token past its `exp` is not reused.
    fn still_valid(&self, hit: &CachedDecision) -> bool {
        let Ok(p) = &hit.outcome else { return true };
        let Some(id) = p.identity() else { return true };
        match id.claims.get("exp").and_then(Value::as_i64) {
            Some(exp) => (self.now() as i64) < exp,
            None => true,
        }
    }

    /// Serves one forward-auth call: trust check, metadata, service lookup, decision, answer.
    pub async fn forward_auth(
        &self,
        auth: &AuthSettings,
        endpoint: Endpoint,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        ctx: &ForwardAuthContext<'_>,
    ) -> PortalResponse {
        let head = method == Method::HEAD;
        if !ctx.peer_trusted {
            tracing::info!(
                client.addr = %ctx.peer,
                forward_auth.endpoint = endpoint.label(),
                "forward-auth call from a peer outside server.trusted_proxies refused"
            );
            return bad_request(head);
        }
        let original = match describe(endpoint, method, uri, headers) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(
                    client.addr = %ctx.peer,
                    forward_auth.endpoint = endpoint.label(),
                    error = %e,
                    "forward-auth call with unusable request metadata refused"
                );
                return bad_request(head);
            }
        };
        if original.method == Method::CONNECT {
            // The front door never proxies a plain CONNECT.
            return forbidden(head);
        }
        let Some(policy) = (ctx.lookup)(original.host.as_str()) else {
            tracing::info!(
                client.addr = %ctx.peer,
                forward_auth.endpoint = endpoint.label(),
                http.host = %original.host,
                auth.decision = "deny",
                auth.reason = "unknown_host",
                "forward-auth call for a host that matches no service denied"
            );
            return forbidden(head);
        };
        let decision = self
            .authorize_cached(
                auth,
                policy,
                ctx.config_hash,
                &original.method,
                original.path_and_query.path(),
                headers,
            )
            .await;
        let sign_in = match &decision {
            Err(AuthError::SignInRequired) => sign_in_url(auth, &original.url(), ctx.https_port),
            _ => None,
        };
        shape(
            &Shaping {
                endpoint,
                head,
                sign_in: sign_in.as_deref(),
                browser: is_browser(headers),
                original_method: &original.method,
            },
            policy,
            &decision,
        )
    }
}

/// The cache key, or `None` when the request carries no credential (such decisions are cheap and not cached).
fn decision_key(
    auth: &AuthSettings,
    policy: &ServicePolicy,
    config_hash: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<DecisionKey> {
    let authorization = headers.contains_key(AUTHORIZATION).then(|| {
        let values = headers.get_all(AUTHORIZATION);
        super::authenticator::sha256(values.iter().flat_map(|v| [v.as_bytes(), &[0u8][..]]))
    });
    let session = auth.oidc().and_then(|o| o.cookies.session_id(headers));
    if authorization.is_none() && session.is_none() {
        return None;
    }
    let forms = normalized_forms(path).ok()?;
    Some(DecisionKey {
        authorization,
        session,
        service: policy.name.clone(),
        method: method.clone(),
        preflight: method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD),
        forms,
        config: config_hash.to_owned(),
    })
}

#[cfg(test)]
mod tests;
