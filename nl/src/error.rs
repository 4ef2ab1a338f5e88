//! Why a question or an `nl_*` call could not become SQL, one variant per
//! cause. Carried through DataFusion as `DataFusionError::External` and
//! matched by type at the Flight SQL edge.

use datafusion::common::DataFusionError;
use lakelink_model::model::ModelError;

/// Everything the NL compiler refuses or fails at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NlError {
    /// Every attempt produced SQL that did not parse, plan or pass the policy.
    #[error(
        "{function}('{question}') found no valid SQL after {attempts} attempt(s); last SQL: {last_sql}; reason: {reason}"
    )]
    NoValidSql {
        /// `nl_query`, `nl_filter` or `nl_sql`.
        function: String,
        /// The question as asked.
        question: String,
        /// Attempts made.
        attempts: usize,
        /// The last SQL tried, `(none)` when no attempt produced any.
        last_sql: String,
        /// Why the last attempt was refused.
        reason: String,
    },
    /// SQL that is not allowed: it writes, reads files or tables the caller
    /// may not read (`nl_accept`'s SQL, or an example).
    #[error("{reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// An `nl_*` call written wrongly (arguments, placement).
    #[error("{reason}")]
    Call {
        /// What is wrong, naming the function.
        reason: String,
    },
    /// The lake's knowledge (`_lakelink/catalog.toml`, examples) is unusable.
    #[error("{0}")]
    Knowledge(String),
    /// The model could not be reached or loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<NlError> for DataFusionError {
    fn from(e: NlError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}
