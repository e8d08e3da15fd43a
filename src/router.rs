//! Host -> route lookup.
//!
//! Pure and allocation-free on lookup: exact names first, then one-label wildcards (`*.example.test` matches
//! `a.example.test`, not `example.test` nor `a.b.example.test`, like certificate wildcards in RFC 6125 §6.4.3).
//! No I/O, no policy: which requests a route admits is `auth`'s business.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A request's target host: lowercase, without port or trailing dot.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Host(Box<str>);

/// Why a Host header or authority is not a usable host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host {value:?}")]
pub struct HostError {
    /// The value as received (truncated).
    pub value: String,
}

impl Host {
    /// Parses a `Host` header value or URI authority (`name`, `name:port`, `[v6]:port`).
    ///
    /// # Errors
    /// Empty names, userinfo, and characters outside letters, digits, `-`, `.`, `_` (and `:` inside brackets).
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        let err = || HostError {
            value: raw.chars().take(64).collect(),
        };
        let name = if let Some(rest) = raw.strip_prefix('[') {
            let end = rest.find(']').ok_or_else(err)?;
            let inner = &rest[..end];
            if !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            {
                return Err(err());
            }
            return Ok(Host(format!("[{}]", inner.to_ascii_lowercase()).into()));
        } else {
            match raw.rsplit_once(':') {
                Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
                Some(_) => return Err(err()),
                None => raw,
            }
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty()
            || name.len() > 253
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(err());
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(Host(name.to_ascii_lowercase().into()))
        } else {
            Ok(Host(name.into()))
        }
    }

    /// The normalized name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({})", self.0)
    }
}

/// A host pattern of the configuration: an exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this name only.
    Exact(String),
    /// Matches one label in front of this suffix.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `name` or `*.name` (lowercased).
    ///
    /// # Errors
    /// A `*` anywhere but as the whole first label, or an invalid name.
    pub fn parse(raw: &str) -> Result<HostPattern, HostError> {
        if let Some(suffix) = raw.strip_prefix("*.") {
            let host = Host::parse(suffix)?;
            if suffix.contains(':') || !host.as_str().contains('.') {
                return Err(HostError {
                    value: raw.to_owned(),
                });
            }
            Ok(HostPattern::Wildcard(host.as_str().to_owned()))
        } else {
            if raw.contains(':') {
                return Err(HostError {
                    value: raw.to_owned(),
                });
            }
            Ok(HostPattern::Exact(Host::parse(raw)?.as_str().to_owned()))
        }
    }

    /// Whether the pattern matches `host`.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// The lookup table from host to value (a route index or route).
#[derive(Debug)]
pub struct Router<T> {
    exact: HashMap<Box<str>, Arc<T>>,
    wildcard: HashMap<Box<str>, Arc<T>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> Router<T> {
    /// Adds a pattern; returns the value already registered for the same pattern, if any (a conflict the caller
    /// reports).
    pub fn insert(&mut self, pattern: &HostPattern, value: Arc<T>) -> Option<Arc<T>> {
        match pattern {
            HostPattern::Exact(n) => self.exact.insert(n.as_str().into(), value),
            HostPattern::Wildcard(s) => self.wildcard.insert(s.as_str().into(), value),
        }
    }

    /// The value for a normalized host: exact match first, then the one-label wildcard.
    pub fn lookup(&self, host: &str) -> Option<&Arc<T>> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        let (_, suffix) = host.split_once('.')?;
        self.wildcard.get(suffix)
    }

    /// How many patterns are registered.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether no pattern is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        let mut r = Router::default();
        for (p, v) in [
            ("grafana.example.test", "grafana"),
            ("*.grafana.example.test", "grafana-sub"),
            ("*.example.test", "catch"),
            ("media.example.test", "media"),
        ] {
            let pat = HostPattern::parse(p).expect("valid pattern");
            assert!(r.insert(&pat, Arc::new(v)).is_none());
        }
        r
    }

    #[test]
    fn exact_beats_wildcard() {
        let r = router();
        assert_eq!(r.lookup("media.example.test").map(|v| **v), Some("media"));
        assert_eq!(
            r.lookup("grafana.example.test").map(|v| **v),
            Some("grafana")
        );
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let r = router();
        assert_eq!(
            r.lookup("x.grafana.example.test").map(|v| **v),
            Some("grafana-sub")
        );
        assert_eq!(r.lookup("other.example.test").map(|v| **v), Some("catch"));
        assert_eq!(r.lookup("a.b.example.test").map(|v| **v), None);
        assert_eq!(r.lookup("example.test").map(|v| **v), None);
        assert_eq!(r.lookup("unrelated.test").map(|v| **v), None);
    }

    #[test]
    fn host_parse_normalizes() {
        assert_eq!(
            Host::parse("Media.Example.TEST:8443").map(|h| h.to_string()),
            Ok("media.example.test".into())
        );
        assert_eq!(
            Host::parse("media.example.test.").map(|h| h.to_string()),
            Ok("media.example.test".into())
        );
        assert_eq!(
            Host::parse("[::1]:443").map(|h| h.to_string()),
            Ok("[::1]".into())
        );
        assert!(Host::parse("").is_err());
        assert!(Host::parse("a b").is_err());
        assert!(Host::parse("user@host").is_err());
        assert!(Host::parse("host:port").is_err());
        assert!(Host::parse("a/b").is_err());
    }

    #[test]
    fn pattern_rules() {
        assert!(HostPattern::parse("*.example.test").is_ok());
        assert!(HostPattern::parse("a.*.test").is_err());
        assert!(
            HostPattern::parse("*.test").is_err(),
            "a wildcard over a bare TLD is refused"
        );
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("host:80").is_err());
        assert!(HostPattern::parse("*.Example.test")
            .map(|p| p.to_string())
            .is_ok_and(|s| s == "*.example.test"));
    }

    #[test]
    fn duplicate_pattern_is_reported() {
        let mut r = Router::default();
        let p = HostPattern::parse("a.test").expect("valid");
        assert!(r.insert(&p, Arc::new(1)).is_none());
        assert!(r.insert(&p, Arc::new(2)).is_some());
    }
}
