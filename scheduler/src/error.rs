use datafusion::common::{DataFusionError, SchemaError};
use tonic::Status;

/// Everything that can go wrong in the scheduler, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The `--lake` argument does not name a usable lake.
    #[error("cannot open lake '{lake}': {reason}")]
    UnsupportedLake {
        /// What the user gave.
        lake: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The configuration is contradictory or incomplete.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server could not bind its port.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Ballista's scheduler failed to start or stopped.
    #[error("scheduler failed: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
    /// The server stopped with an I/O error.
    #[error("server stopped: {0}")]
    Serve(std::io::Error),
    /// The query engine failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

/// Why a client's statement was refused, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// DDL, DML or `COPY`.
    #[error("LakeLink serves read-only queries: statements that create, change or delete data are refused")]
    ReadOnly,
    /// A statement that is not a query (`PREPARE`, transactions, `SET` of
    /// anything but a model setting).
    #[error(
        "statements such as PREPARE or transactions are not supported over Flight SQL; use a query \
         (SET and RESET accept model settings, lakelink.llm.<key>)"
    )]
    NotAQuery,
    /// Placeholders without values.
    #[error("the statement has {0} parameter placeholder(s) but no values were bound")]
    UnboundParameters(usize),
}

impl From<QueryError> for DataFusionError {
    fn from(e: QueryError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// The status of a typed error of LakeLink's crates inside `err`, if any.
fn typed_status(err: &DataFusionError) -> Option<Status> {
    let DataFusionError::External(inner) = err else { return None };
    if let Some(e) = inner.downcast_ref::<QueryError>() {
        return Some(Status::invalid_argument(e.to_string()));
    }
    if let Some(e) = inner.downcast_ref::<lakelink_nl::NlError>() {
        use lakelink_nl::NlError;
        return Some(match e {
            NlError::Model(m) => Status::unavailable(m.to_string()),
            NlError::Knowledge(_) => Status::failed_precondition(e.to_string()),
            NlError::NoValidSql { .. } | NlError::Refused { .. } | NlError::Call { .. } => {
                Status::invalid_argument(e.to_string())
            }
        });
    }
    if let Some(e) = inner.downcast_ref::<lakelink_udf::FunctionError>() {
        return Some(Status::invalid_argument(e.to_string()));
    }
    if let Some(e) = inner.downcast_ref::<lakelink_model::model::ModelError>() {
        return Some(Status::unavailable(e.to_string()));
    }
    None
}

/// Turns a query error into the gRPC status a Flight SQL client sees: what
/// the user got wrong is `InvalidArgument` or `NotFound`, with DataFusion's
/// own words and without its internal wrapping.
///
/// LakeLink's own errors are told by their type. Two causes can only be
/// told by their words: a task's error, which reaches the scheduler as the
/// Debug text Ballista made of it, and an unknown table, which DataFusion
/// reports as a planning message.
pub fn query_status(err: DataFusionError) -> Status {
    let err = err.find_root();
    if let Some(status) = typed_status(err) {
        return status;
    }
    let message = clean_message(err);
    if let Some(inner) = debug_wrapped_message(&message) {
        // A task's error that crossed Ballista as its Debug text; running
        // out of memory is told by DataFusion's words for it.
        if inner.contains("Failed to allocate additional") {
            return Status::resource_exhausted(format!(
                "{inner}: the statement needs more memory than an executor task's share of its memory pool \
                 (lakelink-executor --memory-pool)"
            ));
        }
        return Status::aborted(inner);
    }
    match err {
        DataFusionError::SQL(parser_error, _) => {
            use datafusion::sql::sqlparser::parser::ParserError;
            let detail = match parser_error.as_ref() {
                ParserError::ParserError(s) | ParserError::TokenizerError(s) => s.clone(),
                other => other.to_string(),
            };
            Status::invalid_argument(format!("SQL syntax error: {detail}"))
        }
        DataFusionError::SchemaError(e, _) if matches!(e.as_ref(), SchemaError::FieldNotFound { .. }) => {
            Status::not_found(message)
        }
        DataFusionError::Plan(m) if m.contains("not found") => Status::not_found(message),
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => Status::invalid_argument(message),
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        DataFusionError::Configuration(_) => Status::invalid_argument(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(format!(
            "{message}: the statement needs more memory than a statement run in the scheduler may hold \
             (lakelink-scheduler --query-memory)"
        )),
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) | DataFusionError::ParquetError(..) => {
            Status::aborted(message)
        }
        _ => Status::internal(message),
    }
}

/// DataFusion's message without the backtrace and the "Error during planning:"
/// style prefixes repeated by each layer the error crossed.
fn clean_message(err: &DataFusionError) -> String {
    let text = err.strip_backtrace();
    let mut text = text.as_str();
    for prefix in [
        "Error during planning: ",
        "Execution error: ",
        "External error: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Invalid or Unsupported Configuration: ",
    ] {
        while let Some(rest) = text.strip_prefix(prefix) {
            text = rest;
        }
    }
    text.trim().to_string()
}

/// The message inside a Debug-printed error chain such as
/// `... DataFusionError(Shared(External(DataFusionError(Execution("the message")))))`,
/// which is how a task's failure reaches the scheduler.
fn debug_wrapped_message(text: &str) -> Option<String> {
    const KINDS: &[&str] = &["Execution", "Plan", "Internal", "Configuration", "ResourcesExhausted", "NotImplemented"];
    let start = KINDS.iter().filter_map(|k| text.rfind(&format!("{k}(\"")).map(|i| i + k.len() + 2)).max()?;
    let mut out = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            '"' => {
                let job = text.strip_prefix("Job ").and_then(|rest| rest.split_whitespace().next());
                return Some(match job {
                    Some(id) => format!("{out} (job {id})"),
                    None => out,
                });
            }
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_errors_lose_their_debug_wrapping() {
        let text = r#"Job 0A failed: Job failed due to stage 0 failed: Task failed due to runtime execution error: DataFusionError(Shared(External(DataFusionError(Execution("llm_filter: model \"m\" failed: HTTP 500")))))"#;
        let status = query_status(DataFusionError::Execution(text.into()));
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert!(status.message().starts_with("llm_filter: model \"m\" failed: HTTP 500"), "{}", status.message());
        assert!(!status.message().contains("Shared("), "{}", status.message());
    }

    #[test]
    fn unknown_table_is_not_found_and_names_the_table() {
        let status = query_status(DataFusionError::Plan("table 'lakelink.public.nope' not found".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("nope"));
        assert!(!status.message().contains("Error during planning"));
    }

    #[test]
    fn syntax_errors_read_plainly() {
        use datafusion::sql::sqlparser::parser::ParserError;
        let err = DataFusionError::SQL(
            Box::new(ParserError::ParserError("Expected: an SQL statement, found: SELEC".into())),
            None,
        );
        let status = query_status(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "SQL syntax error: Expected: an SQL statement, found: SELEC");
    }

    #[test]
    fn nested_errors_report_the_root_cause() {
        let inner = DataFusionError::Plan("column 'x' not found".into());
        let outer = DataFusionError::Context("planning".into(), Box::new(inner));
        assert_eq!(query_status(outer).code(), tonic::Code::NotFound);
    }
}
