//! The CPU a LakeLink build requires, checked when a binary starts, and
//! the llama.cpp CPU kernels the model process loads.
//!
//! Builds target x86-64-v3 (`.cargo/config.toml`): AVX2, FMA, F16C, BMI1/2,
//! LZCNT and MOVBE, which every Intel CPU since Haswell (2013) and every AMD
//! CPU since Zen (2017) has. A CPU below it gets `missing_features`'s
//! message instead of an illegal-instruction crash.
//!
//! llama.cpp's CPU kernels are built once per CPU generation as loadable
//! modules (`libggml-cpu-haswell.so` ... `libggml-cpu-zen4.so`).
//! `load_kernels` loads the best one this CPU runs, decided by what the
//! CPU *and the operating system* enable: std's feature detection checks the
//! OS saves the AVX-512 registers (XCR0), which llama.cpp's own score does
//! not. The AMX module (`sapphirerapids`) is never loaded: its tile kernels
//! fault on hypervisors that report AMX yet do not let it run (an Intel
//! Xeon with AMX has every instruction set of the `zen4` module and gets
//! that one).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::kernels::{AVX512, KERNELS};

/// The instruction sets this build was compiled to use and this CPU lacks,
/// as a sentence; `None` when the CPU has them all.
pub fn missing_features() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut missing = Vec::new();
        macro_rules! need {
            ($($feature:tt),*) => {$(
                if cfg!(target_feature = $feature) && !std::arch::is_x86_feature_detected!($feature) {
                    missing.push($feature);
                }
            )*};
        }
        need!("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "movbe", "avx512f");
        if !missing.is_empty() {
            return Some(format!(
                "this build of LakeLink needs a CPU with {} (x86-64-v3: Intel Haswell or AMD Zen and later); \
                 this CPU lacks them: rebuild with another target-cpu in .cargo/config.toml",
                missing.join(", ")
            ));
        }
    }
    None
}

/// The environment variable that names the kernels to load (`haswell`,
/// `zen4`, ...) instead of the best; the operator's, for comparisons.
pub const KERNELS_ENV: &str = "LAKELINK_CPU_KERNELS";

/// The kernels the model process loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernels {
    /// The CPU generation they were built for, such as `zen4`.
    pub name: String,
    /// The module file.
    pub path: PathBuf,
}

/// The instruction sets module `name` needs, AVX-512's base included;
/// `None` for a module LakeLink does not load.
fn needs(name: &str) -> Option<Vec<&'static str>> {
    let (_, avx512, extra) = KERNELS.iter().find(|(n, _, _)| *n == name)?;
    Some(if *avx512 { AVX512.iter().chain(extra.iter()).copied().collect() } else { extra.to_vec() })
}

/// The modules this CPU runs, best first, given what it has (`has`: std's
/// feature name to detected).
fn runnable(has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    KERNELS
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| needs(name).is_some_and(|features| features.iter().all(|f| has(f))))
        .collect()
}

/// Whether this CPU and its OS enable `feature` (std's name).
fn detected(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($name:tt),*) => {
                match feature {
                    $($name => std::arch::is_x86_feature_detected!($name),)*
                    _ => false,
                }
            };
        }
        check!(
            "avx512f",
            "avx512cd",
            "avx512vl",
            "avx512dq",
            "avx512bw",
            "avx512vbmi",
            "avx512vnni",
            "avx512bf16",
            "avxvnni"
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// Where the kernel modules are: next to the running binary (an
/// installation copies them there), else where the build put them.
pub fn kernel_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        dirs.push(dir);
    }
    if let Some(dir) = llama_cpp_sys_2::BACKENDS_DIR {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

fn module_file(name: &str) -> String {
    format!("libggml-cpu-{name}.so")
}

/// Loads llama.cpp's best CPU kernels for this machine (or those named by
/// [`KERNELS_ENV`]), once per process; the error says what is missing.
pub fn load_kernels() -> Result<Kernels, String> {
    static LOADED: OnceLock<Result<Kernels, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let wanted = std::env::var(KERNELS_ENV).ok().filter(|v| !v.is_empty());
            let candidates = choose(wanted.as_deref(), detected)?;
            let dirs = kernel_dirs();
            let mut tried = Vec::new();
            for name in candidates {
                for dir in &dirs {
                    let path = dir.join(module_file(name));
                    if !path.is_file() {
                        continue;
                    }
                    if load_module(&path) {
                        return Ok(Kernels { name: name.to_string(), path });
                    }
                    tried.push(path.display().to_string());
                }
            }
            Err(if tried.is_empty() {
                format!(
                    "llama.cpp's CPU kernels (libggml-cpu-*.so) are not in {}: install them next to the LakeLink binaries",
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
                )
            } else {
                format!("llama.cpp refused the CPU kernels {}", tried.join(", "))
            })
        })
        .clone()
}

/// The modules to try, best first: those named by the operator, or every
/// one this CPU runs.
fn choose(wanted: Option<&str>, has: impl Fn(&str) -> bool) -> Result<Vec<&'static str>, String> {
    let runnable = runnable(&has);
    let Some(wanted) = wanted else {
        return Ok(runnable);
    };
    let Some(features) = needs(wanted) else {
        let known = KERNELS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>().join(", ");
        return Err(format!("{KERNELS_ENV}={wanted} is not one of LakeLink's CPU kernels: {known}"));
    };
    match runnable.iter().find(|n| **n == wanted) {
        Some(name) => Ok(vec![name]),
        None => {
            let lacking = features.into_iter().filter(|f| !has(f)).collect::<Vec<_>>().join(", ");
            Err(format!("{KERNELS_ENV}={wanted}: this CPU or its OS does not enable {lacking}"))
        }
    }
}

/// Loads and registers one kernel module; false if llama.cpp refuses it.
///
/// llama.cpp's safe loader takes a folder and loads the best module in it,
/// so the module is linked alone into a new private folder (a random name,
/// created 0700 or not at all), loaded from there, and the folder removed.
fn load_module(path: &Path) -> bool {
    use std::os::unix::fs::DirBuilderExt;
    let folder = std::env::temp_dir().join(format!("lakelink-kernels-{}", uuid::Uuid::new_v4().simple()));
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&folder) {
        tracing::warn!("cannot create {}: {e}", folder.display());
        return false;
    }
    let link = folder.join(path.file_name().unwrap_or_default());
    let linked = std::os::unix::fs::symlink(path, &link);
    if linked.is_ok() {
        llama_cpp_2::llama_backend::load_backends_from_path(&folder);
    }
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_dir(&folder);
    if let Err(e) = linked {
        tracing::warn!("cannot link {} into {}: {e}", path.display(), folder.display());
        return false;
    }
    llama_cpp_2::list_llama_ggml_backend_devices().iter().any(|d| d.backend == "CPU")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_building_machine_runs_its_build() {
        assert_eq!(super::missing_features(), None);
    }

    #[test]
    fn the_amx_kernels_are_never_chosen_even_on_a_cpu_reporting_amx() {
        let everything = |_: &str| true;
        let chosen = choose(None, everything).unwrap();
        assert_eq!(chosen.first(), Some(&"zen4"));
        assert!(!chosen.contains(&"sapphirerapids"));
        let err = choose(Some("sapphirerapids"), everything).unwrap_err();
        assert!(err.contains("not one of LakeLink's CPU kernels"), "{err}");
    }

    #[test]
    fn avx512_the_os_does_not_enable_falls_back_to_avx2_kernels() {
        // The CPU has AVX-512 but the OS does not save its registers: std
        // reports none of it, so only the AVX2 kernels remain.
        let no_avx512 = |f: &str| !f.starts_with("avx512");
        assert_eq!(choose(None, no_avx512).unwrap(), vec!["alderlake", "haswell"]);
        let err = choose(Some("zen4"), |f: &str| f != "avx512bf16").unwrap_err();
        assert!(err.ends_with("does not enable avx512bf16"), "{err}");
        assert_eq!(choose(Some("haswell"), no_avx512).unwrap(), vec!["haswell"]);
        assert_eq!(choose(None, |f: &str| AVX512.contains(&f)).unwrap(), vec!["skylakex", "haswell"]);
    }

    #[test]
    fn this_machine_loads_kernels_it_runs() {
        let kernels = load_kernels().unwrap();
        assert!(runnable(detected).contains(&kernels.name.as_str()), "{kernels:?}");
        assert!(kernels.path.is_file());
    }
}
