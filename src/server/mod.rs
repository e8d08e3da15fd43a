//! Serving: listeners, the accept loops, the per-request handler, the admin and redirect listeners, the reload
//! watcher, and the graceful drain.

mod access;
mod admin;
mod authz;
mod handle;
mod listener;
mod run;
mod watch;

pub use listener::{serve_gateway_connection, BoundAddrs, Listeners};
pub use run::{run, DrainReport, SniResolver};
