//! The [`Authenticator`]: long-lived caches (JWKS per issuer, verified claims, introspection answers) and the
//! per-request decision [`Authenticator::authorize`].
//!
//! It lives outside the config snapshot (keyed by issuer URL, so a reload logs nobody out) and never blocks a
//! reload: keys are fetched lazily, on the request path, under the fetch timeout. Tokens are never logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION};
use http::{HeaderMap, Method, Request};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use moka::ops::compute::Op;
use serde_json::{Map, Value};

use super::claims::numeric_date;
use super::client::{form_encode, HttpClient};
use super::error::{AuthError, FetchError, TokenRejection};
use super::identity::{HeaderValues, Identity, IdentityMemo, Permit};
use super::jwks::{fetch_keys, KeySnapshot, PublicKey};
use super::jwt;
use super::path::normalized_forms;
use super::policy::{Requirement, ServicePolicy};
use super::settings::{AuthSettings, ClientAuthMethod, Issuer, IssuerKind, JwksTuning};

/// A source of the current time in Unix seconds; injectable so tests can move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Longest time a verified token is remembered, whatever its `exp`.
const VERIFIED_MAX_TTL: Duration = Duration::from_secs(600);
/// Backoff after a failed fetch before another is tried for a request (keys still usable meanwhile).
const FAILURE_BACKOFF_SECS: u64 = 5;

/// Tuning of an [`Authenticator`].
pub struct AuthenticatorOptions {
    /// The time source (default: the system clock).
    pub clock: Arc<dyn Clock>,
    /// Bytes the verified-claims cache may hold until the configuration sets its own (`auth.token_cache_mib`,
    /// see [`Authenticator::set_token_cache_bytes`]); 0 disables it (default 16 MiB).
    pub verified_cache_bytes: u64,
    /// Bytes the introspection cache may hold (`auth.introspection_cache_mib`, changed on reload by
    /// [`Authenticator::set_introspection_cache_bytes`]); 0 disables it (default 16 MiB).
    pub introspection_cache_bytes: u64,
}

impl Default for AuthenticatorOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            verified_cache_bytes: super::settings::DEFAULT_TOKEN_CACHE_MIB << 20,
            introspection_cache_bytes: super::settings::DEFAULT_INTROSPECTION_CACHE_MIB << 20,
        }
    }
}

/// Long-lived caches and the HTTP client used to reach issuers. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Authenticator {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    client: HttpClient,
    clock: Arc<dyn Clock>,
    keys: moka::future::Cache<String, Arc<KeySnapshot>>,
    /// Verified tokens by digest, bounded by their estimated size; replaced when its budget changes.
    verified: ArcSwap<Budgeted<VerifiedCache>>,
    /// Introspection answers by digest, bounded and replaced the same way.
    introspected: ArcSwap<Budgeted<IntrospectedCache>>,
    /// Discovery documents of sign-in providers, by issuer URL.
    pub(super) providers: moka::future::Cache<String, Arc<super::oidc::Provider>>,
    /// The in-process session store (kept across reloads).
    pub(super) memory_sessions: Arc<super::session::MemoryStore>,
    /// Open session stores by configuration.
    pub(super) stores: std::sync::Mutex<
        std::collections::HashMap<super::session::StoreSpec, super::session::Store>,
    >,
    /// Refreshes in flight by session id, so concurrent requests of one browser share one refresh.
    pub(super) refreshes: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// Recent forward-auth decisions (a sign-out removes its session's).
    pub(super) decisions: super::forward_auth::DecisionCache,
}

/// A token whose signature was checked.
struct Verified {
    fingerprint: [u8; 32],
    kid: Option<String>,
    claims: Arc<Map<String, Value>>,
    ttl: Duration,
    /// The identity made from `claims`, so a cached token does not copy them again on every request.
    identity: IdentityMemo,
    /// Estimated bytes this entry keeps alive, for the cache's budget.
    weight: u32,
}

/// What one cache entry costs besides its claims and identity: the cache's own bookkeeping (the hash table
/// slot, the access-order and expiry-timer nodes, the key), the `Verified` record and the identity memo's record.
/// Fitted so that the estimate stays at or above the resident memory measured per entry (see the README's
/// "Memory of the token caches").
const VERIFIED_ENTRY_OVERHEAD: usize = 384 + std::mem::size_of::<Verified>();

impl Verified {
    /// The bytes this entry keeps alive: the overhead, the claims map and the identity a hit keeps beside it
    /// (`identity` is the one made for this request; the memo's is made the same way), plus 15% for what the
    /// allocator's partly used pages add to the resident memory.
    fn estimate_weight(claims: &Map<String, Value>, identity: &Identity, kid: Option<&str>) -> u32 {
        let live = VERIFIED_ENTRY_OVERHEAD
            + map_heap_bytes(claims)
            + identity_heap_bytes(identity)
            + kid.map_or(0, |k| allocation(k.len()));
        u32::try_from(live.saturating_mul(23) / 20).unwrap_or(u32::MAX)
    }
}

/// Heap bytes of a JSON object as serde_json holds it (a B-tree: up to 11 keys and values fit in one node; a
/// larger map has leaves about two thirds full under internal nodes), plus what the keys and values own.
fn map_heap_bytes(m: &Map<String, Value>) -> usize {
    const NODE: usize = 11 * (std::mem::size_of::<String>() + std::mem::size_of::<Value>()) + 16;
    const INTERNAL: usize = NODE + 12 * std::mem::size_of::<usize>();
    let node_bytes = match m.len() {
        0..=11 => allocation(NODE),
        n => {
            let leaves = n.div_ceil(7);
            leaves * allocation(NODE) + leaves.div_ceil(7) * allocation(INTERNAL)
        }
    };
    node_bytes
        + m.iter()
            .map(|(k, v)| allocation(k.capacity()) + value_heap_bytes(v))
            .sum::<usize>()
}

fn value_heap_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => allocation(s.capacity()),
        Value::Array(a) => {
            allocation(a.capacity() * std::mem::size_of::<Value>())
                + a.iter().map(value_heap_bytes).sum::<usize>()
        }
        Value::Object(m) => map_heap_bytes(m),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Heap bytes of an identity besides the claims it shares: its record in an `Arc`, its strings and the header
/// values a request makes of them.
fn identity_heap_bytes(i: &Identity) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| allocation(s.capacity()));
    allocation(std::mem::size_of::<Identity>() + 16)
        + allocation(i.subject.capacity())
        + allocation(i.user.capacity())
        + allocation(i.issuer.capacity())
        + opt(&i.email)
        + opt(&i.name)
        + allocation(i.groups.capacity() * std::mem::size_of::<String>())
        + i.groups
            .iter()
            .map(|g| allocation(g.capacity()))
            .sum::<usize>()
        + HeaderValues::estimate(i, allocation)
}

/// What the allocator (mimalloc) takes for a buffer of `n` bytes: its size class, multiples of 8 up to 64,
/// then four classes per doubling; nothing for an empty buffer, which is not allocated.
fn allocation(n: usize) -> usize {
    match n {
        0 => 0,
        1..=64 => n.next_multiple_of(8),
        _ => n.next_multiple_of(n.next_power_of_two() / 8),
    }
}

type VerifiedCache = moka::sync::Cache<[u8; 32], Arc<Verified>>;
type IntrospectedCache = moka::future::Cache<[u8; 32], Arc<Introspected>>;

/// A cache and the budget in bytes it was built for.
struct Budgeted<C> {
    bytes: u64,
    /// `None` when the budget is 0.
    cache: Option<C>,
}

impl Budgeted<VerifiedCache> {
    fn verified(bytes: u64) -> Self {
        Self {
            bytes,
            cache: (bytes > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(bytes)
                    .weigher(|_, v: &Arc<Verified>| v.weight)
                    .expire_after(VerifiedExpiry)
                    .build()
            }),
        }
    }
}

impl Budgeted<IntrospectedCache> {
    fn introspected(bytes: u64) -> Self {
        Self {
            bytes,
            cache: (bytes > 0).then(|| {
                moka::future::Cache::builder()
                    .max_capacity(bytes)
                    .weigher(|_, v: &Arc<Introspected>| v.weight)
                    .expire_after(IntrospectedExpiry)
                    .build()
            }),
        }
    }
}

/// Replaces the cache in `slot` with an empty one built for `bytes`, unless that is already its budget. Logs the
/// change with the configuration key and how many entries were dropped.
fn rebudget<C>(
    slot: &ArcSwap<Budgeted<C>>,
    bytes: u64,
    build: fn(u64) -> Budgeted<C>,
    entries: fn(&C) -> u64,
    key: &'static str,
) {
    if slot.load().bytes == bytes {
        return;
    }
    let old = slot.swap(Arc::new(build(bytes)));
    tracing::info!(
        config.key = key,
        cache.bytes = bytes,
        cache.dropped = old.cache.as_ref().map_or(0, entries),
        "cache budget changed ({key}); the cache starts empty"
    );
}

/// An introspection answer.
struct Introspected {
    active: bool,
    claims: Arc<Map<String, Value>>,
    ttl: Duration,
    /// Estimated bytes this entry keeps alive, for the cache's budget.
    weight: u32,
}

/// What an introspection answer costs besides its claims (as [`VERIFIED_ENTRY_OVERHEAD`]: the cache's bookkeeping,
/// the record and the claims' `Arc`).
const INTROSPECTED_ENTRY_OVERHEAD: usize = 384 + std::mem::size_of::<Introspected>() + 16;

impl Introspected {
    /// The answer, weighed by the bytes it keeps alive plus 30% for the allocator's partly used pages: more than
    /// a verified token's 15%, because the claims are parsed out of a response body whose buffers come and go
    /// between them (measured in the README's "Memory of the token caches").
    fn new(active: bool, claims: Map<String, Value>, ttl: Duration) -> Self {
        let live = INTROSPECTED_ENTRY_OVERHEAD + map_heap_bytes(&claims);
        Self {
            active,
            claims: Arc::new(claims),
            ttl,
            weight: u32::try_from(live.saturating_mul(13) / 10).unwrap_or(u32::MAX),
        }
    }
}

struct VerifiedExpiry;
impl moka::Expiry<[u8; 32], Arc<Verified>> for VerifiedExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

struct IntrospectedExpiry;
impl moka::Expiry<[u8; 32], Arc<Introspected>> for IntrospectedExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Introspected>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers_cached", &self.inner.keys.entry_count())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with empty caches, the system clock and a webpki-roots HTTPS client.
    pub fn new() -> Self {
        Self::with_options(AuthenticatorOptions::default())
    }

    /// An authenticator with explicit tuning (tests inject a clock; benchmarks disable the claims cache).
    pub fn with_options(o: AuthenticatorOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                client: HttpClient::with_webpki_roots(),
                clock: o.clock,
                keys: moka::future::Cache::builder()
                    .max_capacity(1024)
                    .time_to_idle(Duration::from_secs(7 * 24 * 3600))
                    .build(),
                verified: ArcSwap::from_pointee(Budgeted::verified(o.verified_cache_bytes)),
                introspected: ArcSwap::from_pointee(Budgeted::introspected(
                    o.introspection_cache_bytes,
                )),
                providers: moka::future::Cache::builder()
                    .max_capacity(64)
                    .time_to_live(Duration::from_secs(3600))
                    .build(),
                memory_sessions: Arc::default(),
                stores: std::sync::Mutex::default(),
                refreshes: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_idle(Duration::from_secs(60))
                    .build(),
                decisions: super::forward_auth::DecisionCache::default(),
            }),
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.inner.clock.now()
    }

    /// Gives the verified-token cache a budget of `bytes` (`auth.token_cache_mib`; 0 turns it off). A new budget
    /// starts an empty cache: tokens seen before are verified once more on their next request.
    pub fn set_token_cache_bytes(&self, bytes: u64) {
        rebudget(
            &self.inner.verified,
            bytes,
            Budgeted::verified,
            VerifiedCache::entry_count,
            "auth.token_cache_mib",
        );
    }

    /// Gives the introspection cache a budget of `bytes` (`auth.introspection_cache_mib`; 0 turns it off). A new
    /// budget starts an empty cache: opaque tokens are introspected once more on their next request.
    pub fn set_introspection_cache_bytes(&self, bytes: u64) {
        rebudget(
            &self.inner.introspected,
            bytes,
            Budgeted::introspected,
            IntrospectedCache::entry_count,
            "auth.introspection_cache_mib",
        );
    }

    /// Tokens in the verified-token cache and their estimated bytes (pending evictions applied first).
    pub fn token_cache_usage(&self) -> (u64, u64) {
        match &self.inner.verified.load().cache {
            Some(c) => {
                c.run_pending_tasks();
                (c.entry_count(), c.weighted_size())
            }
            None => (0, 0),
        }
    }

    /// Answers in the introspection cache and their estimated bytes (pending evictions applied first).
    pub async fn introspection_cache_usage(&self) -> (u64, u64) {
        let introspected = self.inner.introspected.load_full();
        match &introspected.cache {
            Some(c) => {
                c.run_pending_tasks().await;
                (c.entry_count(), c.weighted_size())
            }
            None => (0, 0),
        }
    }

    /// The decision for one request. `path` is the raw request path (no query); it is normalized here before
    /// rules are matched, and the most restrictive reading decides.
    ///
    /// # Errors
    /// [`AuthError`]: no or invalid credentials (401), not allowed (403), unusable path (400), issuer keys
    /// unavailable or auth not configured (503).
    pub async fn authorize(
        &self,
        auth: &AuthSettings,
        policy: &ServicePolicy,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Permit, AuthError> {
        let result = self.decide(auth, policy, method, path, headers).await;
        match &result {
            Ok(p) => tracing::debug!(
                service = %policy.name,
                auth.decision = "allow",
                auth.user = p.identity().map_or("", |i| i.user.as_str()),
                "request admitted"
            ),
            Err(e @ AuthError::Forbidden { rule, .. }) => tracing::info!(
                service = %policy.name,
                auth.decision = "deny",
                auth.rule = %rule,
                auth.reason = e.reason_label(),
                error = %e,
                "request denied"
            ),
            Err(e @ AuthError::NotConfigured { .. }) => tracing::error!(
                service = %policy.name,
                auth.decision = "deny",
                auth.reason = e.reason_label(),
                "service requires authentication but auth is not configured: add [[auth.issuers]] or set bypass_auth"
            ),
            Err(e @ AuthError::IssuerUnavailable { issuer, source }) => tracing::warn!(
                service = %policy.name,
                auth.decision = "deny",
                auth.reason = e.reason_label(),
                auth.issuer = %issuer,
                error = %source,
                "issuer unavailable"
            ),
            Err(e) => tracing::debug!(
                service = %policy.name,
                auth.decision = "deny",
                auth.reason = e.reason_label(),
                error = %e,
                "request not authenticated"
            ),
        }
        result
    }

    async fn decide(
        &self,
        auth: &AuthSettings,
        policy: &ServicePolicy,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Permit, AuthError> {
        let forms = normalized_forms(path).map_err(|reason| AuthError::BadPath { reason })?;
        let preflight =
            method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        let needs = match policy.requirement(method, &forms, preflight) {
            Requirement::Anonymous(rule) => {
                tracing::debug!(service = %policy.name, auth.decision = "allow", auth.rule = %rule, "admitted without authentication");
                return Ok(Permit::anonymous());
            }
            Requirement::Deny(rule) => {
                return Err(AuthError::Forbidden {
                    rule,
                    reason: super::error::DenyReason::DenyRule,
                })
            }
            Requirement::Identity(needs) => needs,
        };
        if policy.trusted(auth).is_empty() {
            return Err(AuthError::NotConfigured {
                service: policy.name.clone(),
            });
        }
        let identity = match (bearer(headers), auth.oidc.as_deref()) {
            (Ok(token), _) => self.authenticate(auth, policy, token).await?,
            (Err(AuthError::NoCredentials), Some(oidc)) => {
                self.session_identity(auth, oidc, policy, headers).await?
            }
            (Err(e), _) => return Err(e),
        };
        for (rule, access) in needs {
            access
                .check(&identity)
                .map_err(|reason| AuthError::Forbidden { rule, reason })?;
        }
        Ok(Permit::authenticated(identity))
    }

    async fn authenticate(
        &self,
        auth: &AuthSettings,
        policy: &ServicePolicy,
        token: &str,
    ) -> Result<Arc<Identity>, AuthError> {
        if jwt::looks_like_jwt(token) {
            self.authenticate_jwt(auth, policy, token).await
        } else {
            Box::pin(self.introspect(auth, policy, token))
                .await
                .map(Arc::new)
        }
    }

    async fn authenticate_jwt(
        &self,
        auth: &AuthSettings,
        policy: &ServicePolicy,
        token: &str,
    ) -> Result<Arc<Identity>, AuthError> {
        let trusted = policy.trusted(auth);
        let digest = sha256([token.as_bytes()]);
        let now = self.now() as i64;
        let hit = self
            .inner
            .verified
            .load()
            .cache
            .as_ref()
            .and_then(|c| c.get(&digest));
        if let Some(v) = hit {
            if let Some(issuer) = trusted.iter().find(|i| i.fingerprint == v.fingerprint) {
                if self.key_still_published(issuer, v.kid.as_deref()).await {
                    return self.finish(policy, issuer, &v.claims, Some(&v.identity), now);
                }
            }
        }
        let parsed = jwt::parse(token).map_err(|reason| invalid(None, reason))?;
        let iss = parsed
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(issuer) = trusted.iter().find(|i| i.url == iss) else {
            return Err(invalid(
                Some(iss.to_owned()).filter(|s| !s.is_empty()),
                TokenRejection::UntrustedIssuer,
            ));
        };
        let fail = |reason| invalid(Some(issuer.url.clone()), reason);
        if !issuer.algorithms.contains(&parsed.alg) {
            return Err(fail(TokenRejection::AlgorithmNotAllowed));
        }
        match &issuer.kind {
            IssuerKind::Hmac(key) => {
                // A shared-secret issuer verifies HMAC only: a public-key `alg` never reaches this key.
                if !jwt::is_hmac(parsed.alg) {
                    return Err(fail(TokenRejection::AlgorithmKeyMismatch));
                }
                key.verify(&parsed).map_err(fail)?;
            }
            IssuerKind::Jwks(_) => {
                if jwt::is_hmac(parsed.alg) {
                    return Err(fail(TokenRejection::AlgorithmKeyMismatch));
                }
                let keys = self
                    .public_keys(auth, issuer, parsed.kid.as_deref(), parsed.alg)
                    .await?;
                let mut ok = false;
                let mut mismatch = true;
                for k in &keys {
                    if !k.accepts(parsed.alg) {
                        continue;
                    }
                    mismatch = false;
                    if jwt::verify_signature(&parsed, &k.key).is_ok() {
                        ok = true;
                        break;
                    }
                }
                if !ok {
                    return Err(fail(if mismatch && !keys.is_empty() {
                        TokenRejection::AlgorithmKeyMismatch
                    } else {
                        TokenRejection::BadSignature
                    }));
                }
            }
        }
        let claims = Arc::new(parsed.claims);
        let identity = self.finish(policy, issuer, &claims, None, now)?;
        if let Some(Ok(exp)) = numeric_date(&claims, "exp") {
            let left = exp.saturating_add(issuer.leeway as i64).saturating_sub(now);
            let verified = self.inner.verified.load();
            if let Some(cache) = verified.cache.as_ref().filter(|_| left > 0) {
                let weight = Verified::estimate_weight(&claims, &identity, parsed.kid.as_deref());
                cache.insert(
                    digest,
                    Arc::new(Verified {
                        fingerprint: issuer.fingerprint,
                        kid: parsed.kid,
                        claims,
                        ttl: Duration::from_secs(left as u64).min(VERIFIED_MAX_TTL),
                        identity: IdentityMemo::default(),
                        weight,
                    }),
                );
            }
        }
        Ok(identity)
    }

    /// Claim checks that depend on time and on the service (audience), on every request, then the identity
    /// (from `memo` when a cached verification has one for these claims and settings).
    fn finish(
        &self,
        policy: &ServicePolicy,
        issuer: &Issuer,
        claims: &Arc<Map<String, Value>>,
        memo: Option<&IdentityMemo>,
        now: i64,
    ) -> Result<Arc<Identity>, AuthError> {
        let audiences = policy.audiences.as_deref().unwrap_or(&issuer.audiences);
        jwt::check_claims(claims, audiences, now, issuer.leeway as i64)
            .map_err(|reason| invalid(Some(issuer.url.clone()), reason))?;
        let groups_claim = policy.groups_claim.as_ref();
        Ok(match memo {
            Some(m) => m.identity(claims, issuer, groups_claim),
            None => Arc::new(Identity::from_claims(
                Arc::clone(claims),
                issuer,
                groups_claim,
            )),
        })
    }

    /// Whether a cached verification may be reused: for a JWKS issuer its key must still be in the current set
    /// (a key dropped by the issuer stops being accepted at once).
    async fn key_still_published(&self, issuer: &Issuer, kid: Option<&str>) -> bool {
        match &issuer.kind {
            IssuerKind::Hmac(_) => true,
            IssuerKind::Jwks(_) => {
                let Some(snap) = self.inner.keys.get(issuer.cache_key()).await else {
                    return false;
                };
                self.now() < snap.usable_until && snap.keys.as_ref().is_some_and(|k| k.has_kid(kid))
            }
        }
    }

    /// Keys for `kid`, fetching per the cache rules: cold fetch; refresh when stale (serving the last good keys
    /// while the issuer is down, up to `max_stale`); background refresh near expiry; one refetch per cooldown
    /// for an unknown `kid`.
    pub(super) async fn public_keys(
        &self,
        auth: &AuthSettings,
        issuer: &Arc<Issuer>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<PublicKey>>, AuthError> {
        let t = &auth.jwks;
        let key = issuer.cache_key();
        let now = self.now();
        let mut snap = self.inner.keys.get(key).await;
        let needs_fetch = match &snap {
            None => true,
            Some(s) => s.keys.is_none() || now >= s.fresh_until,
        };
        let mut last_error = None;
        if needs_fetch {
            let seen = snap.as_ref().map(|s| s.generation);
            let retry_ok = snap.as_ref().is_none_or(|s| {
                !s.last_failed
                    || now
                        >= s.last_attempt
                            + FAILURE_BACKOFF_SECS.min(t.unknown_kid_cooldown.as_secs())
            });
            if retry_ok {
                let (s, err) = Box::pin(self.refresh(issuer, t, seen)).await;
                snap = s;
                last_error = err;
            }
        } else if let Some(s) = &snap {
            if now >= s.refresh_at && !s.refreshing.swap(true, Ordering::AcqRel) {
                let this = self.clone();
                let issuer = Arc::clone(issuer);
                let tuning = t.clone();
                let seen = s.generation;
                tokio::spawn(async move {
                    let _ = this.refresh(&issuer, &tuning, Some(seen)).await;
                });
            }
        }
        let unavailable = |source| AuthError::IssuerUnavailable {
            issuer: issuer.url.clone(),
            source,
        };
        let Some(s) = snap.filter(|s| s.keys.is_some() && now < s.usable_until) else {
            return Err(unavailable(last_error.unwrap_or(FetchError::BackingOff)));
        };
        let mut set = s.keys.clone().unwrap_or_default();
        if !set.has_kid(kid) && now >= s.last_attempt + t.unknown_kid_cooldown.as_secs() {
            tracing::debug!(auth.issuer = %issuer.url, auth.kid = kid.unwrap_or(""), "unknown key id, refetching keys");
            let (fresh, _) = Box::pin(self.refresh(issuer, t, Some(s.generation))).await;
            if let Some(k) = fresh.and_then(|f| f.keys.clone()) {
                set = k;
            }
        }
        let found = set.candidates(kid, alg);
        if found.is_empty() {
            tracing::debug!(auth.issuer = %issuer.url, auth.kid = kid.unwrap_or(""), "unknown key id for issuer");
            return Err(invalid(
                Some(issuer.url.clone()),
                TokenRejection::UnknownKey,
            ));
        }
        Ok(found)
    }

    /// Fetches the keys unless another caller did since `seen` (calls on one issuer run one at a time, so
    /// concurrent misses share one fetch). Returns the snapshot now cached and this call's fetch error, if any.
    async fn refresh(
        &self,
        issuer: &Issuer,
        t: &JwksTuning,
        seen: Option<u64>,
    ) -> (Option<Arc<KeySnapshot>>, Option<FetchError>) {
        let IssuerKind::Jwks(source) = &issuer.kind else {
            return (None, None);
        };
        let client = issuer.client.as_ref().unwrap_or(&self.inner.client);
        let mut error = None;
        let err_slot = &mut error;
        let result = self
            .inner
            .keys
            .entry(issuer.cache_key().to_owned())
            .and_compute_with(|current| async move {
                let current = current.map(|e| e.into_value());
                if current.as_ref().map(|c| c.generation) != seen {
                    return Op::Nop;
                }
                let now = self.now();
                let known = current.as_ref().and_then(|c| c.jwks_uri.as_ref());
                match fetch_keys(client, issuer, source, known, t).await {
                    Ok(f) => {
                        let ttl = f.ttl.as_secs();
                        tracing::debug!(auth.issuer = %issuer.url, auth.keys = f.keys.len(), auth.ttl_secs = ttl, "fetched issuer keys");
                        Op::Put(Arc::new(KeySnapshot {
                            keys: Some(Arc::new(f.keys)),
                            generation: seen.map_or(1, |g| g + 1),
                            fresh_until: now + ttl,
                            refresh_at: now + ttl * 3 / 4,
                            usable_until: now + ttl + t.max_stale.as_secs(),
                            last_attempt: now,
                            last_failed: false,
                            jwks_uri: Some(f.jwks_uri),
                            refreshing: false.into(),
                        }))
                    }
                    Err(e) => {
                        tracing::warn!(auth.issuer = %issuer.url, error = %e, "fetching issuer keys failed");
                        *err_slot = Some(e);
                        let (keys, fresh_until, refresh_at, usable_until) = match &current {
                            Some(c) => (c.keys.clone(), c.fresh_until, c.refresh_at, c.usable_until),
                            None => (None, 0, 0, 0),
                        };
                        Op::Put(Arc::new(KeySnapshot {
                            keys,
                            generation: seen.map_or(1, |g| g + 1),
                            fresh_until,
                            refresh_at,
                            usable_until,
                            last_attempt: now,
                            last_failed: true,
                            // Rediscover next time: the failure may be a moved key set.
                            jwks_uri: None,
                            refreshing: false.into(),
                        }))
                    }
                }
            })
            .await;
        (result.into_entry().map(|e| e.into_value()), error)
    }

    /// One RFC 7662 introspection request for `token` at `issuer`, and its answer with the time it may be cached.
    async fn fetch_introspection(
        &self,
        auth: &AuthSettings,
        issuer: &Issuer,
        cfg: &super::settings::Introspection,
        token: &str,
    ) -> Result<Arc<Introspected>, FetchError> {
        let client = issuer.client.as_ref().unwrap_or(&self.inner.client);
        let mut form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut req = Request::post(cfg.endpoint.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match cfg.method {
            ClientAuthMethod::Basic => {
                // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
                let cred = format!(
                    "{}:{}",
                    form_encode(&cfg.client_id),
                    form_encode(cfg.secret.expose())
                );
                req = req.header(AUTHORIZATION, format!("Basic {}", STANDARD.encode(cred)));
            }
            ClientAuthMethod::Post => {
                form.push_str(&format!(
                    "&client_id={}&client_secret={}",
                    form_encode(&cfg.client_id),
                    form_encode(cfg.secret.expose())
                ));
            }
        }
        let req = req
            .body(Full::new(Bytes::from(form)))
            .map_err(FetchError::BadRequest)?;
        let (body, _) = client
            .fetch(req, auth.jwks.fetch_timeout, auth.jwks.max_bytes)
            .await?;
        let claims: Map<String, Value> = serde_json::from_slice(&body).map_err(FetchError::Json)?;
        let active = claims.get("active").and_then(Value::as_bool) == Some(true);
        let now = self.now() as i64;
        let bound = cfg.cache_bound.as_secs() as i64;
        let ttl = match numeric_date(&claims, "exp") {
            Some(Ok(exp)) if active => (exp - now).clamp(0, bound),
            Some(_) | None => bound,
        };
        Ok(Arc::new(Introspected::new(
            active,
            claims,
            Duration::from_secs(ttl as u64),
        )))
    }

    /// RFC 7662 introspection of an opaque token at each trusted issuer that has an endpoint.
    async fn introspect(
        &self,
        auth: &AuthSettings,
        policy: &ServicePolicy,
        token: &str,
    ) -> Result<Identity, AuthError> {
        let mut tried = false;
        for issuer in policy.trusted(auth) {
            let Some(cfg) = &issuer.introspection else {
                continue;
            };
            tried = true;
            let digest = sha256([&issuer.fingerprint[..], token.as_bytes()]);
            let fetch = self.fetch_introspection(auth, issuer, cfg, token);
            let introspected = self.inner.introspected.load_full();
            // Concurrent requests with one token share one introspection (`try_get_with`); without a cache, each
            // asks.
            let answer = match &introspected.cache {
                Some(c) => c
                    .try_get_with(digest, fetch)
                    .await
                    .map_err(FetchError::Shared),
                None => fetch.await,
            }
            .map_err(|source| AuthError::IssuerUnavailable {
                issuer: issuer.url.clone(),
                source,
            })?;
            if !answer.active {
                continue;
            }
            let fail = |reason| invalid(Some(issuer.url.clone()), reason);
            let claims = &answer.claims;
            if let Some(iss) = claims.get("iss").and_then(Value::as_str) {
                if iss != issuer.url {
                    return Err(fail(TokenRejection::UntrustedIssuer));
                }
            }
            let now = self.now() as i64;
            if let Some(Ok(exp)) = numeric_date(claims, "exp") {
                if now > exp.saturating_add(issuer.leeway as i64) {
                    return Err(fail(TokenRejection::Expired));
                }
            }
            let audiences = policy.audiences.as_deref().unwrap_or(&issuer.audiences);
            jwt::check_audience(claims, audiences).map_err(fail)?;
            return Ok(Identity::from_claims(
                Arc::clone(claims),
                issuer,
                policy.groups_claim.as_ref(),
            ));
        }
        Err(invalid(
            None,
            if tried {
                TokenRejection::Inactive
            } else {
                TokenRejection::NotIntrospectable
            },
        ))
    }

    /// Installs a JWKS document for an issuer as if it had just been fetched (TTL: the configured default), for
    /// offline setups and benchmarks.
    ///
    /// # Errors
    /// The document does not parse or has no usable key; the issuer is unknown or a shared-secret one.
    pub async fn seed_keys(
        &self,
        auth: &AuthSettings,
        issuer: &str,
        jwks: &[u8],
    ) -> Result<(), FetchError> {
        let Some(iss) = auth.find(issuer).filter(|i| !i.is_shared_secret()) else {
            return Err(FetchError::NoUsableKey);
        };
        let keys = super::jwks::parse_jwks(jwks)?;
        let now = self.now();
        let ttl = auth.jwks.default_ttl.as_secs();
        self.inner
            .keys
            .insert(
                iss.cache_key().to_owned(),
                Arc::new(KeySnapshot {
                    keys: Some(Arc::new(keys)),
                    generation: 1,
                    fresh_until: now + ttl,
                    refresh_at: now + ttl,
                    usable_until: now + ttl + auth.jwks.max_stale.as_secs(),
                    last_attempt: now,
                    last_failed: false,
                    jwks_uri: None,
                    refreshing: false.into(),
                }),
            )
            .await;
        Ok(())
    }
}

fn invalid(issuer: Option<String>, reason: TokenRejection) -> AuthError {
    AuthError::InvalidToken { issuer, reason }
}

/// SHA-256 of the concatenated parts: the cache key of a credential, computed on every request that carries one.
/// ring's implementation, which uses the CPU's SHA extensions where it has them (and AVX where it does not).
pub(crate) fn sha256<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The Bearer token of `Authorization` (RFC 6750 §2.1); other schemes count as no credentials.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::NoCredentials);
    };
    if values.next().is_some() {
        return Err(invalid(None, TokenRejection::Malformed));
    }
    let bytes = value.as_bytes();
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        return match value.to_str() {
            Ok(_) => Err(AuthError::NoCredentials),
            Err(_) => Err(invalid(None, TokenRejection::Malformed)),
        };
    };
    if !bytes[..space].eq_ignore_ascii_case(b"bearer") {
        // Not ours to judge, unless the header is not even visible ASCII.
        return match value.to_str() {
            Ok(_) => Err(AuthError::NoCredentials),
            Err(_) => Err(invalid(None, TokenRejection::Malformed)),
        };
    }
    let mut token = &bytes[space + 1..];
    while let [b' ', rest @ ..] = token {
        token = rest;
    }
    let mut body = token;
    while let [rest @ .., b'='] = body {
        body = rest;
    }
    // RFC 6750 §2.1 b64token. This runs on every Bearer request: range compares folded without early exit, which
    // the compiler turns into vector compares (with a table look-up per byte, a cached RS256 check took 1.21 µs
    // against 1.12 now; criterion, `jwt/RS256/cached`).
    if body.is_empty() || !body.iter().fold(true, |ok, &b| ok & is_b64token_byte(b)) {
        return Err(invalid(None, TokenRejection::Malformed));
    }
    // Only ASCII passed the check, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| invalid(None, TokenRejection::Malformed))
}

/// The bytes of an RFC 6750 `b64token` before its trailing `=`: letters, digits and `-._~+/`.
fn is_b64token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        | (c == b'-')
        | (c == b'.')
        | (c == b'_')
        | (c == b'~')
        | (c == b'+')
        | (c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                AUTHORIZATION,
                http::HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        h
    }

    fn malformed(r: Result<&str, AuthError>) -> bool {
        matches!(
            r,
            Err(AuthError::InvalidToken {
                reason: TokenRejection::Malformed,
                ..
            })
        )
    }

    #[test]
    fn bearer_takes_a_b64token_with_any_scheme_case_and_padding() {
        assert_eq!(
            bearer(&auth(&[b"Bearer abc.DEF-_~+/9"])).ok(),
            Some("abc.DEF-_~+/9")
        );
        assert_eq!(bearer(&auth(&[b"bearer   tok=="])).ok(), Some("tok=="));
        assert_eq!(bearer(&auth(&[b"BEARER t"])).ok(), Some("t"));
    }

    #[test]
    fn b64token_bytes_are_exactly_those_of_rfc_6750() {
        let spec = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
        for b in 0..=255u8 {
            assert_eq!(is_b64token_byte(b), spec.contains(&b), "byte {b:#04x}");
        }
    }

    #[test]
    fn bearer_leaves_other_schemes_and_refuses_what_is_not_a_b64token() {
        assert!(matches!(
            bearer(&HeaderMap::new()),
            Err(AuthError::NoCredentials)
        ));
        assert!(matches!(
            bearer(&auth(&[b"Basic dXNlcjpwdw=="])),
            Err(AuthError::NoCredentials)
        ));
        assert!(matches!(
            bearer(&auth(&[b"Bearer"])),
            Err(AuthError::NoCredentials)
        ));
        // Not even visible ASCII, whatever the scheme.
        assert!(malformed(bearer(&auth(&[b"Basic \xff\xfe"]))));
        assert!(malformed(bearer(&auth(&[b"Bearer t\xc3\xa9"]))));
        // Characters outside RFC 6750 §2.1, padding only at the end, no empty token.
        assert!(malformed(bearer(&auth(&[b"Bearer a,b"]))));
        assert!(malformed(bearer(&auth(&[b"Bearer a b"]))));
        assert!(malformed(bearer(&auth(&[b"Bearer a=b"]))));
        assert!(malformed(bearer(&auth(&[b"Bearer ==="]))));
        assert!(malformed(bearer(&auth(&[b"Bearer "]))));
        // Two Authorization headers: ambiguous, refused.
        assert!(malformed(bearer(&auth(&[b"Bearer a", b"Bearer b"]))));
    }

    #[test]
    fn sha256_of_parts_is_the_digest_of_their_concatenation() {
        let whole = sha256([&b"issuer-fingerprint|token"[..]]);
        assert_eq!(sha256([&b"issuer-fingerprint|"[..], b"token"]), whole);
        assert_ne!(sha256([&b"issuer-fingerprint|"[..], b"tokem"]), whole);
        // FIPS 180-2 test vector.
        assert_eq!(sha256([&b"abc"[..]])[..4], [0xba, 0x78, 0x16, 0xbf],);
    }
}

#[cfg(test)]
mod weight_tests {
    use super::*;

    #[test]
    fn allocation_follows_the_size_classes() {
        for (n, class) in [
            (0, 0),
            (1, 8),
            (8, 8),
            (9, 16),
            (64, 64),
            (65, 80),
            (100, 112),
            (1000, 1024),
        ] {
            assert_eq!(allocation(n), class, "{n} bytes");
        }
    }

    #[test]
    fn an_entry_weighs_its_claims_and_identity() {
        let weigh = |groups: usize| {
            let c = Arc::new(claims_with_groups(groups));
            let id = Identity {
                subject: "user-1".into(),
                user: "ann".into(),
                email: None,
                email_verified: None,
                name: None,
                groups: (0..groups)
                    .map(|g| format!("team-{g:04}-members"))
                    .collect(),
                issuer: "i".into(),
                claims: Arc::clone(&c),
                header_values: Default::default(),
            };
            u64::from(Verified::estimate_weight(&c, &id, Some("kid-1")))
        };
        let (small, large) = (weigh(0), weigh(60));
        assert!((1_000..2_500).contains(&small), "{small}");
        // Each group: its `Value` in the array, its string there, and its copy in the identity's list.
        let per_group = (large - small) / 60;
        assert!(
            (100..160).contains(&per_group),
            "{per_group} bytes per group"
        );
    }

    #[test]
    fn an_introspection_answer_weighs_its_claims() {
        let weigh = |groups: usize| {
            let answer = Introspected::new(true, claims_with_groups(groups), Duration::ZERO);
            u64::from(answer.weight)
        };
        let (small, large) = (weigh(0), weigh(60));
        assert!((600..1_500).contains(&small), "{small}");
        // Each group: its `Value` in the array and its string (no identity is kept beside an answer).
        let per_group = (large - small) / 60;
        assert!(
            (50..100).contains(&per_group),
            "{per_group} bytes per group"
        );
    }

    /// Claims like an issuer's, with `groups` groups.
    fn claims_with_groups(groups: usize) -> Map<String, Value> {
        let groups: Vec<String> = (0..groups)
            .map(|g| format!("team-{g:04}-members"))
            .collect();
        serde_json::from_value(serde_json::json!({
            "iss": "i", "sub": "user-1", "preferred_username": "ann", "groups": groups, "exp": 1
        }))
        .unwrap()
    }
}
