//! The CPU a LakeLink build requires, checked when a binary starts.
//!
//! Builds target x86-64-v3 (`.cargo/config.toml`): AVX2, FMA, F16C, BMI1/2,
//! LZCNT and MOVBE, which every Intel CPU since Haswell (2013) and every AMD
//! CPU since Zen (2017) has. Nothing newer is compiled in, in particular no
//! AVX-512 and no AMX kernels in llama.cpp, so one build runs on every
//! machine of that baseline. A CPU below it gets this message instead of
//! an illegal-instruction crash.

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

#[cfg(test)]
mod tests {
    #[test]
    fn the_building_machine_runs_its_build() {
        assert_eq!(super::missing_features(), None);
    }
}
