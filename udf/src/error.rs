//! Why an `llm_*` function call is refused or cannot run, one variant per
//! cause. Carried through DataFusion as `DataFusionError::External` and
//! matched by type at the Flight SQL edge.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DataFusionError;

/// Everything the SQL extension refuses.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The wrong number of arguments.
    #[error("{function} takes {expected} text arguments, got {got}")]
    ArgumentCount {
        /// The function.
        function: String,
        /// How many it takes, in words (`2`, `at least 3`).
        expected: String,
        /// How many it was given.
        got: usize,
    },
    /// An argument of the wrong type: not text (or a value shown as text),
    /// or not a list of texts where one is expected.
    #[error("{function}: argument {position} must be {expected}, not {found}")]
    ArgumentType {
        /// The function.
        function: String,
        /// 1-based.
        position: usize,
        /// What it must be: `text` or `a list of texts`.
        expected: &'static str,
        /// Its type.
        found: DataType,
    },
    /// An instruction or label given as a column.
    #[error("{function}: argument {position} must be a constant string, not a column")]
    NotConstant {
        /// The function.
        function: String,
        /// 1-based.
        position: usize,
    },
    /// A constant argument that is empty, NULL or not a string.
    #[error("{function}: the {what} {problem}")]
    BadConstant {
        /// The function.
        function: String,
        /// Which argument (`condition`, `label`).
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A label given twice.
    #[error("llm_classify: the label '{0}' is given twice")]
    DuplicateLabel(String),
    /// `llm_summarize(DISTINCT ...)`.
    #[error("llm_summarize(DISTINCT ...) is not supported")]
    DistinctSummary,
    /// A plan whose function state cannot be read (another version wrote it).
    #[error("cannot read the state of {kind} function '{name}' from the plan: {reason}")]
    State {
        /// `scalar` or `aggregate`.
        kind: String,
        /// The function.
        name: String,
        /// Why.
        reason: String,
    },
}

impl From<FunctionError> for DataFusionError {
    fn from(e: FunctionError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}
