//! A query's result served to the client by the executor that wrote it
//! (`lakelink-scheduler --result-endpoints executors`).
//!
//! Once every partition of a job's result stage is being written, the
//! scheduler asks the executor writing each one for a *grant*
//! ([`GRANT_ACTION`], naming the partition and the schema the client was
//! promised). The executor answers with a random token; the scheduler hands
//! the client one endpoint per partition, at that executor, whose ticket is
//! [`TICKET_PREFIX`] and the token. A granted file gets a second name outside
//! its job's folder, so removing the job's files leaves it; a ticket is good
//! for one read within [`GRANT_TTL`], the file is read as its task writes it
//! ([`crate::follow`]), and it is removed once read, or after its grant has
//! expired (looked for every [`SWEEP_EVERY`], and at each grant and result
//! ticket). The unread granted files an executor holds are capped
//! (`--max-unread-results`): past the cap it grants no more (the scheduler
//! then passes the statement's result through itself), until clients read
//! theirs or their grants expire. What the client is sent follows the contract of
//! [`lakelink_protocol::result`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::FlightData;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::follow::{Finish, TaskKey};
pub use lakelink_protocol::result::{
    BoxedStream, GRANT_ACTION, GRANT_TTL, GrantRequest, MAX_CLIENT_MESSAGE, REVOKE_ACTION, Sent, TICKET_PREFIX,
    conform, schema_message, send_to_client,
};

struct Grant {
    path: PathBuf,
    task: TaskKey,
    schema: SchemaRef,
    expires: Instant,
}

/// A granted result: the file, the task writing it and the promised schema.
pub struct Granted {
    /// The file's name among the grants.
    pub path: PathBuf,
    /// The task writing it.
    pub task: TaskKey,
    /// The schema the client was promised.
    pub schema: SchemaRef,
}

/// The result files this executor may serve to clients, by token, kept in
/// a folder of their own.
#[derive(Clone)]
pub struct Grants {
    dir: PathBuf,
    granted: Arc<Mutex<HashMap<String, Grant>>>,
    max_unread: u64,
}

/// How often expired grants are looked for (and their files removed).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Why a grant was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The unread results held here reached the cap.
    #[error(
        "this executor holds {held} of unread results, its cap (--max-unread-results) is {cap}: \
         read the results already asked for, or run the statement again once they expire"
    )]
    Full {
        /// What the unread files take now.
        held: String,
        /// The cap.
        cap: String,
    },
    /// The file could not be given its second name.
    #[error("cannot keep the result file for its client: {0}")]
    Io(#[from] std::io::Error),
}

impl Grants {
    /// Grants kept in `dir`, at most `max_unread` bytes of them unread
    /// (0: no cap); files left there by an earlier process are removed.
    pub fn new(dir: PathBuf, max_unread: u64) -> Self {
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!("cannot remove the unread results in {}: {e}", dir.display());
        }
        Self { dir, granted: Arc::default(), max_unread }
    }

    /// Removes the files of expired grants every [`SWEEP_EVERY`] while the
    /// grants are in use.
    pub fn sweep_in_background(&self) {
        let granted = Arc::downgrade(&self.granted);
        // Bare on purpose: the sweep ends by itself once the service (the last holder of the grants) is gone.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(granted) = granted.upgrade() else { return };
                expire(&mut granted.lock().unwrap_or_else(|e| e.into_inner()));
            }
        });
    }

    /// The bytes the unread granted files of jobs other than `job` take now.
    fn held_by_others(granted: &HashMap<String, Grant>, job: &str) -> u64 {
        granted
            .values()
            .filter(|g| g.task.job_id != job)
            .filter_map(|g| std::fs::metadata(&g.path).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Grants one read of the file at `path`, written by `task`, as
    /// `schema`: the file gets a second name in the grants' folder (its task
    /// may still be writing it, through the first); the token.
    ///
    /// The cap is checked against the unread files of *other* jobs: a
    /// statement whose first partitions were granted here gets the rest too
    /// (its files grow while the scheduler asks for them one by one, and
    /// refusing it halfway would throw away the grants it holds).
    pub fn grant(&self, path: &Path, task: TaskKey, schema: SchemaRef) -> Result<String, GrantError> {
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut granted);
        let held = Self::held_by_others(&granted, &task.job_id);
        if self.max_unread > 0 && held >= self.max_unread {
            use lakelink_protocol::limits::show_bytes;
            return Err(GrantError::Full { held: show_bytes(held), cap: show_bytes(self.max_unread) });
        }
        std::fs::create_dir_all(&self.dir)?;
        let kept = self.dir.join(format!("{token}.arrow"));
        std::fs::hard_link(path, &kept)?;
        granted.insert(token.clone(), Grant { path: kept, task, schema, expires: Instant::now() + GRANT_TTL });
        Ok(token)
    }

    /// Withdraws the grant `token`, unread, and removes its file; whether
    /// there was one.
    pub fn revoke(&self, token: &str) -> bool {
        let grant = self.granted.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
        grant.map(|g| std::fs::remove_file(&g.path)).is_some()
    }

    /// An unexpired grant, which is used up.
    pub fn take(&self, token: &str) -> Option<Granted> {
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut granted);
        let grant = granted.remove(token)?;
        Some(Granted { path: grant.path, task: grant.task, schema: grant.schema })
    }
}

/// Forgets expired grants and removes their files.
fn expire(granted: &mut HashMap<String, Grant>) {
    let now = Instant::now();
    granted.retain(|_, g| {
        let live = g.expires > now;
        if !live {
            let _ = std::fs::remove_file(&g.path);
        }
        live
    });
}

/// Streams a granted result file to a client: the promised schema, then
/// the file's batches as its task writes them; the file is removed once the
/// read ends, whichever way (the ticket is used up).
pub fn serve(granted: Granted) -> BoxedStream<FlightData> {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
    // Bare on purpose: the read ends when the client goes away (its channel closes) or at the file's end.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        let Granted { path, task, schema } = granted;
        if tx.send(Ok(schema_message(&schema))).await.is_ok() {
            let messages = crate::follow::follow(path.clone(), task, Finish::TaskSucceeded);
            if let Err(status) = send_to_client(messages, &schema, &tx, &mut Sent::default()).await {
                let _ = tx.send(Err(status)).await;
            }
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!("cannot remove the result file {} after it was read: {e}", path.display());
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use arrow_flight::decode::FlightRecordBatchStream;
    use arrow_flight::error::FlightError;
    use datafusion::arrow::array::{Array, DictionaryArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use datafusion::arrow::ipc::writer::StreamWriter;
    use futures::{StreamExt, TryStreamExt};

    fn write(path: &Path, batches: &[RecordBatch]) {
        let mut writer = StreamWriter::try_new(File::create(path).unwrap(), &batches[0].schema()).unwrap();
        for b in batches {
            writer.write(b).unwrap();
        }
        writer.finish().unwrap();
    }

    /// A task this executor never ran: its finished files are read to their end.
    fn finished_task() -> TaskKey {
        TaskKey { work_dir: "nowhere".into(), job_id: "job".into(), stage_id: 1, task_id: 0 }
    }

    /// What a client reads of a granted file, and what was passed on as written.
    async fn read(path: PathBuf, schema: SchemaRef) -> (Vec<RecordBatch>, Sent) {
        let mut sent = Sent::default();
        let (tx, rx) = mpsc::channel(64);
        let messages = crate::follow::follow(path.clone(), finished_task(), Finish::TaskSucceeded);
        assert!(send_to_client(messages, &schema, &tx, &mut sent).await.unwrap());
        drop(tx);
        let header = schema_message(&schema);
        let data = futures::stream::once(async move { Ok(header) }).chain(ReceiverStream::new(rx));
        let batches = FlightRecordBatchStream::new_from_flight_data(data.map_err(|e| FlightError::Tonic(Box::new(e))))
            .try_collect()
            .await
            .unwrap();
        (batches, sent)
    }

    #[tokio::test]
    async fn batches_of_the_promised_types_are_sent_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.arrow");
        let file_schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(file_schema, vec![Arc::new(Int64Array::from_iter_values(0..1000))]).unwrap();
        write(&path, &[batch.clone(), batch.slice(0, 10)]);
        let promised = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let (got, sent) = read(path.clone(), promised.clone()).await;
        assert_eq!(got.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![1000, 10]);
        assert_eq!(got[0].schema(), promised);
        assert_eq!((sent.passed_on, sent.re_encoded, sent.rows), (2, 0, 1010));
    }

    #[tokio::test]
    async fn dictionaries_are_sent_as_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.arrow");
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let file_schema = Arc::new(Schema::new(vec![Field::new("d", dict.data_type().clone(), true)]));
        write(&path, &[RecordBatch::try_new(file_schema, vec![Arc::new(dict)]).unwrap()]);
        let promised = Arc::new(Schema::new(vec![Field::new("d", DataType::Utf8, true)]));
        let (got, sent) = read(path, promised).await;
        let values = got[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(values.iter().flatten().collect::<Vec<_>>(), vec!["a", "b", "a"]);
        assert_eq!((sent.passed_on, sent.re_encoded, sent.rows), (0, 1, 3));
    }

    #[tokio::test]
    async fn a_granted_file_outlives_its_job_folder_is_read_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let job_file = dir.path().join("job-1").join("data.arrow");
        std::fs::create_dir_all(job_file.parent().unwrap()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        write(&job_file, &[batch]);
        let grants = Grants::new(dir.path().join("results"), 0);
        let token = grants.grant(&job_file, finished_task(), schema).unwrap();
        std::fs::remove_dir_all(job_file.parent().unwrap()).unwrap(); // the job's clean-up
        assert!(grants.take("not-a-token").is_none());
        let granted = grants.take(&token).unwrap();
        let kept = granted.path.clone();
        assert!(kept.starts_with(dir.path().join("results")) && kept.exists());
        assert!(grants.take(&token).is_none());
        let data: Vec<FlightData> = serve(granted).try_collect().await.unwrap();
        let rows: usize =
            FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(data.into_iter().map(Ok)))
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum();
        assert_eq!(rows, 3);
        assert!(!kept.exists(), "the result file stays after it was read");
        // A new process starts with no leftovers.
        std::fs::write(dir.path().join("results").join("left.arrow"), b"x").unwrap();
        Grants::new(dir.path().join("results"), 0);
        assert!(!dir.path().join("results").exists());
    }

    #[test]
    fn the_cap_admits_statements_not_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let partition = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            path
        };
        let task = |job: &str, task_id| TaskKey { job_id: job.into(), task_id, ..finished_task() };
        let grants = Grants::new(dir.path().join("results"), 500);
        // The job's first partition alone passes the cap; its others are still granted.
        let first = grants.grant(&partition("a0"), task("a", 0), schema.clone()).unwrap();
        let second = grants.grant(&partition("a1"), task("a", 1), schema.clone()).unwrap();
        // Another job is refused until the first one's files are read.
        let refused = grants.grant(&partition("b0"), task("b", 0), schema.clone()).unwrap_err();
        assert!(refused.to_string().contains("--max-unread-results"), "{refused}");
        assert!(grants.revoke(&second));
        std::fs::remove_file(grants.take(&first).unwrap().path).unwrap(); // as a read does
        grants.grant(&partition("b0"), task("b", 0), schema).unwrap();
    }
}
