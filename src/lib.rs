//! Portcullis: a reverse-proxy auth gateway.
//!
//! The library holds everything; `main.rs` only parses the command line, sets up telemetry, loads the
//! configuration and calls [`run`].

pub mod config;
pub mod router;
pub mod auth;
pub mod metrics;
pub mod proxy;
pub mod error;
pub mod state;
pub mod server;
pub mod telemetry;

pub use server::{run, BoundAddrs, DrainReport, Listeners};
pub use state::Shared;
