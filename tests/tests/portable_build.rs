//! The build runs on every machine of the x86-64-v3 baseline: the model
//! process's binary and the llama.cpp libraries it links hold no AMX
//! instruction (the kernels that fault on hosts whose hypervisor does not
//! allow them) and no AVX-512 instruction (which AMD and older Intel
//! machines lack). The faster kernels live in llama.cpp's per-CPU modules,
//! which the model process loads only on a CPU that runs them
//! (`lakelink_model::cpu`); the AVX2 module every such CPU runs is there.
//!
//! The test reads what `cargo build --workspace` wrote beside the test
//! binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(|d| d.parent()).expect("target folder").to_path_buf()
}

fn model_binary() -> PathBuf {
    let bin = target_dir().join("lakelink-model");
    assert!(bin.is_file(), "{} not built: run cargo build --workspace --bins first", bin.display());
    bin
}

/// A kernel module, where the model process looks for it.
fn module(name: &str) -> PathBuf {
    let file = format!("libggml-cpu-{name}.so");
    lakelink_model::cpu::kernel_dirs()
        .into_iter()
        .chain([target_dir()])
        .map(|dir| dir.join(&file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{file} is not built"))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}); it comes with Debian's binutils"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const AMX: &[&str] = &["ldtilecfg", "tileloadd", "tilezero", "tdpb", "tilestored"];

/// The first AMX or AVX-512 instructions in a binary's code.
fn beyond_v3(file: &Path) -> Vec<String> {
    instructions(file, &[AMX, &["%zmm"]].concat())
}

/// The first lines of a binary's code that name one of `what`.
fn instructions(file: &Path, what: &[&str]) -> Vec<String> {
    let code = run("objdump", &["-d", "--no-show-raw-insn", file.to_str().unwrap()]);
    code.lines().filter(|l| what.iter().any(|i| l.contains(i))).take(5).map(str::to_string).collect()
}

#[test]
fn the_model_binary_and_llama_cpp_hold_no_amx_or_avx512_code() {
    let bin = model_binary();
    let dynamic = run("readelf", &["-d", bin.to_str().unwrap()]);
    // llama.cpp is a shared library found next to the binary ...
    assert!(dynamic.contains("[libllama.so.0]"), "{dynamic}");
    assert!(dynamic.contains("[$ORIGIN]"), "no $ORIGIN run path: {dynamic}");
    let mut checked = vec![bin.clone()];
    for lib in ["libllama.so.0", "libggml.so.0", "libggml-base.so.0"] {
        let path = target_dir().join(lib);
        assert!(path.is_file(), "{} is not next to the binaries", path.display());
        checked.push(path);
    }
    // ... with no CPU kernels of its own: those are modules, and the AVX2
    // one runs on every x86-64-v3 CPU.
    let symbols = run("nm", &["-D", "--defined-only", checked[2].to_str().unwrap()]);
    assert!(!symbols.contains("ggml_backend_cpu_init"), "libggml.so holds CPU kernels");
    checked.push(module("haswell"));
    for file in &checked {
        let offending = beyond_v3(file);
        assert!(offending.is_empty(), "instructions outside x86-64-v3 in {}: {offending:?}", file.display());
    }
}

#[test]
fn the_faster_modules_hold_what_the_check_looks_for() {
    // The check above would see AVX-512 and AMX code: the zen4 module has
    // the one, the AMX module (built by llama.cpp, never loaded) the other.
    assert!(!instructions(&module("zen4"), &["%zmm"]).is_empty());
    assert!(!instructions(&module("sapphirerapids"), AMX).is_empty());
}
