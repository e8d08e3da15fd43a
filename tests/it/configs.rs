//! Every reference configuration in `config/` must be valid as it is.

use std::path::Path;

use portcullis::config::{load_with, Mode};

#[test]
fn every_file_in_config_dir_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("config/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.toml in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        // Reference files must not depend on the environment of whoever runs the tests.
        if let Err(e) = load_with(file, &|_| None, Mode::Check) {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "invalid reference configs:\n{}",
        failures.join("\n")
    );
}
