//! JWT parsing and claim checks (RFC 7519, RFC 7515): header `alg`/`kid`, signature over the signing input
//! with a key whose type fits the `alg`, then `iss`, `aud`, `exp`, `nbf`, `iat` against an injected clock.
//!
//! Public-key signatures are verified by `jsonwebtoken::crypto::verify`, which does not itself check that the
//! key fits the algorithm; every call here is preceded by that check (no `none`, no RS->HS confusion). Shared-secret
//! (HS*) signatures are verified by ring's HMAC with keys made once per configuration (`HmacKey`).

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
    // A sum without early exit, which the compiler turns into vector compares.
    token.bytes().map(|b| usize::from(b == b'.')).sum::<usize>() == 2
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
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| TokenRejection::Malformed)?;
    // A JSON object (a derived struct would also take an array, member by member).
    if header_json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(TokenRejection::Malformed);
    }
    let header: JoseHeader<'_> =
        serde_json::from_slice(&header_json).map_err(|_| TokenRejection::Malformed)?;
    if header.crit {
        return Err(TokenRejection::Malformed);
    }
    let alg: Algorithm = header
        .alg
        .parse()
        .map_err(|_| TokenRejection::AlgorithmNotAllowed)?;
    let kid = header.kid;
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

/// The JOSE header members read here; the others are ignored. Read into this rather than a map: no allocation
/// for the names, nor for `alg`, borrowed from the decoded bytes. A member given twice is refused (RFC 7515 §4
/// allows refusing or taking the last).
#[derive(serde::Deserialize)]
struct JoseHeader<'a> {
    /// Required, a string.
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    /// A string when present (`null` or a number is malformed).
    #[serde(default, deserialize_with = "some_string")]
    kid: Option<String>,
    /// Present at all, whatever its value: no extension is understood here (RFC 7515 §4.1.11).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn some_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Some)
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| true)
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

/// A shared HMAC secret as ring keys, one per HS algorithm, made when the configuration loads. jsonwebtoken's
/// `DecodingKey::from_secret` keeps the bytes and derives the HMAC key again on every verification (two SHA
/// blocks for the padded key), then compares base64 strings; here the keys are derived once, and a verification
/// costs the MAC and its constant-time comparison.
pub(crate) struct HmacKey {
    hs256: ring::hmac::Key,
    hs384: ring::hmac::Key,
    hs512: ring::hmac::Key,
}

impl HmacKey {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            hs256: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            hs384: ring::hmac::Key::new(ring::hmac::HMAC_SHA384, secret),
            hs512: ring::hmac::Key::new(ring::hmac::HMAC_SHA512, secret),
        }
    }

    /// Checks an HS256/384/512 signature (ring compares in constant time).
    ///
    /// # Errors
    /// `AlgorithmKeyMismatch` for any other `alg`; `BadSignature` for a signature that is not canonical unpadded
    /// base64url of at most 64 bytes, or does not match.
    pub(crate) fn verify(&self, p: &Parsed<'_>) -> Result<(), TokenRejection> {
        let key = match p.alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::HS384 => &self.hs384,
            Algorithm::HS512 => &self.hs512,
            _ => return Err(TokenRejection::AlgorithmKeyMismatch),
        };
        let mut mac = [0u8; 64];
        let n = URL_SAFE_NO_PAD
            .decode_slice(p.signature, &mut mac)
            .map_err(|_| TokenRejection::BadSignature)?;
        ring::hmac::verify(key, p.signing_input.as_bytes(), &mac[..n])
            .map_err(|_| TokenRejection::BadSignature)
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

    fn hs_token(alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &json!({"iss": "x", "exp": 2_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    #[test]
    fn hmac_keys_verify_what_jsonwebtoken_signs_and_nothing_else() {
        let secret = b"a-shared-secret-of-at-least-64-bytes-for-hs512-0123456789abcdef!";
        let key = HmacKey::new(secret);
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = hs_token(alg, secret);
            let p = parse(&token).expect("parse");
            assert_eq!(key.verify(&p), Ok(()), "{alg:?}");
            // Another secret, another MAC.
            let other = hs_token(
                alg,
                b"another-shared-secret-of-at-least-64-bytes-for-hs512-0123456789!",
            );
            let q = parse(&other).expect("parse");
            assert_eq!(key.verify(&q), Err(TokenRejection::BadSignature), "{alg:?}");
            // The signature of one algorithm under another's name.
            let swapped = Parsed {
                alg: if alg == Algorithm::HS256 {
                    Algorithm::HS512
                } else {
                    Algorithm::HS256
                },
                ..parse(&token).expect("parse")
            };
            assert_eq!(
                key.verify(&swapped),
                Err(TokenRejection::BadSignature),
                "{alg:?}"
            );
        }
        let token = hs_token(Algorithm::HS256, secret);
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let with = |signature: &str| {
            let t = format!("{input}.{signature}");
            key.verify(&parse(&t).expect("parse"))
        };
        // One bit flipped in the MAC (the first character carries its first six bits).
        let first = if sig.starts_with('A') { "B" } else { "A" };
        assert_eq!(
            with(&format!("{first}{}", &sig[1..])),
            Err(TokenRejection::BadSignature)
        );
        // The same MAC written another way: padded, or with non-zero bits after its last byte. Only the
        // canonical form verifies.
        assert_eq!(with(&format!("{sig}=")), Err(TokenRejection::BadSignature));
        // 32 bytes are 43 characters, the last holding 4 bits of the MAC and 2 zero bits: set the lowest.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *sig.as_bytes().last().expect("non-empty");
        let i = alphabet.iter().position(|&c| c == last).expect("base64url");
        assert_eq!(
            i & 3,
            0,
            "the trailing bits of a canonical encoding are zero"
        );
        let bumped = char::from(alphabet[i | 1]);
        let last = char::from(last);
        assert_ne!(bumped, last);
        assert_eq!(
            with(&format!("{}{bumped}", &sig[..sig.len() - 1])),
            Err(TokenRejection::BadSignature)
        );
        // Longer than any HS MAC, and not base64url at all.
        assert_eq!(with(&"A".repeat(90)), Err(TokenRejection::BadSignature));
        assert_eq!(with("not*base64"), Err(TokenRejection::BadSignature));
        // Never a public-key algorithm.
        let rs = Parsed {
            alg: Algorithm::RS256,
            ..parse(&token).expect("parse")
        };
        assert_eq!(key.verify(&rs), Err(TokenRejection::AlgorithmKeyMismatch));
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

    #[test]
    fn the_header_needs_a_string_alg_and_a_string_kid_if_any() {
        let p = URL_SAFE_NO_PAD.encode(br#"{"exp":1}"#);
        let header = |json: &str| {
            let h = URL_SAFE_NO_PAD.encode(json.as_bytes());
            parse(&format!("{h}.{p}.sig")).map(|t| (t.alg, t.kid))
        };
        assert_eq!(
            header(r#"{"alg":"ES256","kid":"k1","typ":"JWT","x5t":[1]}"#),
            Ok((Algorithm::ES256, Some("k1".to_owned())))
        );
        assert_eq!(header(r#"{"alg":"ES256"}"#), Ok((Algorithm::ES256, None)));
        // Escapes in a member are decoded.
        assert_eq!(
            header(r#"{"alg":"RS\u0032\u00356","kid":"a\/b"}"#),
            Ok((Algorithm::RS256, Some("a/b".to_owned())))
        );
        for bad in [
            r#"{}"#,
            r#"{"alg":256}"#,
            r#"{"alg":null}"#,
            r#"{"alg":"ES256","kid":null}"#,
            r#"{"alg":"ES256","kid":7}"#,
            r#"{"alg":"ES256","crit":null}"#,
            r#"{"alg":"ES256","alg":"HS256"}"#,
            r#"["alg","ES256"]"#,
            r#"{"alg":"ES256""#,
        ] {
            assert_eq!(header(bad), Err(TokenRejection::Malformed), "{bad}");
        }
        assert_eq!(
            header(r#"{"alg":"XY999"}"#),
            Err(TokenRejection::AlgorithmNotAllowed)
        );
    }
}
