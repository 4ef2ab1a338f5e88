//! The model-call trail: every model request (and every batch of rows served
//! from the answer cache) is appended as one JSON line to a file of the
//! process in `trail_dir`. The scheduler reads the folder as the table
//! `system.model_calls`.
//!
//! A process starts a new file (`HOST-PID-STARTMS.jsonl`) every
//! [`FILE_BYTES`](crate::trail::FILE_BYTES) (or quarter of the cap, if less); once the folder holds more than `trail_max_bytes`, its
//! oldest files are removed. A scan for recent calls (`time >= ...`) skips
//! the files last written before that time, and one for a query's calls
//! parses only the lines naming it ([`Scan`](crate::trail::Scan)).

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

/// The size at which a process starts a new trail file.
pub const FILE_BYTES: u64 = 16 << 20;

/// The file a process appends to in one folder.
struct TrailFile {
    file: std::fs::File,
    path: PathBuf,
    written: u64,
}

impl TrailFile {
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let name = format!("{}-{}.jsonl", process_name().replace(':', "-"), now_ms());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { file, path, written: 0 })
    }
}

type Writers = Mutex<Vec<(PathBuf, Arc<Mutex<TrailFile>>)>>;

/// Appends a record to this process's trail file in the folder `options`
/// name. Failures are logged: the trail never fails a query.
pub fn record(options: &crate::LlmOptions, call: &ModelCall) {
    append(Path::new(&options.trail_dir), options.trail_max_bytes, call)
}

/// Appends one JSON line to this process's file in `dir`, which keeps at
/// most `max_bytes` (0: no cap). Failures are logged: the trail never fails
/// a query.
pub fn append<T: Serialize>(dir: &Path, max_bytes: u64, value: &T) {
    static WRITERS: OnceLock<Writers> = OnceLock::new();
    let file = {
        let mut writers = WRITERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        match writers.iter().find(|(d, _)| d == dir) {
            Some((_, f)) => f.clone(),
            None => match TrailFile::open(dir) {
                Ok(f) => {
                    let f = Arc::new(Mutex::new(f));
                    writers.push((dir.to_path_buf(), f.clone()));
                    f
                }
                Err(e) => {
                    tracing::warn!("cannot open the model-call trail in {}: {e}", dir.display());
                    return;
                }
            },
        }
    };
    let mut line = match serde_json::to_vec(value) {
        Ok(l) => l,
        Err(_) => return,
    };
    line.push(b'\n');
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = f.file.write_all(&line) {
        tracing::warn!("cannot append to the model-call trail in {}: {e}", dir.display());
        return;
    }
    f.written += line.len() as u64;
    // Files of at most a quarter of the cap, so pruning keeps several.
    let file_bytes = if max_bytes == 0 { FILE_BYTES } else { FILE_BYTES.min((max_bytes / 4).max(1)) };
    if f.written >= file_bytes {
        match TrailFile::open(dir) {
            Ok(next) => {
                *f = next;
                prune(dir, max_bytes, &f.path);
            }
            Err(e) => tracing::warn!("cannot start a new model-call trail file in {}: {e}", dir.display()),
        }
    }
}

/// Removes the oldest trail files of `dir` (never `current`) while it holds
/// more than `max_bytes`; how many.
pub fn prune(dir: &Path, max_bytes: u64, current: &Path) -> usize {
    if max_bytes == 0 {
        return 0;
    }
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = trail_files(dir)
        .into_iter()
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), p)))
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut removed = 0;
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if path != current && std::fs::remove_file(&path).is_ok() {
            total -= len;
            removed += 1;
        }
    }
    removed
}

fn trail_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
}

/// What a scan of the trail needs: records from `since_ms` on (files last
/// written before are not opened), and only lines holding `needle` (others
/// are not parsed). Records outside either may still be returned: the
/// caller filters exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// The earliest time of a record wanted, milliseconds since the epoch.
    pub since_ms: Option<i64>,
    /// A string every wanted record's line holds.
    pub needle: Option<String>,
    /// Trail files the reader has already (by name): not read. The
    /// scheduler names its own when it asks executors on its host.
    #[serde(default)]
    pub skip_files: Vec<String>,
}

/// Every record of type `T` in the files of `dir`; unreadable lines are skipped.
pub fn read_lines<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    read_lines_of(dir, &Scan::default())
}

/// The records of type `T` in the files of `dir` that `scan` asks for.
pub fn read_lines_of<T: serde::de::DeserializeOwned>(dir: &Path, scan: &Scan) -> Vec<T> {
    read_files(dir, scan).iter().flat_map(|(_, lines)| parse_lines(lines)).collect()
}

/// The lines of the files of `dir` that `scan` asks for, by file name: what
/// an executor sends the scheduler of its host's trail.
pub fn read_files(dir: &Path, scan: &Scan) -> Vec<(String, Vec<String>)> {
    let since = scan.since_ms.map(|ms| UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64));
    trail_files(dir)
        .iter()
        .filter(|p| match since {
            // Written last before the time asked for: every record is older.
            Some(since) => std::fs::metadata(p).and_then(|m| m.modified()).map_or(true, |m| m >= since),
            None => true,
        })
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
        .filter(|(name, _)| !scan.skip_files.contains(name))
        .filter_map(|(name, p)| Some((name, std::fs::read_to_string(p).ok()?)))
        .map(|(name, text)| {
            let lines = text
                .lines()
                .filter(|l| !l.is_empty() && scan.needle.as_deref().is_none_or(|n| l.contains(n)))
                .map(str::to_string)
                .collect();
            (name, lines)
        })
        .collect()
}

/// The names of the trail files in `dir`.
pub fn file_names(dir: &Path) -> Vec<String> {
    trail_files(dir).iter().filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned())).collect()
}

/// The records of type `T` among `lines`; unreadable lines are skipped.
pub fn parse_lines<T: serde::de::DeserializeOwned>(lines: &[String]) -> Vec<T> {
    lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The model calls recorded in `dir` that `scan` asks for, oldest first.
    fn read_calls(dir: &Path, scan: &Scan) -> Vec<ModelCall> {
        let mut calls: Vec<ModelCall> = read_lines_of(dir, scan);
        calls.sort_by_key(|c| c.time_ms);
        calls
    }

    fn call(query_id: &str) -> ModelCall {
        ModelCall::now(query_id, "llm_filter", "m", "local")
    }

    #[test]
    fn files_rotate_the_oldest_go_and_scans_read_what_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let trail = dir.path().join("trail");
        // A cap of about eight lines: files of two, four of them kept.
        let line = serde_json::to_vec(&call("q-10")).unwrap().len() as u64 + 1;
        for i in 0..20 {
            append(&trail, 8 * line, &call(&format!("q-{i}")));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let kept = read_calls(&trail, &Scan::default());
        let total: u64 = trail_files(&trail).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert!(total <= 8 * line, "{total} bytes kept");
        assert!(kept.iter().any(|c| c.query_id == "q-19"), "the newest stays");
        assert!(!kept.iter().any(|c| c.query_id == "q-0"), "the oldest went");
        let needle = Scan { needle: Some("\"q-19\"".into()), ..Scan::default() };
        assert_eq!(read_calls(&trail, &needle).len(), 1);
        let future = Scan { since_ms: Some(now_ms() + 60_000), ..Scan::default() };
        assert!(read_calls(&trail, &future).is_empty(), "files written before the time asked for are skipped");
        let known = Scan { skip_files: file_names(&trail), ..Scan::default() };
        assert!(read_calls(&trail, &known).is_empty(), "files the reader has are not read");
    }
}
