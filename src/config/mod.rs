//! Configuration: the TOML file model, its validation, and the immutable runtime [`Snapshot`] built from it.

pub mod file;
mod problem;
mod secret;
pub mod source;

pub use problem::{ConfigError, Problem, ProblemKind, Problems};
pub use secret::{resolve_secret, Secret};
