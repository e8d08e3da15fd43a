//! Portcullis: a reverse-proxy auth gateway.
//!
//! The library holds everything; `main.rs` only parses the command line, sets up telemetry, loads the
//! configuration and calls [`run`].

pub mod acme;
pub mod auth;
pub mod config;
pub mod echo;
pub mod error;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod router;
pub mod server;
pub mod state;
pub mod systemd;
pub mod telemetry;
pub mod tls;

pub use server::{run, BoundAddrs, DrainReport, Listeners};
pub use state::Shared;
