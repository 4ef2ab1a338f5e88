//! The model-call trail: every model request (and every batch of rows served
//! from the answer cache) is appended as one JSON line to a file of the
//! process in `trail_dir`. The scheduler reads the folder as the table
//! `system.model_calls`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// One model request, or one batch of rows answered from the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCall {
    /// When the request ended, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The query that made it.
    pub query_id: String,
    /// The SQL function.
    pub function: String,
    /// The model's id.
    pub model: String,
    /// `local` or `openai`.
    pub backend: String,
    /// Rows the request answered.
    pub rows: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Wall time in milliseconds.
    pub latency_ms: f64,
    /// Whether the rows came from the answer cache (no request made).
    pub cache_hit: bool,
    /// `ok`, `retried` (first answer unusable), or the error.
    pub outcome: String,
    /// The process that made it (`host:pid`).
    pub process: String,
    /// The model process that computed the answer (`host:pid` of its
    /// worker); empty for endpoints and cache hits.
    #[serde(default)]
    pub served_by: String,
    /// Whether the answer was computed for an identical request of another
    /// process (or moments before) and cost the model nothing here.
    #[serde(default)]
    pub shared: bool,
    /// For a closed answer (a filter's, a classifier's): the probability the
    /// model gave the answer chosen.
    #[serde(default)]
    pub confidence: Option<f64>,
}

impl ModelCall {
    /// A record stamped now by this process.
    pub fn now(query_id: &str, function: &str, model: &str, backend: &str) -> Self {
        Self {
            time_ms: now_ms(),
            query_id: query_id.to_string(),
            function: function.to_string(),
            model: model.to_string(),
            backend: backend.to_string(),
            rows: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: 0.0,
            cache_hit: false,
            outcome: "ok".into(),
            process: process_name().to_string(),
            served_by: String::new(),
            shared: false,
            confidence: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// This host's name (`localhost` when it has none).
pub fn host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if host.is_empty() { "localhost".into() } else { host }
    })
}

/// This process, as `host:pid`.
pub fn process_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("{}:{}", host_name(), std::process::id()))
}

type Writers = Mutex<Vec<(PathBuf, Arc<Mutex<std::fs::File>>)>>;

/// Appends a record to this process's trail file in `dir`. Failures are
/// logged: the trail never fails a query.
pub fn record(dir: &str, call: &ModelCall) {
    append(Path::new(dir), call)
}

/// Appends one JSON line to this process's file in `dir`. Failures are
/// logged: the trail never fails a query.
pub fn append<T: Serialize>(dir: &Path, value: &T) {
    static WRITERS: OnceLock<Writers> = OnceLock::new();
    let file = {
        let mut writers = WRITERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        match writers.iter().find(|(d, _)| d == dir) {
            Some((_, f)) => f.clone(),
            None => {
                let opened = std::fs::create_dir_all(dir).and_then(|_| {
                    let name = format!("{}.jsonl", process_name().replace(':', "-"));
                    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name))
                });
                match opened {
                    Ok(f) => {
                        let f = Arc::new(Mutex::new(f));
                        writers.push((dir.to_path_buf(), f.clone()));
                        f
                    }
                    Err(e) => {
                        tracing::warn!("cannot open the model-call trail in {}: {e}", dir.display());
                        return;
                    }
                }
            }
        }
    };
    let mut line = match serde_json::to_vec(value) {
        Ok(l) => l,
        Err(_) => return,
    };
    line.push(b'\n');
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = f.write_all(&line) {
        tracing::warn!("cannot append to the model-call trail in {}: {e}", dir.display());
    }
}

/// Every model call recorded in `dir`, oldest first.
pub fn read_all(dir: &Path) -> Vec<ModelCall> {
    let mut calls: Vec<ModelCall> = read_lines(dir);
    calls.sort_by_key(|c| c.time_ms);
    calls
}

/// Every record of type `T` in the files of `dir`; unreadable lines are skipped.
pub fn read_lines<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect::<Vec<_>>())
        .collect()
}

/// The schema of `system.model_calls`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("query_id", DataType::Utf8, false),
        Field::new("function", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("backend", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("prompt_tokens", DataType::UInt64, false),
        Field::new("completion_tokens", DataType::UInt64, false),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("cache_hit", DataType::Boolean, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("process", DataType::Utf8, false),
        Field::new("served_by", DataType::Utf8, false),
        Field::new("shared", DataType::Boolean, false),
        Field::new("confidence", DataType::Float64, true),
    ]))
}

/// The records as one batch of [`schema`].
pub fn to_batch(calls: &[ModelCall]) -> datafusion::common::Result<RecordBatch> {
    let text = |f: fn(&ModelCall) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(calls.iter().map(f))) };
    let count = |f: fn(&ModelCall) -> u64| -> ArrayRef { Arc::new(UInt64Array::from_iter_values(calls.iter().map(f))) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(calls.iter().map(|c| c.time_ms)).with_timezone("UTC")),
        text(|c| &c.query_id),
        text(|c| &c.function),
        text(|c| &c.model),
        text(|c| &c.backend),
        count(|c| c.rows),
        count(|c| c.prompt_tokens),
        count(|c| c.completion_tokens),
        Arc::new(Float64Array::from_iter_values(calls.iter().map(|c| c.latency_ms))),
        Arc::new(BooleanArray::from_iter(calls.iter().map(|c| Some(c.cache_hit)))),
        text(|c| &c.outcome),
        text(|c| &c.process),
        text(|c| &c.served_by),
        Arc::new(BooleanArray::from_iter(calls.iter().map(|c| Some(c.shared)))),
        Arc::new(Float64Array::from_iter(calls.iter().map(|c| c.confidence))),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}
