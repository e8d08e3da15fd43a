//! Secrets from the configuration: a value that never prints, read from the file, the environment or a
//! `*_file` key.
//!
//! This module must not log or format a secret's contents anywhere.

use std::fmt;
use std::path::Path;

use super::problem::{ProblemKind, Problems};

/// A secret string; `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the code that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Resolves a secret given inline as `key` or as a path in `key_file` (relative to `base_dir`).
///
/// Both set is a conflict; an empty inline value (for example `${VAR:-}` with `VAR` unset) and a file that cannot
/// be read or is empty are problems naming the key. One trailing newline
/// is removed from file contents, as `echo secret > file` writes one. `Ok(None)` when neither is set.
pub fn resolve_secret(
    inline: Option<&str>,
    file: Option<&str>,
    key_path: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(
                format!("{key_path}_file"),
                ProblemKind::Conflict {
                    reason: format!("set either `{key_path}` or `{key_path}_file`, not both"),
                },
            );
            None
        }
        (Some(""), None) => {
            // An empty secret would only fail later, under traffic, at the identity provider.
            problems.invalid(key_path, "", "must not be empty");
            None
        }
        (Some(value), None) => Some(Secret::new(value)),
        (None, Some(path)) => {
            let full = base_dir.join(path);
            match std::fs::read_to_string(&full) {
                Ok(text) => {
                    let value = text.strip_suffix('\n').unwrap_or(&text);
                    let value = value.strip_suffix('\r').unwrap_or(value);
                    if value.is_empty() {
                        problems.invalid(
                            format!("{key_path}_file"),
                            path,
                            format!("{} is empty", full.display()),
                        );
                        None
                    } else {
                        Some(Secret::new(value))
                    }
                }
                Err(source) => {
                    problems.push(
                        format!("{key_path}_file"),
                        ProblemKind::File { path: full, source },
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_variant_reads_and_trims_one_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("s"), "abc\n").expect("write");
        let mut p = Problems::default();
        let s = resolve_secret(None, Some("s"), "auth.secret", dir.path(), &mut p);
        assert_eq!(s.map(|s| s.expose().to_owned()).as_deref(), Some("abc"));
        assert!(p.is_empty());
    }

    #[test]
    fn missing_file_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Problems::default();
        assert!(
            resolve_secret(None, Some("nope"), "x.client_secret", dir.path(), &mut p).is_none()
        );
        let msg = p.iter().next().map(|p| p.to_string()).unwrap_or_default();
        assert!(
            msg.contains("x.client_secret_file") && msg.contains("nope"),
            "{msg}"
        );
    }

    #[test]
    fn issue_3_empty_inline_secret_is_refused() {
        let mut p = Problems::default();
        assert!(
            resolve_secret(Some(""), None, "x.client_secret", Path::new("."), &mut p).is_none()
        );
        let msg = p.iter().next().map(|p| p.to_string()).unwrap_or_default();
        assert!(
            msg.contains("x.client_secret") && msg.contains("empty"),
            "{msg}"
        );
    }

    #[test]
    fn both_inline_and_file_conflict() {
        let mut p = Problems::default();
        assert!(resolve_secret(Some("a"), Some("b"), "k", Path::new("."), &mut p).is_none());
        assert_eq!(p.len(), 1);
    }
}
