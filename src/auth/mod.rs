//! Authentication and authorization: Bearer JWTs validated against cached JWKS (or a shared HMAC secret),
//! opaque tokens via RFC 7662 introspection, per-service access rules on normalized paths, and the identity
//! headers sent to backends.
//!
//! The config side ([`build_auth`], [`build_service_policy`]) reads only local files; the runtime side
//! ([`Authenticator`]) owns the caches and the issuer HTTP client. Only this module can make a [`Permit`].

mod authenticator;
mod claims;
mod client;
mod error;
mod forward_auth;
mod identity;
mod jwks;
mod jwt;
mod oidc;
mod path;
mod policy;
mod portal;
mod session;
mod settings;
mod signin;
#[cfg(test)]
mod tests;

pub use authenticator::{Authenticator, AuthenticatorOptions, Clock, SystemClock};
pub use claims::ClaimPath;
pub use error::{AuthError, DenyReason, FetchError, PathRejection, TokenRejection};
pub use forward_auth::{Endpoint, ForwardAuthContext, MetadataError, EXT_AUTHZ_PREFIX};
pub use identity::{apply_identity, Identity, Permit};
pub use oidc::{build_oidc, online_check, OidcError, OidcSettings};
pub use policy::{build_service_policy, RuleRef, ServicePolicy};
pub use portal::{
    is_allowed_redirect, is_browser, sign_in_redirect, sign_in_url, PortalContext, PortalResponse,
};
pub use session::{CookieKeys, StoreError};
pub use settings::{build_auth, AuthSettings, Issuer, JwksTuning};
