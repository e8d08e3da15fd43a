//! The `portcullis` binary: command line, telemetry, configuration, then the library's `run`.

fn main() {}
