//! Portcullis: a reverse-proxy auth gateway.
//!
//! The library holds everything; `main.rs` only parses the command line, sets up telemetry, loads the
//! configuration and calls [`run`].

pub mod auth;
pub mod config;
