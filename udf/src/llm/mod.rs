//! The model layer: traits for generative models and embedders, the `local`
//! (llama.cpp / candle) and `openai` backends, settings, the answer cache,
//! the trail, and the engine that spends model calls for the `llm_*`
//! functions.

pub mod cache;
pub mod config;
pub mod engine;
pub mod hub;
pub mod local;
pub mod model;
pub mod openai;
pub mod prompt;
pub mod trail;
