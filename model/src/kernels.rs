//! llama.cpp's x86 CPU kernel modules LakeLink loads (`crate::cpu`), also
//! read by `build.rs`, which places exactly these next to the binaries.

/// The modules, best first (llama.cpp's own score order), each with the
/// instruction sets it uses beyond x86-64-v3, by std's feature names. Every
/// module but `alderlake` and `haswell` also needs [`AVX512`]. Not here:
/// `sapphirerapids` (AMX, which faults on some hypervisors) and the modules
/// below x86-64-v3, which a LakeLink build cannot use.
pub const KERNELS: &[(&str, &[&str])] = &[
    ("zen4", &["avx512vbmi", "avx512vnni", "avx512bf16"]),
    ("cooperlake", &["avx512vnni", "avx512bf16"]),
    ("icelake", &["avx512vbmi", "avx512vnni"]),
    ("cascadelake", &["avx512vnni"]),
    ("cannonlake", &["avx512vbmi"]),
    ("skylakex", &[]),
    ("alderlake", &["avxvnni"]),
    ("haswell", &[]),
];

/// What llama.cpp's AVX-512 modules all use.
pub const AVX512: &[&str] = &["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"];
