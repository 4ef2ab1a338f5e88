//! What the scheduler asks of every executor beyond Ballista's protocol, so
//! that no folder needs to be shared between hosts. Both are Flight actions
//! on the executor's data port, which admits only the cluster secret:
//!
//! * [`CANCEL_ACTION`] (body: a query id): stop the query's model calls on
//!   that host now (the calls in flight end, no new one starts);
//! * [`TRAIL_ACTION`] (body: a JSON scan,
//!   `{"since_ms":…,"needle":…,"skip_files":[…]}`): the model-call trail of
//!   the executor's host, as [`TrailChunk`]s, one JSON result each, leaving
//!   out the files the scheduler named (its own: an executor on its host
//!   sends nothing it has); the scheduler answers `system.model_calls` from
//!   its own trail and every executor's, each trail file counted once.

use serde::{Deserialize, Serialize};

/// Cancels a query's model calls on the executor's host.
pub const CANCEL_ACTION: &str = "lakelink.cancel_query";

/// Reads the model-call trail of the executor's host.
pub const TRAIL_ACTION: &str = "lakelink.trail";

/// The other way round, on the scheduler's cluster port: an executor asks
/// the cluster's ledger of model calls (body and result: JSON of
/// `lakelink_model::ledger::Request` and `Reply`).
pub const LEDGER_ACTION: &str = "lakelink.ledger";

/// Bytes of trail lines in one [`TrailChunk`], well inside a Flight message.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Lines of one trail file (all of them, or the next part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailChunk {
    /// The trail file's name (`HOST-PID-STARTMS.jsonl`): unique per process.
    pub file: String,
    /// Its lines (JSON records).
    pub lines: Vec<String>,
}

/// `files` (name, lines) cut into chunks of at most [`CHUNK_BYTES`] of lines
/// (a longer single line makes a chunk of its own).
pub fn chunks(files: Vec<(String, Vec<String>)>) -> Vec<TrailChunk> {
    let mut out = vec![];
    for (file, lines) in files {
        let mut chunk = TrailChunk { file: file.clone(), lines: vec![] };
        let mut bytes = 0;
        for line in lines {
            if bytes + line.len() > CHUNK_BYTES && !chunk.lines.is_empty() {
                out.push(std::mem::replace(&mut chunk, TrailChunk { file: file.clone(), lines: vec![] }));
                bytes = 0;
            }
            bytes += line.len();
            chunk.lines.push(line);
        }
        if !chunk.lines.is_empty() {
            out.push(chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_files_are_cut_at_line_boundaries() {
        let line = "x".repeat(CHUNK_BYTES / 3);
        let files = vec![("a.jsonl".to_string(), vec![line.clone(); 7]), ("b.jsonl".to_string(), vec![])];
        let chunks = chunks(files);
        assert_eq!(chunks.iter().map(|c| c.lines.len()).collect::<Vec<_>>(), vec![3, 3, 1]);
        assert!(chunks.iter().all(|c| c.file == "a.jsonl"));
    }
}
