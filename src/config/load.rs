//! Reading a configuration file into a [`Snapshot`], for start-up, reload and `portcullis check`.
//!
//! This is the only entry point that touches the file system for configuration; the hot path never calls it.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::problem::{ConfigError, ProblemKind, Problems};
use super::snapshot::Snapshot;
use super::source;
use super::validate::{self, Mode};

/// Loads and validates the file with the process environment, creating a development CA if the file asks for one.
///
/// # Errors
/// Every problem in the file, with lines and key paths.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    load_with(path, &|name| std::env::var(name).ok(), Mode::Serve)
}

/// Loads and validates with an explicit environment and mode.
///
/// # Errors
/// Every problem in the file, with lines and key paths.
pub fn load_with(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    mode: Mode,
) -> Result<Snapshot, ConfigError> {
    let mut problems = Problems::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(source) => {
            problems.push(
                String::new(),
                ProblemKind::File {
                    path: path.to_path_buf(),
                    source,
                },
            );
            return Err(ConfigError {
                file: path.to_path_buf(),
                problems: problems.into_vec(),
            });
        }
    };
    let hash = text_hash(&text);
    let snapshot = source::parse(&text, env, &mut problems)
        .and_then(|file| validate::build(file, path, hash, mode, &mut problems));
    source::locate(&text, &mut problems);
    match snapshot {
        Some(s) if problems.is_empty() => Ok(s),
        _ => Err(ConfigError {
            file: path.to_path_buf(),
            problems: problems.into_vec(),
        }),
    }
}

/// First 16 hex digits of the SHA-256 of the text.
pub fn text_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
