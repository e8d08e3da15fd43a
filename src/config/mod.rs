//! Configuration: the TOML file model, its validation, and the immutable runtime [`Snapshot`] built from it.

pub mod file;
mod load;
mod problem;
mod secret;
pub mod snapshot;
pub mod source;
pub mod summary;
pub mod validate;

pub use load::{load, load_with, text_hash};
pub use problem::{ConfigError, Problem, ProblemKind, Problems};
pub use secret::{resolve_secret, Secret};
pub use snapshot::{Route, Snapshot};
pub use summary::{Change, Summary};
pub use validate::Mode;
