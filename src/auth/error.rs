//! Why a request was not admitted: [`AuthError`] and the reasons it carries, with their HTTP status and the
//! RFC 6750 `WWW-Authenticate` challenge.
//!
//! Nothing here may put a token, a claim value or a key into a message shown to the client; detail is for the log.

use http::{HeaderValue, StatusCode};

use super::policy::RuleRef;

/// Why an authorization attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request carries no Bearer token (or another scheme) on a protected path.
    #[error("no bearer token presented")]
    NoCredentials,
    /// A Bearer token was presented and rejected.
    #[error("invalid token from issuer {}: {reason}", issuer.as_deref().unwrap_or("<unknown>"))]
    InvalidToken {
        /// The issuer the token named or was checked against, when known.
        issuer: Option<String>,
        /// Why it was rejected.
        reason: TokenRejection,
    },
    /// The token is valid but the service's rules do not admit its holder.
    #[error("forbidden by {rule}: {reason}")]
    Forbidden {
        /// The rule that decided.
        rule: RuleRef,
        /// Why the identity does not satisfy it.
        reason: DenyReason,
    },
    /// The request path cannot be matched safely (NUL byte, broken percent-encoding).
    #[error("request path rejected: {reason}")]
    BadPath {
        /// What is wrong with it.
        reason: PathRejection,
    },
    /// The service is protected but no issuer is configured that it could trust: fail closed.
    #[error("service {service} requires authentication but no token issuer is configured")]
    NotConfigured {
        /// The service.
        service: String,
    },
    /// No Bearer token and no valid browser session, on a service where browsers can sign in.
    #[error("no bearer token and no valid session")]
    SignInRequired,
    /// The session store cannot be reached: sessions cannot be checked (Bearer tokens still work).
    #[error("session store unavailable")]
    SessionStore(#[source] super::session::StoreError),
    /// The issuer's keys (or introspection endpoint) cannot be had and no usable cached keys remain.
    #[error("issuer {issuer} is unavailable")]
    IssuerUnavailable {
        /// The issuer URL.
        issuer: String,
        /// What went wrong reaching it.
        #[source]
        source: FetchError,
    },
}

impl AuthError {
    /// 401 for missing/invalid credentials and for a protected service nobody can authenticate to (no issuer:
    /// fail closed), 403 for authenticated-but-not-allowed, 400 for a path that cannot be matched safely, 503 when
    /// keys cannot be had at all.
    pub fn status(&self) -> StatusCode {
        match self {
            // Not configured: nobody can authenticate, so the caller is unauthenticated (fail closed).
            AuthError::NoCredentials
            | AuthError::InvalidToken { .. }
            | AuthError::NotConfigured { .. }
            | AuthError::SignInRequired => StatusCode::UNAUTHORIZED,
            AuthError::SessionStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AuthError::BadPath { .. } => StatusCode::BAD_REQUEST,
            AuthError::IssuerUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 6750 §3 challenge for a 401: `Bearer realm="portcullis"` when no token was sent (no error code,
    /// §3.1), `Bearer realm="portcullis", error="invalid_token", error_description="…"` with a fixed description
    /// otherwise. `None` for other statuses.
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        match self {
            AuthError::NoCredentials
            | AuthError::NotConfigured { .. }
            | AuthError::SignInRequired => {
                Some(HeaderValue::from_static(r#"Bearer realm="portcullis""#))
            }
            AuthError::InvalidToken { reason, .. } => Some(HeaderValue::from_static(
                if matches!(reason, TokenRejection::Expired) {
                    r#"Bearer realm="portcullis", error="invalid_token", error_description="the access token expired""#
                } else {
                    r#"Bearer realm="portcullis", error="invalid_token", error_description="the access token is invalid""#
                },
            )),
            AuthError::Forbidden { .. }
            | AuthError::BadPath { .. }
            | AuthError::SessionStore(_)
            | AuthError::IssuerUnavailable { .. } => None,
        }
    }

    /// A short fixed label for logs and metrics (`auth.reason`).
    pub fn reason_label(&self) -> &'static str {
        match self {
            AuthError::NoCredentials => "no_credentials",
            AuthError::InvalidToken { reason, .. } => reason.label(),
            AuthError::Forbidden { reason, .. } => reason.label(),
            AuthError::BadPath { .. } => "bad_path",
            AuthError::NotConfigured { .. } => "not_configured",
            AuthError::IssuerUnavailable { .. } => "issuer_unavailable",
            AuthError::SignInRequired => "sign_in_required",
            AuthError::SessionStore(_) => "session_store",
        }
    }
}

/// Why a token was rejected (logged; the client only learns `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// Not a well-formed JWT (or a malformed `Authorization` header).
    #[error("malformed token")]
    Malformed,
    /// The `alg` is unknown, `none`, or not allowed for the issuer.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The `alg` does not fit the key's type (e.g. HS256 against an RSA key).
    #[error("algorithm does not match the key type")]
    AlgorithmKeyMismatch,
    /// No key with the token's `kid` (after the refetch the cooldown allows).
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `iss` missing or not one of the issuers this service trusts.
    #[error("untrusted issuer")]
    UntrustedIssuer,
    /// `aud` does not intersect the accepted audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp` is missing or not a number.
    #[error("missing exp")]
    MissingExp,
    /// `exp` has passed (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("issued in the future")]
    IssuedInFuture,
    /// Introspection answered `active: false`.
    #[error("inactive")]
    Inactive,
    /// An opaque token, and no trusted issuer has an introspection endpoint.
    #[error("opaque token and no introspection configured")]
    NotIntrospectable,
}

impl TokenRejection {
    /// A fixed snake_case label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenRejection::Malformed => "malformed",
            TokenRejection::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenRejection::AlgorithmKeyMismatch => "algorithm_key_mismatch",
            TokenRejection::UnknownKey => "unknown_kid",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::UntrustedIssuer => "untrusted_issuer",
            TokenRejection::WrongAudience => "wrong_audience",
            TokenRejection::MissingExp => "missing_exp",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::IssuedInFuture => "issued_in_future",
            TokenRejection::Inactive => "inactive",
            TokenRejection::NotIntrospectable => "not_introspectable",
        }
    }
}

/// Why an authenticated identity was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// The matching rule has `policy = "deny"`.
    #[error("rule denies")]
    DenyRule,
    /// Not in `allow_users`, `allow_groups` or `allow_emails`.
    #[error("user, groups and email not allowed")]
    NotAllowed,
    /// A `require_claims` entry does not hold.
    #[error("required claim {claim} does not hold")]
    ClaimMismatch {
        /// The claim path as configured.
        claim: String,
    },
    /// The browser session comes from an issuer this service does not list in `issuers`.
    #[error("the session's issuer is not trusted by this service")]
    SessionIssuerNotTrusted,
}

impl DenyReason {
    /// A fixed snake_case label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DenyReason::DenyRule => "deny_rule",
            DenyReason::NotAllowed => "not_allowed",
            DenyReason::ClaimMismatch { .. } => "claim_mismatch",
            DenyReason::SessionIssuerNotTrusted => "session_issuer_not_trusted",
        }
    }
}

/// Why a request path is refused before any rule is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    /// A NUL byte, raw or as `%00`.
    #[error("contains NUL")]
    Nul,
    /// A `%` not followed by two hex digits.
    #[error("broken percent-encoding")]
    BadEncoding,
    /// Not an origin-form path (does not start with `/`).
    #[error("not an absolute path")]
    NotAbsolute,
}

/// Why keys or an introspection answer could not be fetched from an issuer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The whole exchange took longer than `fetch_timeout_secs`.
    #[error("timed out")]
    Timeout,
    /// Connecting or sending failed.
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// Reading the body failed.
    #[error("reading body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer exceeded `max_bytes`.
    #[error("document larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A redirect; redirects are never followed.
    #[error("redirect ({status}) not followed")]
    Redirect {
        /// The status.
        status: StatusCode,
    },
    /// A non-success status.
    #[error("unexpected status {status}")]
    Status {
        /// The status.
        status: StatusCode,
    },
    /// The document is not the JSON expected.
    #[error("invalid document")]
    Json(#[source] serde_json::Error),
    /// The discovery document lacks `jwks_uri` or has an unusable one.
    #[error("discovery document has no usable jwks_uri")]
    NoJwksUri,
    /// The discovery document names a different issuer (OpenID Connect Discovery 1.0 §4.3).
    #[error("discovery document names issuer {found}")]
    IssuerMismatch {
        /// The `issuer` in the document.
        found: String,
    },
    /// A URL from a document uses plain http to a non-loopback host.
    #[error("insecure url {url}")]
    Insecure {
        /// The URL.
        url: String,
    },
    /// The JWKS contained no usable key.
    #[error("key set has no usable key")]
    NoUsableKey,
    /// The request could not be built.
    #[error("cannot build request")]
    BadRequest(#[source] http::Error),
    /// The error of a fetch shared by several waiting requests.
    #[error(transparent)]
    Shared(std::sync::Arc<FetchError>),
    /// Waiting for a previous failure's backoff.
    #[error("backing off after a failed fetch")]
    BackingOff,
}
