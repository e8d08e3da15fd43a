//! Browser sessions: the server-side record, the stores that hold it (in process, or Redis shared by replicas),
//! and the cookies that point to it.
//!
//! The session cookie holds only an opaque random id, signed with the configured key (the `cookie` crate's
//! HMAC-SHA256 signed jar); the sign-in state cookie is encrypted (its AES-256-GCM private jar) because it
//! carries the PKCE verifier. No cryptography is implemented here, and no cookie value or token is ever logged.
//! A session cookie that verified once is remembered by its exact value, so a browser's later requests skip the
//! decoding and the HMAC (the signature of a given value cannot change while the key stays the same).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cookie::{Cookie, CookieJar, Key, SameSite};
use http::header::COOKIE;
use http::HeaderMap;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::identity::IdentityMemo;
use crate::config::Secret;

/// How long a sign-in may take between `/oauth2/start` and the callback.
pub(crate) const LOGIN_TTL_SECS: u64 = 600;

/// A signed-in browser's server-side state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The provider's `iss`.
    pub(crate) issuer: String,
    /// `sub`.
    pub(crate) sub: String,
    /// The provider's session id (`sid`), for back-channel logout.
    pub(crate) sid: Option<String>,
    /// ID token claims merged with userinfo claims, as of the last sign-in or refresh; shared, so turning a
    /// session into an identity on every request does not copy them.
    pub(crate) claims: Arc<Map<String, Value>>,
    /// The last ID token, for `id_token_hint` at sign-out.
    pub(crate) id_token: Option<String>,
    /// The refresh token, when the provider issued one.
    pub(crate) refresh_token: Option<String>,
    /// Unix time of sign-in.
    pub(crate) created_at: u64,
    /// Unix time of the last use.
    pub(crate) last_seen: u64,
    /// Unix time when the claims must be re-read from the provider.
    pub(crate) refresh_at: u64,
    /// The identity made from `claims`, in memory only.
    #[serde(skip)]
    pub(crate) identity: IdentityMemo,
}

/// A store failure (Redis unreachable, corrupt entry).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis server failed or cannot be reached.
    #[error("session store {url} failed")]
    Redis {
        /// The store URL without credentials.
        url: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// A stored session cannot be decoded.
    #[error("stored session is corrupt")]
    Corrupt(#[source] serde_json::Error),
}

/// Where sessions live.
#[derive(Clone)]
pub(crate) enum Store {
    /// In this process (lost on restart; not shared between replicas).
    Memory(Arc<MemoryStore>),
    /// In Redis, shared by every replica that points at it.
    Redis(Arc<RedisStore>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Memory(_) => f.write_str("Store::Memory"),
            Store::Redis(r) => write!(f, "Store::Redis({})", r.url),
        }
    }
}

/// The in-process store.
#[derive(Default)]
pub(crate) struct MemoryStore {
    /// Keyed by session ids, which only the gateway makes (random), so a fast unkeyed hash is safe: no client can
    /// choose keys that collide.
    sessions: Mutex<HashMap<String, (Arc<Session>, u64), FxBuildHasher>>,
    by_sid: Mutex<HashMap<String, HashSet<String>>>,
    by_sub: Mutex<HashMap<String, HashSet<String>>>,
    /// One-time values (used sign-in states, hand-off codes) with their expiry.
    once: Mutex<HashMap<String, (String, u64)>>,
    /// Writes since the last sweep of expired sessions.
    writes: std::sync::atomic::AtomicU64,
}

/// Every this many writes, the in-process store drops expired sessions and their index entries, so sessions
/// that are never read again (closed browsers) do not accumulate.
const SWEEP_EVERY: u64 = 1024;

impl MemoryStore {
    fn sweep(&self, now: u64) {
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, (_, exp)| *exp > now);
        for index in [&self.by_sid, &self.by_sub] {
            lock(index).retain(|_, ids| {
                ids.retain(|id| sessions.contains_key(id));
                !ids.is_empty()
            });
        }
    }
}

/// The Redis store: a connection manager that reconnects by itself, and a one-second local cache so the hot
/// path does not pay a round trip per request (a sign-out elsewhere is seen within that second).
pub(crate) struct RedisStore {
    url: String,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    client: redis::Client,
    /// Keyed by session ids, hashed like the in-process store's.
    local: moka::sync::Cache<String, Arc<Session>, FxBuildHasher>,
}

const PREFIX: &str = "portcullis:";

impl Store {
    /// A store for `spec` (`memory` or `redis://...`).
    ///
    /// # Errors
    /// A Redis URL the client cannot parse.
    pub(crate) fn open(spec: &StoreSpec, memory: &Arc<MemoryStore>) -> Result<Store, StoreError> {
        match spec {
            StoreSpec::Memory => Ok(Store::Memory(Arc::clone(memory))),
            StoreSpec::Redis(url) => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|source| StoreError::Redis {
                        url: redacted(url),
                        source,
                    })?;
                Ok(Store::Redis(Arc::new(RedisStore {
                    url: redacted(url),
                    conn: tokio::sync::OnceCell::new(),
                    client,
                    local: moka::sync::Cache::builder()
                        .max_capacity(100_000)
                        .time_to_live(Duration::from_secs(1))
                        .build_with_hasher(FxBuildHasher),
                })))
            }
        }
    }

    /// The session with this id, if it exists and has not expired by the store's clock.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) async fn get(&self, id: &str, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut map = lock(&m.sessions);
                match map.get(id) {
                    Some((s, exp)) if *exp > now => Ok(Some(Arc::clone(s))),
                    Some(_) => {
                        map.remove(id);
                        Ok(None)
                    }
                    None => Ok(None),
                }
            }
            Store::Redis(r) => {
                if let Some(s) = r.local.get(id) {
                    return Ok(Some(s));
                }
                // Boxed: the Redis round trip would otherwise enlarge the future of every session request.
                Box::pin(async {
                    let mut c = r.conn().await?;
                    let raw: Option<String> = redis::cmd("GET")
                        .arg(format!("{PREFIX}session:{id}"))
                        .query_async(&mut c)
                        .await
                        .map_err(|e| r.err(e))?;
                    match raw {
                        None => Ok(None),
                        Some(json) => {
                            let s: Arc<Session> =
                                Arc::new(serde_json::from_str(&json).map_err(StoreError::Corrupt)?);
                            r.local.insert(id.to_owned(), Arc::clone(&s));
                            Ok(Some(s))
                        }
                    }
                })
                .await
            }
        }
    }

    /// Stores a session until `expires_at` (Unix seconds).
    ///
    /// # Errors
    /// The store failed.
    pub(crate) async fn put(
        &self,
        id: &str,
        s: &Session,
        now: u64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let ttl = expires_at.saturating_sub(now).max(1);
        match self {
            Store::Memory(m) => {
                if m.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SWEEP_EVERY
                    == SWEEP_EVERY - 1
                {
                    m.sweep(now);
                }
                lock(&m.sessions).insert(id.to_owned(), (Arc::new(s.clone()), expires_at));
                if let Some(sid) = &s.sid {
                    lock(&m.by_sid)
                        .entry(sid.clone())
                        .or_default()
                        .insert(id.to_owned());
                }
                lock(&m.by_sub)
                    .entry(sub_key(&s.issuer, &s.sub))
                    .or_default()
                    .insert(id.to_owned());
                Ok(())
            }
            Store::Redis(r) => {
                let json = serde_json::to_string(s).map_err(StoreError::Corrupt)?;
                let mut c = r.conn().await?;
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(format!("{PREFIX}session:{id}"))
                    .arg(json)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
                if let Some(sid) = &s.sid {
                    let k = format!("{PREFIX}sid:{sid}");
                    pipe.cmd("SADD").arg(&k).arg(id).ignore();
                    pipe.cmd("EXPIRE").arg(&k).arg(ttl).ignore();
                }
                let k = format!("{PREFIX}sub:{}", sub_key(&s.issuer, &s.sub));
                pipe.cmd("SADD").arg(&k).arg(id).ignore();
                pipe.cmd("EXPIRE").arg(&k).arg(ttl).ignore();
                pipe.query_async::<()>(&mut c).await.map_err(|e| r.err(e))?;
                r.local.insert(id.to_owned(), Arc::new(s.clone()));
                Ok(())
            }
        }
    }

    /// Removes a session.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                lock(&m.sessions).remove(id);
                Ok(())
            }
            Store::Redis(r) => {
                r.local.invalidate(id);
                let mut c = r.conn().await?;
                redis::cmd("DEL")
                    .arg(format!("{PREFIX}session:{id}"))
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| r.err(e))
            }
        }
    }

    /// Removes every session of a provider session id (`sid`) or of a subject; returns how many ended.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) async fn delete_matching(
        &self,
        issuer: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut ids: HashSet<String> = HashSet::new();
        match self {
            Store::Memory(m) => {
                if let Some(sid) = sid {
                    ids.extend(lock(&m.by_sid).remove(sid).unwrap_or_default());
                }
                if let Some(sub) = sub {
                    ids.extend(
                        lock(&m.by_sub)
                            .remove(&sub_key(issuer, sub))
                            .unwrap_or_default(),
                    );
                }
                let mut map = lock(&m.sessions);
                Ok(ids.iter().filter(|id| map.remove(*id).is_some()).count())
            }
            Store::Redis(r) => {
                let mut c = r.conn().await?;
                let mut keys = Vec::new();
                if let Some(sid) = sid {
                    keys.push(format!("{PREFIX}sid:{sid}"));
                }
                if let Some(sub) = sub {
                    keys.push(format!("{PREFIX}sub:{}", sub_key(issuer, sub)));
                }
                for k in &keys {
                    let members: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(k)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| r.err(e))?;
                    ids.extend(members);
                }
                let mut n = 0;
                for id in &ids {
                    r.local.invalidate(id);
                    let removed: u64 = redis::cmd("DEL")
                        .arg(format!("{PREFIX}session:{id}"))
                        .query_async(&mut c)
                        .await
                        .map_err(|e| r.err(e))?;
                    n += removed as usize;
                }
                if !keys.is_empty() {
                    redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<()>(&mut c)
                        .await
                        .map_err(|e| r.err(e))?;
                }
                Ok(n)
            }
        }
    }

    /// Records a one-time value under `key` until `expires_at`; `false` when the key was already taken (a replay).
    ///
    /// # Errors
    /// The store failed.
    pub(crate) async fn claim_once(
        &self,
        key: &str,
        value: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => {
                let mut once = lock(&m.once);
                once.retain(|_, (_, exp)| *exp > now);
                if once.contains_key(key) {
                    return Ok(false);
                }
                once.insert(key.to_owned(), (value.to_owned(), expires_at));
                Ok(true)
            }
            Store::Redis(r) => {
                let mut c = r.conn().await?;
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("{PREFIX}once:{key}"))
                    .arg(value)
                    .arg("NX")
                    .arg("EX")
                    .arg(expires_at.saturating_sub(now).max(1))
                    .query_async(&mut c)
                    .await
                    .map_err(|e| r.err(e))?;
                Ok(set.is_some())
            }
        }
    }

    /// Takes (reads and removes) a one-time value.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) async fn take_once(
        &self,
        key: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory(m) => Ok(lock(&m.once)
                .remove(key)
                .filter(|(_, exp)| *exp > now)
                .map(|(v, _)| v)),
            Store::Redis(r) => {
                let mut c = r.conn().await?;
                redis::cmd("GETDEL")
                    .arg(format!("{PREFIX}once:{key}"))
                    .query_async(&mut c)
                    .await
                    .map_err(|e| r.err(e))
            }
        }
    }
}

impl RedisStore {
    async fn conn(&self) -> Result<redis::aio::ConnectionManager, StoreError> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| async {
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
            })
            .await
            .cloned()
            .map_err(|e| self.err(e))
    }

    fn err(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis {
            url: self.url.clone(),
            source,
        }
    }
}

fn sub_key(issuer: &str, sub: &str) -> String {
    format!("{issuer}|{sub}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the maps inconsistent in a way that matters
    // more than refusing every later request would.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A Redis URL without its password, for logs.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Where the configuration says sessions live.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum StoreSpec {
    /// In process.
    Memory,
    /// A Redis URL.
    Redis(String),
}

/// The keys and names of the gateway's cookies.
#[derive(Clone)]
pub struct CookieKeys {
    key: Key,
    /// Session cookie name.
    pub(crate) name: String,
    /// Session cookie values that verified, as the browser sends them (still percent-encoded), with the session
    /// id each carries. Only correctly signed values get in, so its size is bounded by the sessions issued under
    /// this key; new keys (a changed secret) start with an empty one.
    /// Hashed with a fast unkeyed hash: what gets in was signed by the gateway, so no client can choose keys that
    /// collide.
    verified: moka::sync::Cache<Box<str>, Arc<str>, FxBuildHasher>,
}

/// Verified session cookie values kept, and for how long one is kept unused.
const VERIFIED_COOKIES: u64 = 10_000;
const VERIFIED_COOKIE_IDLE: Duration = Duration::from_secs(600);

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKeys({}, <redacted>)", self.name)
    }
}

/// Name prefix of the per-sign-in state cookies.
pub(crate) const LOGIN_COOKIE_PREFIX: &str = "_portcullis_login_";
/// Name of the redirect-loop counter cookie.
pub(crate) const LOOP_COOKIE: &str = "_portcullis_loop";

impl CookieKeys {
    /// Keys derived from the configured secret (at least 32 bytes; validated at load).
    pub fn new(secret: &Secret, name: String) -> Self {
        Self {
            key: Key::derive_from(secret.expose().as_bytes()),
            name,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_COOKIES)
                .time_to_idle(VERIFIED_COOKIE_IDLE)
                .build_with_hasher(FxBuildHasher),
        }
    }

    /// A jar holding the request's cookie called `name` (the last one, when the browser sends several), so that
    /// a signed or private view of it checks that one; the other cookies are never parsed or copied.
    fn jar(headers: &HeaderMap, name: &str) -> CookieJar {
        raw_cookie(headers, name)
            .and_then(|raw| jar_of(name, raw))
            .unwrap_or_default()
    }

    /// The session id of the request's session cookie, when present and correctly signed.
    pub fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        let raw = raw_cookie(headers, &self.name)?;
        if let Some(id) = self.verified.get(raw) {
            return Some(id.as_ref().to_owned());
        }
        // The signature is checked on exactly the value the cache is keyed by.
        let id = jar_of(&self.name, raw)?
            .signed(&self.key)
            .get(&self.name)
            .map(|c| c.value().to_owned())?;
        self.verified.insert(raw.into(), Arc::from(id.as_str()));
        Some(id)
    }

    /// A `Set-Cookie` value for a new session.
    pub fn session_cookie(&self, id: &str, domain: Option<&str>, max_age: Duration) -> String {
        let mut jar = CookieJar::new();
        let mut c = Cookie::new(self.name.clone(), id.to_owned());
        secure(&mut c, domain);
        c.set_max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64));
        jar.signed_mut(&self.key).add(c);
        jar.delta()
            .next()
            .map(|c| c.encoded().to_string())
            .unwrap_or_default()
    }

    /// A `Set-Cookie` value that removes the session cookie.
    pub(crate) fn clear_session_cookie(&self, domain: Option<&str>) -> String {
        removal(&self.name, domain)
    }

    /// The encrypted sign-in state cookie for `state`.
    pub(crate) fn login_cookie(&self, state: &str, value: &str) -> String {
        let mut jar = CookieJar::new();
        let mut c = Cookie::new(login_cookie_name(state), value.to_owned());
        secure(&mut c, None);
        c.set_path("/oauth2/");
        c.set_max_age(cookie::time::Duration::seconds(LOGIN_TTL_SECS as i64));
        jar.private_mut(&self.key).add(c);
        jar.delta()
            .next()
            .map(|c| c.encoded().to_string())
            .unwrap_or_default()
    }

    /// The decrypted sign-in state for `state`, when the cookie is present and authentic.
    pub(crate) fn login_state(&self, headers: &HeaderMap, state: &str) -> Option<String> {
        let name = login_cookie_name(state);
        let jar = Self::jar(headers, &name);
        jar.private(&self.key)
            .get(&name)
            .map(|c| c.value().to_owned())
    }

    /// Removes the sign-in state cookie.
    pub(crate) fn clear_login_cookie(&self, state: &str) -> String {
        let mut c = Cookie::build((login_cookie_name(state), ""))
            .path("/oauth2/")
            .secure(true)
            .http_only(true)
            .build();
        c.make_removal();
        c.encoded().to_string()
    }

    /// The redirect-loop counter: (count, window start), from a signed cookie.
    pub(crate) fn loop_count(&self, headers: &HeaderMap) -> (u32, u64) {
        let jar = Self::jar(headers, LOOP_COOKIE);
        jar.signed(&self.key)
            .get(LOOP_COOKIE)
            .and_then(|c| {
                let (n, t) = c.value().split_once('.')?;
                Some((n.parse().ok()?, t.parse().ok()?))
            })
            .unwrap_or((0, 0))
    }

    /// A signed loop counter cookie.
    pub(crate) fn loop_cookie(&self, count: u32, since: u64) -> String {
        let mut jar = CookieJar::new();
        let mut c = Cookie::new(LOOP_COOKIE, format!("{count}.{since}"));
        secure(&mut c, None);
        c.set_path("/oauth2/");
        c.set_max_age(cookie::time::Duration::seconds(120));
        jar.signed_mut(&self.key).add(c);
        jar.delta()
            .next()
            .map(|c| c.encoded().to_string())
            .unwrap_or_default()
    }

    /// Removes every cookie of ours from a `Cookie` header before the request goes upstream.
    pub fn strip_from_request(&self, headers: &mut HeaderMap) {
        let mut fields = headers.get_all(COOKIE).iter();
        match (fields.next(), fields.next()) {
            (None, _) => return,
            // One field with nothing to take out (a bypass or Bearer request from a browser that holds other
            // applications' cookies): it goes upstream as it came, without being copied.
            (Some(_), None)
                if !cookie_pairs(headers)
                    .any(|(name, pair)| !pair.is_empty() && self.is_dropped(name)) =>
            {
                return
            }
            _ => {}
        }
        // The other cookies, in one `Cookie` field (also when HTTP/2 sent one per field: RFC 9113 §8.2.3).
        let mut kept = Vec::new();
        for (name, pair) in cookie_pairs(headers) {
            if self.is_dropped(name) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
        headers.remove(COOKIE);
        if !kept.is_empty() {
            if let Ok(v) = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
                headers.insert(COOKIE, v);
            }
        }
    }

    /// Whether a cookie of this name is kept from the backend: ours, and nameless ones (`=value`), which some
    /// parsers would read with the name taken from the value.
    fn is_dropped(&self, name: &[u8]) -> bool {
        name.is_empty()
            || name == self.name.as_bytes()
            || name.starts_with(LOGIN_COOKIE_PREFIX.as_bytes())
            || name == LOOP_COOKIE.as_bytes()
    }
}

/// Every `(name, pair)` of the request's `Cookie` fields, in order (RFC 6265 §5.4: pairs separated by `;`, optional
/// spaces around them; HTTP/2 may send one field per cookie). A pair without `=` is all name. Bytes, not text:
/// another application's cookie may hold UTF-8 or Latin-1 text, and must not hide ours beside it. Only spaces and
/// tabs are trimmed: a header value cannot hold other ASCII whitespace, and RFC 6265 allows no other.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| split_at_each(b';', v.as_bytes()))
        .map(|pair| {
            let pair = pair.trim_ascii();
            let name = memchr::memchr(b'=', pair).map_or(pair, |i| &pair[..i]);
            (name.trim_ascii(), pair)
        })
}

/// The parts of `bytes` between occurrences of `sep` (memchr finds them a word or a vector at a time).
fn split_at_each(sep: u8, bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(sep, r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The value, as sent, of the last cookie called `name`; `None` when that value is not text (so not ours).
fn raw_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let value = cookie_pairs(headers)
        .filter(|(n, _)| *n == name.as_bytes())
        .filter_map(|(_, pair)| {
            let eq = memchr::memchr(b'=', pair)?;
            Some(pair[eq + 1..].trim_ascii())
        })
        .last()?;
    std::str::from_utf8(value).ok()
}

/// A jar holding only the cookie `name=raw`, percent-decoded as the `cookie` crate encodes it when it is set.
fn jar_of(name: &str, raw: &str) -> Option<CookieJar> {
    let mut jar = CookieJar::new();
    jar.add_original(Cookie::parse_encoded(format!("{name}={raw}")).ok()?);
    Some(jar)
}

fn login_cookie_name(state: &str) -> String {
    // The state is random; a prefix of it keeps concurrent sign-ins in several tabs apart.
    let short: String = state
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("{LOGIN_COOKIE_PREFIX}{short}")
}

fn secure(c: &mut Cookie<'static>, domain: Option<&str>) {
    c.set_secure(true);
    c.set_http_only(true);
    c.set_same_site(SameSite::Lax);
    c.set_path("/");
    if let Some(d) = domain {
        c.set_domain(d.to_owned());
    }
}

fn removal(name: &str, domain: Option<&str>) -> String {
    let mut c = Cookie::new(name.to_owned(), "");
    secure(&mut c, domain);
    c.make_removal();
    c.encoded().to_string()
}

/// A new random id (256 bits, base64url): session ids, states, hand-off codes.
pub(crate) fn random_id() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> CookieKeys {
        CookieKeys::new(
            &Secret::new("0123456789abcdef0123456789abcdef-test"),
            "_portcullis".into(),
        )
    }

    fn cookie_header(set_cookie: &str) -> HeaderMap {
        let pair = set_cookie.split(';').next().unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(pair).unwrap());
        h
    }

    #[test]
    fn session_cookie_round_trips_and_has_the_security_attributes() {
        let k = keys();
        let set = k.session_cookie("abc", Some("example.test"), Duration::from_secs(60));
        for attr in [
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Domain=example.test",
            "Path=/",
        ] {
            assert!(set.contains(attr), "{set} lacks {attr}");
        }
        assert_eq!(k.session_id(&cookie_header(&set)).as_deref(), Some("abc"));
    }

    #[test]
    fn tampered_or_foreign_session_cookie_is_ignored() {
        let k = keys();
        let set = k.session_cookie("abc", None, Duration::from_secs(60));
        let pair = set.split(';').next().unwrap();
        let tampered = pair.replace("abc", "abd");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&tampered).unwrap());
        assert_eq!(k.session_id(&h), None);
        let other = CookieKeys::new(
            &Secret::new("another-key-another-key-another-key!!"),
            "_portcullis".into(),
        );
        assert_eq!(
            other.session_id(&cookie_header(&set)),
            None,
            "a cookie signed with another key is refused"
        );
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("_portcullis=plainid"));
        assert_eq!(k.session_id(&h), None, "an unsigned cookie is refused");
    }

    #[test]
    fn session_cookie_is_found_among_others_and_the_last_of_its_name_counts() {
        let k = keys();
        let set = k.session_cookie("abc", None, Duration::from_secs(60));
        let good = set.split(';').next().unwrap().to_owned();
        let bad = good.replace("abc", "abd");
        let header = |values: &[String]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(COOKIE, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let among = format!("theme=dark; _ga=GA1.2.3; {good}; lang=en%20GB");
        assert_eq!(k.session_id(&header(&[among])).as_deref(), Some("abc"));
        // HTTP/2 clients send each cookie in a field of its own.
        let split = ["theme=dark".to_owned(), good.clone(), "lang=en".to_owned()];
        assert_eq!(k.session_id(&header(&split)).as_deref(), Some("abc"));
        let stale_first = format!("{bad}; {good}");
        assert_eq!(
            k.session_id(&header(&[stale_first])).as_deref(),
            Some("abc")
        );
        let stale_last = format!("{good}; {bad}");
        assert_eq!(
            k.session_id(&header(&[stale_last])),
            None,
            "the last cookie of the name is the one checked"
        );
        assert_eq!(
            k.session_id(&header(&["theme=dark; lang=en".to_owned()])),
            None
        );
    }

    /// Regression: a field holding a cookie of another application with non-ASCII text (set by a script on the
    /// same domain, as UTF-8 or Latin-1) was skipped whole, so the session cookie beside it was not seen: every
    /// request went back to the sign-in page. The other cookie still goes upstream as it came.
    #[test]
    fn session_cookie_is_found_beside_a_cookie_with_non_ascii_text() {
        let k = keys();
        let set = k.session_cookie("abc", None, Duration::from_secs(60));
        let good = set.split(';').next().unwrap().to_owned();
        for city in ["Z\u{fc}rich".as_bytes(), b"Z\xfcrich"] {
            let mut field = b"city=".to_vec();
            field.extend_from_slice(city);
            let theirs = field.clone();
            field.extend_from_slice(format!(";\t{good} ; lang=en").as_bytes());
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_bytes(&field).unwrap());
            assert_eq!(k.session_id(&h).as_deref(), Some("abc"));
            k.strip_from_request(&mut h);
            let mut kept = theirs;
            kept.extend_from_slice(b"; lang=en");
            assert_eq!(h.get(COOKIE).unwrap().as_bytes(), kept.as_slice());
        }
        // A session cookie whose own value is not text is not ours.
        let mut h = HeaderMap::new();
        let mut latin1 = good.clone().into_bytes();
        latin1.push(0xfc);
        h.insert(COOKIE, HeaderValue::from_bytes(&latin1).unwrap());
        assert_eq!(k.session_id(&h), None);
    }

    #[test]
    fn only_a_verified_cookie_value_is_remembered_and_only_under_its_own_key() {
        let k = keys();
        let set = k.session_cookie("abc", None, Duration::from_secs(60));
        let good = set.split(';').next().unwrap().to_owned();
        let raw = good.split_once('=').unwrap().1.to_owned();
        let bad = good.replace("abc", "abd");
        let bad_raw = bad.split_once('=').unwrap().1.to_owned();
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(k.session_id(&h(&bad)), None);
        assert!(
            !k.verified.contains_key(bad_raw.as_str()),
            "a forged value is not remembered"
        );
        assert_eq!(k.session_id(&h(&good)).as_deref(), Some("abc"));
        assert!(k.verified.contains_key(raw.as_str()));
        // Served from memory now, with the id it was verified with; a forged neighbour is still checked.
        assert_eq!(k.session_id(&h(&good)).as_deref(), Some("abc"));
        assert_eq!(
            k.session_id(&h(&format!("  {good} ; x=1"))).as_deref(),
            Some("abc")
        );
        assert_eq!(k.session_id(&h(&bad)), None);
        // The same bytes under another key (another secret, or the same one after a reload) are checked again.
        let other = CookieKeys::new(
            &Secret::new("another-key-another-key-another-key!!"),
            "_portcullis".into(),
        );
        assert_eq!(other.session_id(&h(&good)), None);
        assert!(!other.verified.contains_key(raw.as_str()));
    }

    #[test]
    fn loop_counter_round_trips_and_a_forged_one_counts_from_zero() {
        let k = keys();
        let pair = |set: String| set.split(';').next().unwrap().to_owned();
        let signed = pair(k.loop_cookie(3, 1_700));
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {signed}")).unwrap(),
        );
        assert_eq!(k.loop_count(&h), (3, 1_700));
        let mut h = HeaderMap::new();
        let forged = format!("{LOOP_COOKIE}=9.1700");
        h.insert(COOKIE, HeaderValue::from_str(&forged).unwrap());
        assert_eq!(k.loop_count(&h), (0, 0), "an unsigned counter is ignored");
    }

    #[test]
    fn login_state_is_encrypted_and_bound_to_its_state() {
        let k = keys();
        let set = k.login_cookie("STATE123", "secret-verifier");
        assert!(
            !set.contains("secret-verifier"),
            "the verifier is not readable in the cookie"
        );
        let h = cookie_header(&set);
        assert_eq!(
            k.login_state(&h, "STATE123").as_deref(),
            Some("secret-verifier")
        );
        assert_eq!(k.login_state(&h, "OTHER"), None);
    }

    #[test]
    fn our_cookies_are_stripped_before_upstream() {
        let k = keys();
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; _portcullis=x; _portcullis_login_ab=y; app=1"),
        );
        k.strip_from_request(&mut h);
        assert_eq!(h.get(COOKIE).unwrap(), "theme=dark; app=1");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("_portcullis=x"));
        k.strip_from_request(&mut h);
        assert!(h.get(COOKIE).is_none());
        // HTTP/2 clients send one cookie per field: the kept ones go upstream in one field.
        let mut h = HeaderMap::new();
        for v in [
            "theme=dark",
            "_portcullis=x",
            " app=1 ",
            "_portcullis_loop=2.3",
            "=odd",
        ] {
            h.append(COOKIE, HeaderValue::from_static(v));
        }
        k.strip_from_request(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "theme=dark; app=1");
        // A field with nothing of ours goes on as it came; a nameless cookie is taken out like ours.
        for (field, upstream) in [
            ("theme=dark;app=1 ; flag", "theme=dark;app=1 ; flag"),
            ("theme=dark; =_portcullis=x", "theme=dark"),
            ("_portcullis_loop=1", ""),
        ] {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_static(field));
            k.strip_from_request(&mut h);
            let sent = h.get(COOKIE).map_or("", |v| v.to_str().unwrap());
            assert_eq!(sent, upstream, "{field}");
        }
    }

    #[tokio::test]
    async fn memory_store_expiry_and_logout_by_sid_and_sub() {
        let m = Arc::new(MemoryStore::default());
        let s = Store::open(&StoreSpec::Memory, &m).unwrap();
        let sess = Session {
            issuer: "https://idp".into(),
            sub: "alice".into(),
            sid: Some("sid1".into()),
            claims: Arc::default(),
            id_token: None,
            refresh_token: None,
            created_at: 0,
            last_seen: 0,
            refresh_at: 0,
            identity: IdentityMemo::default(),
        };
        s.put("a", &sess, 100, 200).await.unwrap();
        s.put(
            "b",
            &Session {
                sid: Some("sid2".into()),
                ..sess.clone()
            },
            100,
            200,
        )
        .await
        .unwrap();
        assert!(s.get("a", 150).await.unwrap().is_some());
        assert!(
            s.get("a", 200).await.unwrap().is_none(),
            "expired at its deadline"
        );
        s.put("a", &sess, 100, 200).await.unwrap();
        assert_eq!(
            s.delete_matching("https://idp", Some("sid1"), None)
                .await
                .unwrap(),
            1
        );
        assert!(s.get("b", 150).await.unwrap().is_some());
        assert_eq!(
            s.delete_matching("https://idp", None, Some("alice"))
                .await
                .unwrap(),
            1
        );
        assert!(s.get("b", 150).await.unwrap().is_none());
    }

    /// Regression: sessions that expired without being read again, and their sid/sub index entries, stayed in
    /// memory forever.
    #[tokio::test]
    async fn memory_store_sweeps_sessions_that_expired_unread() {
        let m = Arc::new(MemoryStore::default());
        let s = Store::open(&StoreSpec::Memory, &m).unwrap();
        let sess = |i: u64| Session {
            issuer: "https://idp".into(),
            sub: format!("user{i}"),
            sid: Some(format!("sid{i}")),
            claims: Arc::default(),
            id_token: None,
            refresh_token: None,
            created_at: 0,
            last_seen: 0,
            refresh_at: 0,
            identity: IdentityMemo::default(),
        };
        for i in 0..SWEEP_EVERY {
            s.put(&format!("old{i}"), &sess(i), 0, 10).await.unwrap();
        }
        // Later writes, after every earlier session expired, trigger a sweep.
        for i in 0..SWEEP_EVERY {
            s.put(&format!("new{i}"), &sess(SWEEP_EVERY + i), 100, 200)
                .await
                .unwrap();
        }
        assert!(
            lock(&m.sessions).len() <= SWEEP_EVERY as usize,
            "expired sessions were kept"
        );
        assert!(!lock(&m.sessions).keys().any(|k| k.starts_with("old")));
        assert!(
            !lock(&m.by_sid).contains_key("sid0"),
            "index entries of expired sessions were kept"
        );
        assert!(!lock(&m.by_sub).contains_key("https://idp|user0"));
        assert!(
            s.get("new5", 150).await.unwrap().is_some(),
            "live sessions survive a sweep"
        );
    }

    #[tokio::test]
    async fn one_time_values_cannot_be_replayed() {
        let m = Arc::new(MemoryStore::default());
        let s = Store::open(&StoreSpec::Memory, &m).unwrap();
        assert!(s.claim_once("state:x", "1", 0, 10).await.unwrap());
        assert!(!s.claim_once("state:x", "1", 1, 10).await.unwrap());
        assert!(
            s.claim_once("state:x", "1", 11, 20).await.unwrap(),
            "free again after expiry"
        );
        assert!(s.claim_once("code:y", "sess", 0, 10).await.unwrap());
        assert_eq!(
            s.take_once("code:y", 1).await.unwrap().as_deref(),
            Some("sess")
        );
        assert_eq!(s.take_once("code:y", 1).await.unwrap(), None);
    }

    #[test]
    fn redis_url_password_is_redacted() {
        assert_eq!(
            redacted("redis://:pw@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
