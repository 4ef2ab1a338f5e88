//! LakeLink's SQL extension.
//!
//! Every LakeLink node (the planning side, the scheduler and each executor)
//! calls into this crate so that a custom function is known everywhere a plan
//! can travel. [`Extensions`] is the set of functions; [`Extensions::register_all`]
//! wires it into a planning session, and the same set hands out the function
//! registry and the codecs that the scheduler and executors need.
#![warn(missing_docs)]

/// Logical and physical codecs that carry function state to executors.
pub mod codec;
/// Why a function call is refused or cannot run.
pub mod error;
/// The set of custom functions and the one place that registers them.
pub mod extensions;
/// The `llm_*` SQL functions.
pub mod functions;
/// Planning rules for the `llm_*` functions.
pub mod planner;

pub use codec::{LakeLinkLogicalCodec, LakeLinkPhysicalCodec};
pub use error::FunctionError;
pub use extensions::{Extensions, StatefulAggregateUDF, StatefulScalarUDF};
pub use lakelink_model::config::LlmOptions;
