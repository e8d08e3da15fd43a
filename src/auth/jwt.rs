//! JWT parsing and claim checks (RFC 7519, RFC 7515): header `alg`/`kid`, signature over the signing input
//! with a key whose type fits the `alg`, then `iss`, `aud`, `exp`, `nbf`, `iat` against an injected clock.
//!
//! Signature verification is delegated to `jsonwebtoken::crypto::verify`, which does not itself check that the
//! key fits the algorithm; every call here is preceded by that check (no `none`, no RS->HS confusion).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::claims::numeric_date;
use super::error::TokenRejection;

/// A JWT split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) signing_input: &'a str,
    pub(crate) signature: &'a str,
    pub(crate) claims: Map<String, Value>,
}

/// Whether a bearer token has the compact JWS shape (three dot-separated parts).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Splits and decodes a compact JWS.
///
/// # Errors
/// `Malformed` for bad base64/JSON or a `crit` header (RFC 7515 §4.1.11: none is understood here);
/// `AlgorithmNotAllowed` for `none` or an unknown `alg`.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, TokenRejection> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenRejection::Malformed)?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(TokenRejection::Malformed)?;
    let header: Map<String, Value> = decode_json(header_b64)?;
    if header.contains_key("crit") {
        return Err(TokenRejection::Malformed);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenRejection::Malformed)?;
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| TokenRejection::AlgorithmNotAllowed)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenRejection::Malformed),
    };
    if signature.is_empty() {
        return Err(TokenRejection::BadSignature);
    }
    let claims = decode_json(payload_b64)?;
    Ok(Parsed {
        alg,
        kid,
        signing_input,
        signature,
        claims,
    })
}

fn decode_json(part: &str) -> Result<Map<String, Value>, TokenRejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenRejection::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenRejection::Malformed)
}

/// Checks the signature with a key already known to fit `alg`.
///
/// # Errors
/// `BadSignature`.
pub(crate) fn verify_signature(p: &Parsed<'_>, key: &DecodingKey) -> Result<(), TokenRejection> {
    match jsonwebtoken::crypto::verify(p.signature, p.signing_input.as_bytes(), key, p.alg) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(TokenRejection::BadSignature),
    }
}

/// The family of an algorithm, for the key-type check.
pub(crate) fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Checks `aud`, `exp` (required), `nbf` and `iat` at `now` with `leeway` seconds. `iss` is checked by the
/// caller when it picks the issuer. An empty `audiences` accepts any audience.
///
/// # Errors
/// The first failing check.
pub(crate) fn check_claims(
    claims: &Map<String, Value>,
    audiences: &[String],
    now: i64,
    leeway: i64,
) -> Result<(), TokenRejection> {
    let exp = match numeric_date(claims, "exp") {
        Some(Ok(exp)) => exp,
        Some(Err(())) | None => return Err(TokenRejection::MissingExp),
    };
    if now > exp.saturating_add(leeway) {
        return Err(TokenRejection::Expired);
    }
    match numeric_date(claims, "nbf") {
        Some(Ok(nbf)) if now.saturating_add(leeway) < nbf => {
            return Err(TokenRejection::NotYetValid)
        }
        Some(Err(())) => return Err(TokenRejection::Malformed),
        Some(Ok(_)) | None => {}
    }
    match numeric_date(claims, "iat") {
        Some(Ok(iat)) if now.saturating_add(leeway) < iat => {
            return Err(TokenRejection::IssuedInFuture)
        }
        Some(Err(())) => return Err(TokenRejection::Malformed),
        Some(Ok(_)) | None => {}
    }
    check_audience(claims, audiences)
}

/// `aud` (a string or an array, RFC 7519 §4.1.3) must intersect `audiences` when that is not empty.
///
/// # Errors
/// `WrongAudience`.
pub(crate) fn check_audience(
    claims: &Map<String, Value>,
    audiences: &[String],
) -> Result<(), TokenRejection> {
    if audiences.is_empty() {
        return Ok(());
    }
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TokenRejection::WrongAudience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn time_claims_respect_leeway() {
        let c = map(json!({"exp": 1000, "nbf": 900, "iat": 900}));
        assert_eq!(check_claims(&c, &[], 950, 0), Ok(()));
        assert_eq!(check_claims(&c, &[], 1001, 0), Err(TokenRejection::Expired));
        assert_eq!(check_claims(&c, &[], 1001, 5), Ok(()));
        assert_eq!(
            check_claims(&c, &[], 899, 0),
            Err(TokenRejection::NotYetValid)
        );
        assert_eq!(check_claims(&c, &[], 899, 1), Ok(()));
        let c = map(json!({"exp": 2000, "iat": 1500}));
        assert_eq!(
            check_claims(&c, &[], 1000, 60),
            Err(TokenRejection::IssuedInFuture)
        );
    }

    #[test]
    fn exp_is_required_and_numeric() {
        assert_eq!(
            check_claims(&map(json!({})), &[], 0, 0),
            Err(TokenRejection::MissingExp)
        );
        assert_eq!(
            check_claims(&map(json!({"exp": "soon"})), &[], 0, 0),
            Err(TokenRejection::MissingExp)
        );
    }

    #[test]
    fn audience_string_or_array() {
        let want = vec!["api".to_owned()];
        assert_eq!(check_audience(&map(json!({"aud": "api"})), &want), Ok(()));
        assert_eq!(
            check_audience(&map(json!({"aud": ["x", "api"]})), &want),
            Ok(())
        );
        assert_eq!(
            check_audience(&map(json!({"aud": ["x"]})), &want),
            Err(TokenRejection::WrongAudience)
        );
        assert_eq!(
            check_audience(&map(json!({})), &want),
            Err(TokenRejection::WrongAudience)
        );
        assert_eq!(check_audience(&map(json!({})), &[]), Ok(()));
    }

    #[test]
    fn none_and_crit_are_refused() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"exp":1}"#);
        assert_eq!(
            parse(&format!("{h}.{p}.")).err(),
            Some(TokenRejection::AlgorithmNotAllowed)
        );
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","crit":["exp"]}"#);
        assert_eq!(
            parse(&format!("{h}.{p}.sig")).err(),
            Some(TokenRejection::Malformed)
        );
        assert_eq!(parse("a.b.c").err(), Some(TokenRejection::Malformed));
    }
}
