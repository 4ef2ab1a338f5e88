//! Puts llama.cpp's shared libraries and CPU kernel modules next to the
//! binaries, where they run from (`$ORIGIN` run path, `cpu::kernel_dirs`).
//!
//! llama-cpp-sys-2 builds them into its own output folder and links only
//! the unversioned names into the target folder, as symlinks to sonames it
//! does not copy. This copies each library under its soname (what the
//! binaries ask the loader for) into `target/<profile>` and its `deps`
//! folder (test binaries), and the kernel modules LakeLink loads
//! (`src/kernels.rs`; not the AMX one) into `target/<profile>`. Files are replaced by
//! rename, so a running process keeps the copy it mapped.

use std::path::{Path, PathBuf};

#[path = "src/kernels.rs"]
#[allow(dead_code)]
mod kernels;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR").map(PathBuf::from) else {
        // llama-cpp-2 without `dynamic-backends`: nothing to place.
        return;
    };
    let lib = backends.parent().expect("llama.cpp's output folder").join("lib");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<package>-<hash>/out.
    let profile = out.ancestors().nth(3).expect("target/<profile>").to_path_buf();

    for entry in read_dir(&lib) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        // The soname: libllama.so.0 (a symlink to libllama.so.0.6.0).
        let is_soname = name.rsplit_once(".so.").is_some_and(|(_, v)| v.chars().all(|c| c.is_ascii_digit()));
        if is_soname {
            for dir in [profile.clone(), profile.join("deps")] {
                place(&entry, &dir.join(&name));
            }
        }
    }
    for entry in read_dir(&backends) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let loaded = kernels::KERNELS.iter().any(|(kernel, _, _)| name == format!("libggml-cpu-{kernel}.so"));
        if loaded {
            place(&entry, &profile.join(&name));
        }
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    entries.map(|e| e.expect("a folder entry").path()).collect()
}

/// Copies `from` (following symlinks) to `to` unless `to` has its content.
fn place(from: &Path, to: &Path) {
    let content = std::fs::read(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    if std::fs::read(to).is_ok_and(|old| old == content) {
        return;
    }
    let temporary = to.with_extension("lakelink-tmp");
    std::fs::write(&temporary, &content).unwrap_or_else(|e| panic!("cannot write {}: {e}", temporary.display()));
    std::fs::rename(&temporary, to).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
}
