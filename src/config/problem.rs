//! Configuration problems: what is wrong, at which key path and line, collected so that one run reports all.
//!
//! Nothing here reads files or decides policy; it only names problems and formats them.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ProblemKind {
    /// The file is not valid TOML.
    #[error("{message}")]
    Syntax {
        /// The parser's description.
        message: String,
    },
    /// A key the schema does not have.
    #[error("unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(", did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The closest valid key, when one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong type or shape.
    #[error("{message}")]
    WrongType {
        /// The deserializer's description.
        message: String,
    },
    /// `${NAME}` without a default and `NAME` is not set.
    #[error("environment variable `{name}` is not set (referenced as `${{{name}}}`; set it or write `${{{name}:-default}}`)")]
    UnsetVariable {
        /// The variable.
        name: String,
    },
    /// A `${` without a closing brace or with an invalid name.
    #[error("bad `${{...}}` reference in {value:?}: {reason}")]
    BadReference {
        /// The string value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file named by the configuration cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required key is absent.
    #[error("is required{}", hint.map(|h| format!(": {h}")).unwrap_or_default())]
    Required {
        /// How to fill it in.
        hint: Option<&'static str>,
    },
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?}: {reason}")]
    Invalid {
        /// The value as written (never a secret).
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Two settings that cannot both hold.
    #[error("{reason}")]
    Conflict {
        /// Why.
        reason: String,
    },
    /// A certificate directory problem.
    #[error(transparent)]
    Tls(Box<dyn std::error::Error + Send + Sync>),
}

/// A problem with its location.
#[derive(Debug)]
pub struct Problem {
    /// Dotted key path, e.g. `services.media.upstream`; empty for the whole file.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.path, self.kind),
            (Some(line), true) => write!(f, "line {line}: {}", self.kind),
            (None, false) => write!(f, "{}: {}", self.path, self.kind),
            (None, true) => write!(f, "{}", self.kind),
        }
    }
}

/// A collector of problems, so that validation goes on after the first one.
#[derive(Debug, Default)]
pub struct Problems {
    items: Vec<Problem>,
}

impl Problems {
    /// Records a problem at a key path.
    pub fn push(&mut self, path: impl Into<String>, kind: ProblemKind) {
        self.items.push(Problem {
            path: path.into(),
            line: None,
            kind,
        });
    }

    /// Shorthand for [`ProblemKind::Invalid`].
    pub fn invalid(
        &mut self,
        path: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.push(
            path,
            ProblemKind::Invalid {
                value: value.into(),
                reason: reason.into(),
            },
        );
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The problems recorded so far.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.items.iter()
    }

    pub(crate) fn items_mut(&mut self) -> &mut Vec<Problem> {
        &mut self.items
    }

    /// Takes the problems out.
    pub fn into_vec(self) -> Vec<Problem> {
        self.items
    }
}

/// A configuration file that cannot be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
#[error("{} has {} problem(s):\n{}", file.display(), problems.len(), problems.iter().map(|p| format!("  {}:{p}", file.display())).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Everything wrong with it, in file order where lines are known.
    pub problems: Vec<Problem>,
}
