//! Integration tests: one crate, a module per feature (see STYLE.md, "Tests").
//!
//! Minimal root for the `wip-idp` branch; the harness branch owns this file and will merge `mod idp;` into it.

mod idp;
