//! LakeLink's model layer: traits for generative models and embedders, the
//! `local` backend (llama.cpp / candle, run by the host's model process) and
//! the `openai` backend, settings, the answer cache, the trail, and the
//! engine that spends model calls for the `llm_*` functions.
#![warn(missing_docs)]

/// The answer cache on disk.
pub mod cache;
/// Model settings: process defaults and the session options `lakelink.llm.*`.
pub mod config;
/// The CPU this build requires, checked at start, and the llama.cpp CPU
/// kernels the model process loads.
pub mod cpu;
// The kernel modules' table, shared with build.rs.
/// How the `llm_*` functions spend model calls: dedupe, cache, budgets, trail.
pub mod engine;
/// The models of this process, loaded once per configuration.
pub mod hub;
mod kernels;
/// One query's model calls across the cluster: who asks what, and the budget.
pub mod ledger;
/// The local runtimes (llama.cpp, candle); run by the model process.
pub mod local;
/// The model traits.
pub mod model;
/// The OpenAI-compatible backend.
pub mod openai;
/// The host's model process: supervisor, worker and client.
pub mod process;
/// Prompts of the `llm_*` functions and the strict reading of their answers.
pub mod prompt;
/// The model-call trail behind `system.model_calls`.
pub mod trail;

pub use config::LlmOptions;
