//! Who the request is from ([`Identity`]), the proof that it was admitted ([`Permit`]), and the identity
//! headers sent to the backend.
//!
//! Client-sent copies of every header Portcullis may set are removed on every service, bypass ones included,
//! so a backend can trust them. Header values never carry the token itself.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONNECTION};
use http::HeaderMap;
use serde_json::{Map, Value};

use super::claims::{claim_text, groups_of, ClaimPath};
use super::policy::ServicePolicy;
use super::settings::Issuer;
use crate::config::file::{FileIdentityHeaders, FileOneOrMany};
use crate::config::Problems;

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`.
    pub subject: String,
    /// The user name: the issuer's `username_claim`, else `preferred_username`, else `sub`.
    pub user: String,
    /// `email`.
    pub email: Option<String>,
    /// `email_verified`, when the issuer says.
    pub email_verified: Option<bool>,
    /// `name`.
    pub name: Option<String>,
    /// Groups from the groups claim.
    pub groups: Vec<String>,
    /// The issuer's `iss`.
    pub issuer: String,
    /// Every claim of the token (or introspection answer).
    pub claims: Arc<Map<String, Value>>,
    /// Its identity header values, made at its first request.
    pub(crate) header_values: HeaderValues,
}

impl Identity {
    /// Builds the identity from verified claims; `groups_claim` is the service's override, if any.
    pub(crate) fn from_claims(
        claims: Arc<Map<String, Value>>,
        issuer: &Issuer,
        groups_claim: Option<&ClaimPath>,
    ) -> Self {
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let subject = s("sub").unwrap_or_default();
        let user = issuer
            .username_claim
            .as_ref()
            .and_then(|p| p.lookup(&claims))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| s("preferred_username"))
            .or_else(|| s("username"))
            .unwrap_or_else(|| subject.clone());
        let groups = groups_of(groups_claim.unwrap_or(&issuer.groups_claim).lookup(&claims));
        Identity {
            user,
            email: s("email"),
            email_verified: claims.get("email_verified").and_then(Value::as_bool),
            name: s("name"),
            groups,
            issuer: issuer.url.clone(),
            subject,
            claims,
            header_values: HeaderValues::default(),
        }
    }
}

/// The values of an identity's user, email, name and groups headers, made once: a session's or a cached token's
/// every request would otherwise validate and copy the same strings into new header values. Cloning one of these
/// shares its bytes. The groups value depends on the service's group separator, so the values are used only for
/// the separator they were made with; the first one is kept, and a service with another separator makes its own
/// each time. The claim headers (`identity_headers.claims`) are not kept: they depend on the service's mapping.
#[derive(Default)]
pub(crate) struct HeaderValues(OnceLock<Values>);

struct Values {
    separator: Box<str>,
    user: Option<HeaderValue>,
    email: Option<HeaderValue>,
    name: Option<HeaderValue>,
    groups: Option<HeaderValue>,
}

impl Values {
    fn of(id: &Identity, separator: &str) -> Self {
        Values {
            separator: separator.into(),
            user: header_value("user", Some(id.user.clone())),
            email: header_value("email", id.email.clone()),
            name: header_value("name", id.name.clone()),
            groups: header_value("groups", joined(&id.groups, separator)),
        }
    }

    /// Heap bytes these values hold once made (they sit inside the identity): each value's bytes, and the
    /// record through which `Bytes` shares them. A group separator is taken as two bytes.
    fn heap_bytes(id: &Identity, allocation: fn(usize) -> usize) -> usize {
        const SHARED: usize = 32;
        let text = |len: usize| {
            if len == 0 {
                0
            } else {
                allocation(len) + SHARED
            }
        };
        text(id.user.len())
            + text(id.email.as_ref().map_or(0, String::len))
            + text(id.name.as_ref().map_or(0, String::len))
            + text(id.groups.iter().map(|g| g.len() + 2).sum::<usize>())
    }
}

/// `text` as a header value, or `None` when it has characters a header cannot carry. Claim text comes from the
/// issuer; such a value is not sent rather than mangled, and the debug log names `field` (the identity field, or
/// the claim header's name).
fn header_value(field: &str, text: Option<String>) -> Option<HeaderValue> {
    let text = text?;
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_bytes())) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::debug!(field, "identity value not representable as a header");
            None
        }
    }
}

impl HeaderValues {
    fn for_separator(&self, id: &Identity, separator: &str) -> Option<&Values> {
        let v = self.0.get_or_init(|| Values::of(id, separator));
        (*v.separator == *separator).then_some(v)
    }

    /// Heap bytes the values of `id` will hold, for the weight of a cache entry that keeps it; `allocation`
    /// rounds a buffer's size up to what the allocator takes for it.
    pub(crate) fn estimate(id: &Identity, allocation: fn(usize) -> usize) -> usize {
        Values::heap_bytes(id, allocation)
    }
}

impl Clone for HeaderValues {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Always equal: the values are a memo of the identity's own fields.
impl PartialEq for HeaderValues {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for HeaderValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_memo(f, "HeaderValues", &self.0)
    }
}

/// `Name(set)` or `Name(empty)`: a memo only repeats what its owner already prints.
fn fmt_memo<T>(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    memo: &OnceLock<T>,
) -> std::fmt::Result {
    let state = if memo.get().is_some() { "set" } else { "empty" };
    write!(f, "{name}({state})")
}

/// The identity last made from a set of claims, kept beside them in memory (never stored): in a session record,
/// and in a cached token verification. A browser's or an API client's every request would otherwise copy the same
/// strings out of the same claims again. It is used only for exactly the claims it was made from (the same `Arc`,
/// which it keeps alive, so the address cannot be reused) and the same issuer settings; new claims (a refresh, a
/// new sign-in, another token) come in a new record, and a copied record starts with an empty memo.
#[derive(Default)]
pub(crate) struct IdentityMemo(OnceLock<Memo>);

struct Memo {
    username_claim: Option<ClaimPath>,
    groups_claim: ClaimPath,
    identity: Arc<Identity>,
}

impl IdentityMemo {
    /// The identity for `claims` as `issuer` and the service's `groups_claim` read them.
    pub(crate) fn identity(
        &self,
        claims: &Arc<Map<String, Value>>,
        issuer: &Issuer,
        groups_claim: Option<&ClaimPath>,
    ) -> Arc<Identity> {
        let groups = groups_claim.unwrap_or(&issuer.groups_claim);
        if let Some(m) = self.0.get() {
            if Arc::ptr_eq(&m.identity.claims, claims)
                && m.identity.issuer == issuer.url
                && m.username_claim == issuer.username_claim
                && m.groups_claim == *groups
            {
                return Arc::clone(&m.identity);
            }
        }
        let identity = Arc::new(Identity::from_claims(
            Arc::clone(claims),
            issuer,
            groups_claim,
        ));
        // The first reading is kept; services that read groups from another claim just build theirs each time.
        let _ = self.0.set(Memo {
            username_claim: issuer.username_claim.clone(),
            groups_claim: groups.clone(),
            identity: Arc::clone(&identity),
        });
        identity
    }
}

impl Clone for IdentityMemo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for IdentityMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_memo(f, "IdentityMemo", &self.0)
    }
}

/// The result of an allow decision; only the auth module can make one.
#[derive(Debug, Clone)]
pub struct Permit {
    identity: Option<Arc<Identity>>,
}

impl Permit {
    pub(crate) fn anonymous() -> Self {
        Self { identity: None }
    }

    pub(crate) fn authenticated(identity: Arc<Identity>) -> Self {
        Self {
            identity: Some(identity),
        }
    }

    /// The user, or `None` when admitted anonymously (bypass service, bypass rule or CORS preflight).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }
}

/// The identity header names and formatting of a service.
#[derive(Debug, Clone)]
pub(crate) struct IdentityHeaders {
    user: Vec<HeaderName>,
    email: Vec<HeaderName>,
    groups: Vec<HeaderName>,
    name: Vec<HeaderName>,
    separator: String,
    claims: Vec<(HeaderName, ClaimPath)>,
}

/// Every header a client must never be able to set itself: the default family and the conventions of the
/// other auth proxies (see forward-auth reference, §1), whatever the service maps.
const RESERVED: [&str; 17] = [
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "remote-sub",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-auth-request-redirect",
    "x-authenticated-user",
];

/// Headers that cannot carry identity: hop-by-hop ones (RFC 9110 §7.6.1) would be dropped by the next hop,
/// and the others have framing or routing meaning.
const FORBIDDEN: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "authorization",
    "cookie",
];

pub(crate) fn build_identity_headers(
    base: &str,
    f: Option<&FileIdentityHeaders>,
    problems: &mut Problems,
) -> IdentityHeaders {
    let mut names =
        |key: &str, v: Option<&FileOneOrMany>, default: &'static str| -> Vec<HeaderName> {
            let list: Vec<String> = match v {
                None => return vec![HeaderName::from_static(default)],
                Some(FileOneOrMany::One(s)) => vec![s.clone()],
                Some(FileOneOrMany::Many(m)) => m.clone(),
            };
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| header_name(&format!("{base}.{key}.{i}"), s, problems))
                .collect()
        };
    let user = names("user", f.and_then(|f| f.user.as_ref()), "remote-user");
    let email = names("email", f.and_then(|f| f.email.as_ref()), "remote-email");
    let groups = names("groups", f.and_then(|f| f.groups.as_ref()), "remote-groups");
    let name = names("name", f.and_then(|f| f.name.as_ref()), "remote-name");
    let separator = match f.and_then(|f| f.group_separator.as_deref()) {
        None => ",".to_owned(),
        Some(s)
            if !s.is_empty() && HeaderValue::from_str(s).is_ok() && s.trim() == s.trim_end() =>
        {
            s.to_owned()
        }
        Some(s) => {
            problems.invalid(
                format!("{base}.group_separator"),
                s,
                "must be non-empty visible characters, e.g. \",\" or \"|\"",
            );
            ",".to_owned()
        }
    };
    let claims = f
        .and_then(|f| f.claims.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(h, c)| {
            let name = header_name(&format!("{base}.claims"), h, problems)?;
            match ClaimPath::parse(c) {
                Ok(p) => Some((name, p)),
                Err(reason) => {
                    problems.invalid(format!("{base}.claims.{h}"), c, reason);
                    None
                }
            }
        })
        .collect();
    IdentityHeaders {
        user,
        email,
        groups,
        name,
        separator,
        claims,
    }
}

fn header_name(path: &str, s: &str, problems: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.as_bytes()) {
        Ok(n) if FORBIDDEN.contains(&n.as_str()) => {
            problems.invalid(
                path,
                s,
                "this header cannot carry identity (hop-by-hop or framing)",
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            problems.invalid(path, s, "not a valid header name");
            None
        }
    }
}

impl IdentityHeaders {
    fn all_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.user
            .iter()
            .chain(&self.email)
            .chain(&self.groups)
            .chain(&self.name)
            .chain(self.claims.iter().map(|(n, _)| n))
    }
}

/// The groups of `id` joined with the service's separator, `None` when there are none. A group containing the
/// separator would read as two groups; it is left out rather than let it forge one.
pub(crate) fn joined_groups(policy: &ServicePolicy, id: &Identity) -> Option<String> {
    joined(&id.groups, &policy.headers.separator)
}

/// The groups joined by `sep`, leaving out any group that contains it.
fn joined(groups: &[String], sep: &str) -> Option<String> {
    let groups: Vec<&str> = groups
        .iter()
        .map(String::as_str)
        .filter(|g| !g.contains(sep))
        .collect();
    (!groups.is_empty()).then(|| groups.join(sep))
}

/// Strips every header Portcullis may set (this policy's mapping and the default `Remote-*`,
/// `X-Forwarded-User`, `X-Auth-Request-*` family) and, unless `pass_authorization`, the client's
/// `Authorization`; then sets the identity headers of `permit`.
///
/// Header names are case-insensitive in `HeaderMap`, so every spelling a client used is removed. Tokens in a
/// remaining `Connection` header naming any of these headers are dropped too, so nothing set here can be
/// removed by a later hop-by-hop pass.
pub fn apply_identity(policy: &ServicePolicy, permit: &Permit, headers: &mut HeaderMap) {
    let h = &policy.headers;
    // Usually none is present: one pass over the request's names instead of parsing and looking up 17 names,
    // plus a hashed removal per configured identity header.
    if headers.keys().any(|k| RESERVED.contains(&k.as_str())) {
        for name in RESERVED {
            headers.remove(name);
        }
    }
    if headers.keys().any(|k| h.all_names().any(|n| n == k)) {
        for name in h.all_names() {
            headers.remove(name);
        }
    }
    if !policy.pass_authorization {
        headers.remove(AUTHORIZATION);
    }
    if headers.contains_key(CONNECTION) {
        let keep: Vec<String> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| {
                let ours = RESERVED.contains(&t.as_str())
                    || h.all_names().any(|n| n.as_str() == t)
                    || (t == "authorization" && policy.pass_authorization);
                !(t.is_empty() || ours)
            })
            .collect();
        headers.remove(CONNECTION);
        if !keep.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&keep.join(", ")) {
                headers.insert(CONNECTION, v);
            }
        }
    }
    let Some(id) = permit.identity() else { return };
    let fresh;
    let values = match id.header_values.for_separator(id, &h.separator) {
        Some(v) => v,
        None => {
            fresh = Values::of(id, &h.separator);
            &fresh
        }
    };
    let mut set = |names: &[HeaderName], value: Option<&HeaderValue>| {
        let Some(value) = value else { return };
        for n in names {
            headers.insert(n.clone(), value.clone());
        }
    };
    set(&h.user, values.user.as_ref());
    set(&h.email, values.email.as_ref());
    set(&h.name, values.name.as_ref());
    set(&h.groups, values.groups.as_ref());
    for (name, path) in &h.claims {
        if let Some(text) = path
            .lookup(&id.claims)
            .and_then(|v| claim_text(v, &h.separator))
        {
            if let Some(v) = header_value(name.as_str(), Some(text)) {
                headers.insert(name.clone(), v);
            }
        }
    }
}
