//! The runtime side of browser sign-in on the [`Authenticator`]: provider discovery cache, session stores, ID
//! token verification through the shared JWKS cache, and turning a session cookie into an [`Identity`] (with
//! refresh, so group changes at the provider take effect at the next refresh).
//!
//! Nothing here writes HTTP responses; `portal` does. Tokens and cookie values are never logged.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Map, Value};

use super::authenticator::Authenticator;
use super::error::{AuthError, DenyReason, TokenRejection};
use super::identity::Identity;
use super::oidc::{self, OidcError, OidcSettings, Provider};
use super::policy::{RuleRef, ServicePolicy};
use super::session::{Session, Store, StoreError};
use super::settings::{AuthSettings, IssuerKind};

/// Sessions are written back at most this often just to move their idle deadline.
const TOUCH_EVERY_SECS: u64 = 60;
/// After a refresh failed because the provider was unreachable, wait this long before trying again.
const REFRESH_RETRY_SECS: u64 = 30;
/// How long one replica's claim on a session's refresh round keeps the others from refreshing it too.
const REFRESH_CLAIM_SECS: u64 = 30;

impl Authenticator {
    /// The session store for this configuration (opened once, kept across reloads).
    ///
    /// # Errors
    /// A Redis URL that cannot be opened.
    pub(crate) fn store(&self, o: &OidcSettings) -> Result<Store, StoreError> {
        let mut stores = self
            .inner
            .stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = stores.get(&o.store) {
            return Ok(s.clone());
        }
        let s = Store::open(&o.store, &self.inner.memory_sessions)?;
        stores.insert(o.store.clone(), s.clone());
        Ok(s)
    }

    /// The provider's discovery document (cached for an hour; failures are not cached).
    ///
    /// # Errors
    /// Discovery failed or the document is unusable.
    pub(crate) async fn provider(&self, o: &OidcSettings) -> Result<Arc<Provider>, OidcError> {
        match self
            .inner
            .providers
            .try_get_with(o.issuer.url.clone(), async {
                oidc::discover(o).await.map(Arc::new)
            })
            .await
        {
            Ok(p) => Ok(p),
            Err(shared) => Err(match Arc::try_unwrap(shared) {
                Ok(e) => e,
                Err(shared) => OidcError::BadDiscovery {
                    reason: shared.to_string(),
                },
            }),
        }
    }

    /// Verifies an ID token (or logout token) signature with the provider's keys from the shared JWKS cache and
    /// returns its claims; `nonce` is checked when given.
    ///
    /// # Errors
    /// Bad signature, unknown key, algorithm not allowed, or a failed claim check.
    pub(crate) async fn verify_provider_jwt(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        token: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        let bad = |r: TokenRejection| OidcError::IdToken {
            reason: r.to_string(),
        };
        let parsed = super::jwt::parse(token).map_err(bad)?;
        if !o.issuer.algorithms.contains(&parsed.alg) {
            return Err(bad(TokenRejection::AlgorithmNotAllowed));
        }
        match &o.issuer.kind {
            IssuerKind::Hmac(key) => {
                if !super::jwt::is_hmac(parsed.alg) {
                    return Err(bad(TokenRejection::AlgorithmKeyMismatch));
                }
                key.verify(&parsed).map_err(bad)?;
            }
            IssuerKind::Jwks(_) => {
                if super::jwt::is_hmac(parsed.alg) {
                    return Err(bad(TokenRejection::AlgorithmKeyMismatch));
                }
                let keys = self
                    .public_keys(auth, &o.issuer, parsed.kid.as_deref(), parsed.alg)
                    .await
                    .map_err(|e| OidcError::IdToken {
                        reason: e.to_string(),
                    })?;
                let ok = keys.iter().any(|k| {
                    k.accepts(parsed.alg) && super::jwt::verify_signature(&parsed, &k.key).is_ok()
                });
                if !ok {
                    return Err(bad(TokenRejection::BadSignature));
                }
            }
        }
        Ok(parsed.claims)
    }

    /// The identity of a request's browser session.
    ///
    /// # Errors
    /// `SignInRequired` without a valid session, `SessionStore` when the store is down, `Forbidden` when the
    /// service does not trust the provider.
    pub(crate) async fn session_identity(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        policy: &ServicePolicy,
        headers: &HeaderMap,
    ) -> Result<Arc<Identity>, AuthError> {
        let id = o
            .cookies
            .session_id(headers)
            .ok_or(AuthError::SignInRequired)?;
        let store = self.store(o).map_err(AuthError::SessionStore)?;
        let now = self.now();
        let session = store
            .get(&id, now)
            .await
            .map_err(AuthError::SessionStore)?
            .ok_or(AuthError::SignInRequired)?;
        if session.last_seen + o.idle.as_secs() <= now
            || session.created_at + o.max_lifetime.as_secs() <= now
        {
            let _ = Box::pin(store.delete(&id)).await;
            return Err(AuthError::SignInRequired);
        }
        let Some(issuer) = policy
            .trusted(auth)
            .iter()
            .find(|i| i.url == session.issuer)
        else {
            return Err(AuthError::Forbidden {
                rule: RuleRef::Service,
                reason: DenyReason::SessionIssuerNotTrusted,
            });
        };
        let session = if now >= session.refresh_at {
            Box::pin(self.refresh_session(auth, o, &store, &id)).await?
        } else if now >= session.last_seen + TOUCH_EVERY_SECS {
            let mut touched = (*session).clone();
            touched.last_seen = now;
            Box::pin(store.put(&id, &touched, now, oidc::session_deadline(o, &touched, now)))
                .await
                .map_err(AuthError::SessionStore)?;
            Arc::new(touched)
        } else {
            session
        };
        Ok(session
            .identity
            .identity(&session.claims, issuer, policy.groups_claim.as_ref()))
    }

    /// Re-reads the claims from the provider with the refresh token; concurrent requests of one session share
    /// one refresh, also across replicas sharing the store. A refresh the provider refuses ends the session.
    async fn refresh_session(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        store: &Store,
        id: &str,
    ) -> Result<Arc<Session>, AuthError> {
        // One refresh per session at a time: later requests wait, then find the session already refreshed.
        let lock = self
            .inner
            .refreshes
            .get_with(id.to_owned(), || Arc::new(tokio::sync::Mutex::new(())));
        let _guard = lock.lock().await;
        let now = self.now();
        let session = match store.get(id, now).await.map_err(AuthError::SessionStore)? {
            Some(current) if current.refresh_at > now => return Ok(current),
            Some(current) => current,
            None => return Err(AuthError::SignInRequired),
        };
        // Replicas sharing the store must not both refresh: the refresh token rotates, and the provider refuses
        // (and revokes) a token used twice, which would end the session. The first to claim this refresh round
        // refreshes; the others keep serving the current claims until they see the refreshed session.
        let round = format!("refresh:{id}:{}", session.refresh_at);
        if !store
            .claim_once(&round, "1", now, now + REFRESH_CLAIM_SECS)
            .await
            .map_err(AuthError::SessionStore)?
        {
            return Ok(session);
        }
        match self.do_refresh(auth, o, store, id, &session).await {
            Some(s) => Ok(Arc::new(s)),
            None => Err(AuthError::SignInRequired),
        }
    }

    async fn do_refresh(
        &self,
        auth: &AuthSettings,
        o: &OidcSettings,
        store: &Store,
        id: &str,
        session: &Session,
    ) -> Option<Session> {
        let now = self.now();
        let retry_later = |mut s: Session| {
            s.refresh_at = now + REFRESH_RETRY_SECS;
            s.last_seen = now;
            s
        };
        let Some(refresh_token) = session.refresh_token.as_deref() else {
            // Nothing to refresh with: the claims stay as signed in until the session ends.
            let mut s = session.clone();
            s.refresh_at = now + o.refresh_every.as_secs();
            s.last_seen = now;
            let _ = store
                .put(id, &s, now, oidc::session_deadline(o, &s, now))
                .await;
            return Some(s);
        };
        let provider = match self.provider(o).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(oidc.issuer = %o.issuer.url, error = %crate::error::chain(&e), "cannot refresh a session: provider unavailable; keeping the current claims for now");
                return Some(retry_later(session.clone()));
            }
        };
        let tokens = match oidc::refresh(o, &provider, refresh_token, now).await {
            Ok(t) => t,
            Err(e @ (OidcError::InvalidClient { .. } | OidcError::Grant { .. })) => {
                tracing::info!(oidc.issuer = %o.issuer.url, auth.sub = %session.sub, error = %e, "the provider refused the refresh; the session ends");
                let _ = store.delete(id).await;
                return None;
            }
            Err(e) => {
                tracing::warn!(oidc.issuer = %o.issuer.url, error = %crate::error::chain(&e), "session refresh failed; keeping the current claims for now");
                return Some(retry_later(session.clone()));
            }
        };
        let mut claims = match tokens.id_token.as_deref() {
            Some(t) => match self.verify_provider_jwt(auth, o, t).await.and_then(|c| {
                oidc::check_id_token(o, &c, None, now as i64)?;
                if c.get("sub").and_then(Value::as_str) != Some(session.sub.as_str()) {
                    return Err(OidcError::IdToken {
                        reason: "refreshed ID token names another subject".into(),
                    });
                }
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(oidc.issuer = %o.issuer.url, error = %e, "refreshed ID token rejected; the session ends");
                    let _ = store.delete(id).await;
                    return None;
                }
            },
            None => (*session.claims).clone(),
        };
        if o.userinfo {
            if let Err(e) =
                oidc::merge_userinfo(o, &provider, &tokens.access_token, &mut claims).await
            {
                tracing::warn!(oidc.issuer = %o.issuer.url, error = %crate::error::chain(&e), "userinfo failed during refresh; the session ends");
                let _ = store.delete(id).await;
                return None;
            }
        }
        let s = oidc::session_from(o, claims, &tokens, Some(session), now);
        match store
            .put(id, &s, now, oidc::session_deadline(o, &s, now))
            .await
        {
            Ok(()) => {
                tracing::debug!(oidc.issuer = %o.issuer.url, auth.sub = %s.sub, "session refreshed");
                Some(s)
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot store the refreshed session");
                Some(s)
            }
        }
    }
}
