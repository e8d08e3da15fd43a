//! Integration tests: each test starts its own gateway on 127.0.0.1:0 with real TLS and a real echo upstream.
//!
//! One crate, a module per feature (STYLE.md "Tests"). Logs appear only with `TEST_LOG=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod bearer;
mod cli;
mod config_errors;
mod configs;
mod deploy;
mod drain;
mod forward_auth;
mod harness;
mod headers;
mod idp;
mod idp_keys;
mod interop;
mod listeners;
mod protocols;
mod reload;
mod routing;
mod signin;
mod signin_support;
mod streaming;
mod upstream_pool;
