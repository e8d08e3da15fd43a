//! Request path normalization for rule matching (RFC 3986 §6.2.2) and path patterns.
//!
//! The forms returned here are only used to pick rules; this module never rewrites what is sent upstream. Every
//! reading a backend might give an ambiguous path (`%2F` as a slash or not, `\` as a slash, `//` merged before
//! or after dot segments) is returned, so the policy can apply the most restrictive outcome among them.

use super::error::PathRejection;

/// The distinct normalized readings of a raw request path (one in the common case, at most four).
///
/// # Errors
/// A NUL (raw or `%00`), a broken percent-escape, or a path not starting with `/`.
pub(crate) fn normalized_forms(raw: &str) -> Result<Vec<String>, PathRejection> {
    if !raw.starts_with('/') {
        return Err(PathRejection::NotAbsolute);
    }
    if is_plain(raw) {
        // Nothing to decode, collapse or remove: every reading is the path itself.
        return Ok(vec![raw.to_owned()]);
    }
    let decoded = decode_unreserved(raw)?;
    let mut forms = Vec::with_capacity(1);
    let mut push = |p: String| {
        if !forms.contains(&p) {
            forms.push(p);
        }
    };
    push(collapse_slashes(&remove_dot_segments(&decoded)));
    push(remove_dot_segments(&collapse_slashes(&decoded)));
    if decoded.contains("%2F") || decoded.contains("%5C") || decoded.contains('\\') {
        let slashed = decoded
            .replace("%2F", "/")
            .replace("%5C", "/")
            .replace('\\', "/");
        // `%2E` was decoded already; decoding `%2F` may create new dot segments, so normalize again.
        push(collapse_slashes(&remove_dot_segments(&slashed)));
        push(remove_dot_segments(&collapse_slashes(&slashed)));
    }
    Ok(forms)
}

/// A path every normalization leaves unchanged: no `%`, NUL or backslash, no empty segment (`//`), no `.` or `..`
/// segment.
fn is_plain(path: &str) -> bool {
    let b = path.as_bytes();
    !b.iter().any(|c| matches!(c, b'%' | 0 | b'\\'))
        && !b.windows(2).any(|w| w == b"//")
        && path.split('/').skip(1).all(|seg| seg != "." && seg != "..")
}

/// Decodes percent-encoded unreserved characters (RFC 3986 §2.3) and upper-cases the hex of the others.
fn decode_unreserved(raw: &str) -> Result<String, PathRejection> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(PathRejection::Nul),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathRejection::BadEncoding);
                };
                let v = (hi * 16 + lo) as u8;
                if v == 0 {
                    return Err(PathRejection::Nul);
                }
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push_str(&format!("{v:02X}"));
                }
                i += 3;
            }
            _ => {
                // The raw path is ASCII in an `http::Uri`; keep any other byte sequence as its UTF-8 char.
                let ch = raw[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

/// Merges runs of `/` into one.
fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' {
            if !prev_slash {
                out.push(c);
            }
            prev_slash = true;
        } else {
            out.push(c);
            prev_slash = false;
        }
    }
    out
}

/// A rule's path pattern: exact, or a prefix written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathPattern {
    /// Matches this path only.
    Exact(String),
    /// `/dir/*`: the directory itself and everything below it.
    Dir(String),
    /// `/prefix*`: every path starting with the prefix.
    Prefix(String),
}

impl PathPattern {
    /// Parses a pattern as written in `paths = [...]`.
    ///
    /// # Errors
    /// A reason when the pattern is not in normalized form or has a `*` other than at the end.
    pub(crate) fn parse(s: &str) -> Result<Self, &'static str> {
        if !s.starts_with('/') {
            return Err("must start with `/`");
        }
        let (body, star) = match s.strip_suffix('*') {
            Some(b) => (b, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err("`*` is only allowed at the end");
        }
        let forms = normalized_forms(body)
            .map_err(|_| "must not contain NUL or broken percent-encoding")?;
        if forms.len() != 1 || forms[0] != body {
            return Err(
                "must be in normalized form (no `.`/`..` segments, `//`, `\\` or percent-encoding)",
            );
        }
        Ok(match (star, body.strip_suffix('/')) {
            (false, _) => PathPattern::Exact(body.to_owned()),
            (true, Some(dir)) if !dir.is_empty() => PathPattern::Dir(dir.to_owned()),
            (true, _) => PathPattern::Prefix(body.to_owned()),
        })
    }

    /// Whether `path` (a normalized form) matches; `fold_case` compares ASCII case-insensitively.
    pub(crate) fn matches(&self, path: &str, fold_case: bool) -> bool {
        let starts = |p: &str| {
            path.len() >= p.len()
                && path.is_char_boundary(p.len())
                && eq(&path[..p.len()], p, fold_case)
        };
        match self {
            PathPattern::Exact(p) => eq(path, p, fold_case),
            PathPattern::Dir(d) => {
                starts(d) && (path.len() == d.len() || path.as_bytes()[d.len()] == b'/')
            }
            PathPattern::Prefix(p) => starts(p),
        }
    }
}

fn eq(a: &str, b: &str, fold_case: bool) -> bool {
    if fold_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(p: &str) -> Vec<String> {
        normalized_forms(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// The general normalization, without the fast path for plain paths.
    fn slow_forms(raw: &str) -> Vec<String> {
        let decoded = decode_unreserved(raw).expect("valid");
        let mut out = vec![collapse_slashes(&remove_dot_segments(&decoded))];
        let other = remove_dot_segments(&collapse_slashes(&decoded));
        if !out.contains(&other) {
            out.push(other);
        }
        out
    }

    #[test]
    fn plain_paths_take_the_fast_path_with_the_same_result() {
        for p in [
            "/",
            "/small",
            "/a/b/",
            "/bytes/65536",
            "/a.b/c..d/.e/f.",
            "/~user/x_y-z",
            "/caf\u{e9}",
        ] {
            assert!(is_plain(p), "{p}");
            assert_eq!(forms(p), slow_forms(p), "{p}");
        }
        for p in [
            "/a//b", "/a/./b", "/a/../b", "/.", "/..", "/a/%2e", "/a\\b", "//",
        ] {
            assert!(!is_plain(p), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(forms("/public/../admin"), ["/admin"]);
        assert_eq!(forms("/a/./b/."), ["/a/b/"]);
        assert_eq!(forms("/.."), ["/"]);
        assert_eq!(forms("/a/b/.."), ["/a/"]);
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(forms("/public/%2e%2e/admin"), ["/admin"]);
        assert_eq!(forms("/%61dmin"), ["/admin"]);
        assert_eq!(forms("/a%20b"), ["/a%20b"]);
        assert_eq!(forms("/a%3fb"), ["/a%3Fb"]);
    }

    #[test]
    fn double_slashes_collapse_in_both_orders() {
        assert_eq!(forms("//admin"), ["/admin"]);
        let f = forms("/a//../b");
        assert!(
            f.contains(&"/a/b".to_owned()) && f.contains(&"/b".to_owned()),
            "{f:?}"
        );
    }

    #[test]
    fn encoded_slash_yields_both_readings() {
        let f = forms("/public%2F..%2Fadmin");
        assert!(f.contains(&"/public%2F..%2Fadmin".to_owned()), "{f:?}");
        assert!(f.contains(&"/admin".to_owned()), "{f:?}");
        let f = forms("/public\\..\\admin");
        assert!(f.contains(&"/admin".to_owned()), "{f:?}");
    }

    #[test]
    fn nul_and_broken_escapes_are_rejected() {
        assert_eq!(normalized_forms("/a%00b"), Err(PathRejection::Nul));
        assert_eq!(normalized_forms("/a\0b"), Err(PathRejection::Nul));
        assert_eq!(normalized_forms("/a%zz"), Err(PathRejection::BadEncoding));
        assert_eq!(normalized_forms("/a%2"), Err(PathRejection::BadEncoding));
        assert_eq!(normalized_forms("a"), Err(PathRejection::NotAbsolute));
    }

    #[test]
    fn patterns_match() {
        let dir = PathPattern::parse("/api/public/*").expect("valid");
        assert!(dir.matches("/api/public", false));
        assert!(dir.matches("/api/public/x/y", false));
        assert!(!dir.matches("/api/publicity", false));
        assert!(!dir.matches("/API/public/x", false));
        assert!(dir.matches("/API/public/x", true));
        let exact = PathPattern::parse("/health").expect("valid");
        assert!(exact.matches("/health", false) && !exact.matches("/health/x", false));
        let prefix = PathPattern::parse("/static*").expect("valid");
        assert!(prefix.matches("/static.css", false));
        assert_eq!(
            PathPattern::parse("/*"),
            Ok(PathPattern::Prefix("/".into()))
        );
    }

    #[test]
    fn patterns_must_be_normalized() {
        for bad in ["/a/../b", "//a", "/a%2e", "/a*/b", "a", "/a\\b", "/%2F"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
