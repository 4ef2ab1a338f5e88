//! llama.cpp's x86 CPU kernel modules LakeLink loads (`crate::cpu`), also
//! read by `build.rs`, which places exactly these next to the binaries.

/// The modules, best first (llama.cpp's own score order), each with
/// whether it needs [`AVX512`] and the instruction sets it uses beyond that
/// and x86-64-v3, by std's feature names. Not here:
/// `sapphirerapids` (AMX, which faults on some hypervisors) and the modules
/// below x86-64-v3, which a LakeLink build cannot use.
pub const KERNELS: &[(&str, bool, &[&str])] = &[
    ("zen4", true, &["avx512vbmi", "avx512vnni", "avx512bf16"]),
    ("cooperlake", true, &["avx512vnni", "avx512bf16"]),
    ("icelake", true, &["avx512vbmi", "avx512vnni"]),
    ("cascadelake", true, &["avx512vnni"]),
    ("cannonlake", true, &["avx512vbmi"]),
    ("skylakex", true, &[]),
    ("alderlake", false, &["avxvnni"]),
    ("haswell", false, &[]),
];

/// What llama.cpp's AVX-512 modules all use.
pub const AVX512: &[&str] = &["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"];
