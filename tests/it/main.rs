//! The integration test crate: one module per feature, each starting its own gateway on loopback.

mod acme;
