//! The reference pages `docs/config.md` and `docs/functions.md` match what
//! they are generated from (the settings' declarations, the functions'
//! documentation). `UPDATE_DOCS=1 cargo test --workspace --test docs` writes
//! them anew after a change.

use std::path::PathBuf;

use lakelink_tests::docs::{config_md, functions_md};

fn check(name: &str, generated: String) {
    let crate_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let path = crate_dir.parent().expect("the workspace").join("docs").join(name);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is out of date with its source: run UPDATE_DOCS=1 cargo test --workspace --test docs",
        path.display()
    );
}

#[test]
fn the_settings_reference_matches_the_declarations() {
    check("config.md", config_md());
}

#[test]
fn the_functions_reference_matches_the_functions() {
    check("functions.md", functions_md());
}
