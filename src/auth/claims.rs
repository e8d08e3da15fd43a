//! Reading claims: dotted claim paths, the groups claim in its three shapes, and value comparison for
//! `require_claims`.
//!
//! Pure functions over `serde_json` values; no verification happens here.

use serde_json::{Map, Value};

/// A claim path as configured: a literal claim name, or dot-separated steps into nested objects.
///
/// A claim whose literal name contains dots (Zitadel's `urn:zitadel:iam:org:project:roles`, or
/// `https://example.com/groups`) is found before the dotted split is tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub(crate) String);

impl ClaimPath {
    /// Parses a claim path; empty names or empty steps are refused.
    ///
    /// # Errors
    /// A reason suitable for a configuration problem.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.trim().is_empty() {
            return Err("claim path must not be empty");
        }
        if s.starts_with('.') || s.ends_with('.') {
            return Err("claim path must not start or end with `.`");
        }
        Ok(Self(s.to_owned()))
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Looks the claim up: literal name first, then the dotted walk.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&self.0) {
            return Some(v);
        }
        if !self.0.contains('.') {
            return None;
        }
        let mut steps = self.0.split('.');
        let first = steps.next()?;
        let mut cur = claims.get(first)?;
        for step in steps {
            cur = cur.as_object()?.get(step)?;
        }
        Some(cur)
    }
}

/// The groups a claim value names: an array of strings, one string, or an object whose keys are the groups
/// (Zitadel project roles). Other shapes yield nothing.
pub(crate) fn groups_of(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Whether a claim value holds one of `wanted`: a string equal to one, a number or bool whose JSON text is one,
/// or an array with such an element.
pub(crate) fn claim_holds(value: Option<&Value>, wanted: &[String]) -> bool {
    fn scalar(v: &Value, wanted: &[String]) -> bool {
        match v {
            Value::String(s) => wanted.iter().any(|w| w == s),
            Value::Bool(_) | Value::Number(_) => {
                let text = v.to_string();
                wanted.contains(&text)
            }
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        }
    }
    match value {
        Some(Value::Array(items)) => items.iter().any(|v| scalar(v, wanted)),
        Some(v) => scalar(v, wanted),
        None => false,
    }
}

/// A claim rendered for a header: strings as-is, arrays of scalars joined by `sep`, other scalars as JSON text.
pub(crate) fn claim_text(value: &Value, sep: &str) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
                    Value::Null | Value::Array(_) | Value::Object(_) => None,
                })
                .collect::<Vec<_>>()
                .join(sep),
        ),
        Value::Null | Value::Object(_) => None,
    }
}

/// A numeric date claim (RFC 7519 §2 NumericDate) as whole seconds.
pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Option<Result<i64, ()>> {
    claims.get(name).map(|v| match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.floor() as i64))
            .ok_or(()),
        Value::Null | Value::Bool(_) | Value::String(_) | Value::Array(_) | Value::Object(_) => {
            Err(())
        }
    })
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
    fn literal_name_with_dots_wins_over_split() {
        let c = map(json!({
            "urn:zitadel:iam:org:project:roles": {"admin": {"1": "org"}, "viewer": {}},
            "realm_access": {"roles": ["a", "b"]},
        }));
        let z = ClaimPath::parse("urn:zitadel:iam:org:project:roles").expect("valid");
        let mut g = groups_of(z.lookup(&c));
        g.sort();
        assert_eq!(g, ["admin", "viewer"]);
        let k = ClaimPath::parse("realm_access.roles").expect("valid");
        assert_eq!(groups_of(k.lookup(&c)), ["a", "b"]);
    }

    #[test]
    fn groups_shapes() {
        assert_eq!(groups_of(Some(&json!(["x", 1, "y"]))), ["x", "y"]);
        assert_eq!(groups_of(Some(&json!("solo"))), ["solo"]);
        assert!(groups_of(Some(&json!(42))).is_empty());
        assert!(groups_of(None).is_empty());
    }

    #[test]
    fn claim_values_compare_as_text() {
        let w = vec!["true".to_owned(), "acme".to_owned()];
        assert!(claim_holds(Some(&json!(true)), &w));
        assert!(claim_holds(Some(&json!(["x", "acme"])), &w));
        assert!(!claim_holds(Some(&json!("ACME")), &w));
        assert!(!claim_holds(None, &w));
    }

    #[test]
    fn bad_claim_paths_are_refused() {
        assert!(ClaimPath::parse("").is_err());
        assert!(ClaimPath::parse(".a").is_err());
        assert!(ClaimPath::parse("a.").is_err());
    }
}
