//! The NL task trail: one JSON line per compiled `nl_*` call, in
//! `<trail_dir>/nl_tasks/`, read by the scheduler as `system.nl_tasks`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use lakelink_model::trail;

/// One compiled (or failed) `nl_*` call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NlTask {
    /// When it ended, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The query that asked.
    pub query_id: String,
    /// `nl_query`, `nl_sql` or `nl_filter`.
    pub function: String,
    /// The user's words.
    pub question: String,
    /// The model that answered (the ensemble's models when none did).
    pub model: String,
    /// `pipeline` or `plain`.
    pub strategy: String,
    /// Tables retrieval put into the prompt, comma-separated.
    pub retrieved_tables: String,
    /// Failed attempts as a JSON array of `{"sql", "error"}`.
    pub attempts: String,
    /// The SQL it compiled to (the last SQL tried when it failed).
    pub sql: String,
    /// `ok` or `failed`.
    pub outcome: String,
    /// Whether the SQL came from the cache.
    pub cache_hit: bool,
    /// Model requests made.
    pub model_calls: u64,
    /// Time spent in the model, milliseconds.
    pub model_ms: f64,
    /// Time from the start of compilation to the checked SQL, milliseconds.
    pub total_ms: f64,
    /// The process (`host:pid`).
    pub process: String,
}

fn dir(trail_dir: &str) -> PathBuf {
    Path::new(trail_dir).join("nl_tasks")
}

/// Appends a task to the trail folder `options` name.
pub fn record(options: &lakelink_model::LlmOptions, task: &NlTask) {
    trail::append(&dir(&options.trail_dir), options.trail_max_bytes, task);
}

/// Every task in the trail, oldest first.
pub fn read_all(trail_dir: &str) -> Vec<NlTask> {
    let mut tasks: Vec<NlTask> = trail::read_lines(&dir(trail_dir));
    tasks.sort_by_key(|t| t.time_ms);
    tasks
}

/// The schema of `system.nl_tasks`.
pub fn schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        text("query_id"),
        text("function"),
        text("question"),
        text("model"),
        text("strategy"),
        text("retrieved_tables"),
        text("attempts"),
        text("sql"),
        text("outcome"),
        Field::new("cache_hit", DataType::Boolean, false),
        Field::new("model_calls", DataType::UInt64, false),
        Field::new("model_ms", DataType::Float64, false),
        Field::new("total_ms", DataType::Float64, false),
        text("process"),
    ]))
}

/// The tasks as one batch of [`schema`].
pub fn to_batch(tasks: &[NlTask]) -> datafusion::common::Result<RecordBatch> {
    let text = |f: fn(&NlTask) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(tasks.iter().map(f))) };
    let float = |f: fn(&NlTask) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(tasks.iter().map(f))) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(tasks.iter().map(|t| t.time_ms)).with_timezone("UTC")),
        text(|t| &t.query_id),
        text(|t| &t.function),
        text(|t| &t.question),
        text(|t| &t.model),
        text(|t| &t.strategy),
        text(|t| &t.retrieved_tables),
        text(|t| &t.attempts),
        text(|t| &t.sql),
        text(|t| &t.outcome),
        Arc::new(BooleanArray::from_iter(tasks.iter().map(|t| Some(t.cache_hit)))),
        Arc::new(UInt64Array::from_iter_values(tasks.iter().map(|t| t.model_calls))),
        float(|t| t.model_ms),
        float(|t| t.total_ms),
        text(|t| &t.process),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}
