//! Authentication and authorization decisions.
//!
//! Until token issuers exist, every service that does not bypass auth is refused: the gateway never fails open.

use std::path::Path;
use std::sync::Arc;

use crate::config::file::{FileAuth, FileService};
use crate::config::Problems;

/// Runtime auth settings of a snapshot.
#[derive(Debug, Default)]
pub struct AuthSettings {}

impl AuthSettings {
    /// Whether any issuer is configured.
    pub fn has_issuers(&self) -> bool {
        false
    }
}

/// Builds [`AuthSettings`] from `[auth]`.
pub fn build_auth(_file: &FileAuth, _base_dir: &Path, _problems: &mut Problems) -> AuthSettings {
    AuthSettings {}
}

/// A service's access policy.
#[derive(Debug)]
pub struct ServicePolicy {
    bypass: bool,
}

impl ServicePolicy {
    /// Whether the whole service is served without authentication.
    pub fn is_bypass(&self) -> bool {
        self.bypass
    }

    /// One line for `portcullis check`.
    pub fn describe(&self) -> String {
        if self.bypass {
            "bypass".into()
        } else {
            "auth: any authenticated user".into()
        }
    }
}

/// Builds a service's policy.
pub fn build_service_policy(
    _name: &str,
    svc: &FileService,
    _auth: &AuthSettings,
    _problems: &mut Problems,
) -> ServicePolicy {
    ServicePolicy {
        bypass: svc.bypass_auth.unwrap_or(false),
    }
}

/// Who the user is.
#[derive(Debug)]
pub struct Identity {
    /// The `sub` claim.
    pub subject: String,
}

/// An allow decision.
#[derive(Debug)]
pub struct Permit {
    identity: Option<Arc<Identity>>,
}

impl Permit {
    /// The authenticated identity; `None` for anonymous access to a bypass service.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }
}

/// Why a request is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The service requires authentication but no issuer is configured.
    #[error(
        "service requires authentication but no token issuer is configured ([[auth.issuers]])"
    )]
    NotConfigured,
}

impl AuthError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::NotConfigured => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 challenge, for 401s.
    pub fn www_authenticate(&self) -> Option<http::HeaderValue> {
        match self {
            AuthError::NotConfigured => Some(http::HeaderValue::from_static(
                "Bearer realm=\"portcullis\"",
            )),
        }
    }
}

/// Long-lived authentication caches.
#[derive(Debug, Default)]
pub struct Authenticator {}

impl Authenticator {
    /// An empty authenticator.
    pub fn new() -> Self {
        Self {}
    }

    /// The decision for one request.
    ///
    /// # Errors
    /// Any refusal.
    pub async fn authorize(
        &self,
        _auth: &AuthSettings,
        policy: &ServicePolicy,
        _method: &http::Method,
        _path: &str,
        _headers: &http::HeaderMap,
    ) -> Result<Permit, AuthError> {
        if policy.is_bypass() {
            Ok(Permit { identity: None })
        } else {
            Err(AuthError::NotConfigured)
        }
    }
}

/// Header names Portcullis sets towards backends; a client must never be able to send them.
const IDENTITY_HEADERS: &[&str] = &[
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
];

/// Strips client-sent identity headers and adds the permit's.
pub fn apply_identity(_policy: &ServicePolicy, _permit: &Permit, headers: &mut http::HeaderMap) {
    for name in IDENTITY_HEADERS {
        headers.remove(*name);
    }
}
