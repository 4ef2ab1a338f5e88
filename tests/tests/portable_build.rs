//! The build runs on every machine of the x86-64-v3 baseline: the model
//! process's binary, which links llama.cpp, holds no AMX instruction (the
//! kernels that fault on hosts whose hypervisor does not allow them) and no
//! AVX-512 instruction (which AMD and older Intel machines lack).
//!
//! The test reads the binary that `cargo build --workspace` wrote beside
//! the test binaries.

use std::path::PathBuf;
use std::process::Command;

fn model_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target folder");
    let bin = dir.join("lakelink-model");
    assert!(bin.is_file(), "{} not built: run cargo build --workspace --bins first", bin.display());
    bin
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}); it comes with Debian's binutils"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_model_binary_links_llama_cpp_without_amx_or_avx512_code() {
    let bin = model_binary();
    let bin = bin.to_str().unwrap();
    let symbols = run("nm", &["--defined-only", bin]);
    // llama.cpp's CPU backend is in (so the checks below look at its code) ...
    assert!(symbols.contains("ggml_backend_cpu_init"), "llama.cpp's CPU backend is not in {bin}");
    // ... without its AMX backend, which a native build on an AMX machine compiles in.
    let amx: Vec<&str> = symbols.lines().filter(|l| l.contains("ggml_backend_amx")).collect();
    assert!(amx.is_empty(), "AMX kernels are compiled in: {amx:?}");

    let code = run("objdump", &["-d", "--no-show-raw-insn", bin]);
    let offending: Vec<&str> = code
        .lines()
        .filter(|l| ["ldtilecfg", "tileloadd", "tilezero", "tdpb", "tilestored", "%zmm"].iter().any(|i| l.contains(i)))
        .take(5)
        .collect();
    assert!(offending.is_empty(), "instructions outside x86-64-v3 in {bin}: {offending:?}");
}
