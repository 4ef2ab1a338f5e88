//! A query's result served to the client by the executor that wrote it
//! (`lakelink-scheduler --result-endpoints executors`; README, "Result
//! endpoints"), and the rules a result message must meet to reach a client
//! as it lies, shared with the scheduler's relay (`lakelink_scheduler::result`).
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
//! expired (at the executor's next grant or result ticket).
//!
//! The client gets the promised schema, then the file's batch messages
//! ([`send_to_client`]): as they lie when the file's column types are the
//! promised ones and a message is an uncompressed record batch of at most
//! [`MAX_CLIENT_MESSAGE`]; otherwise (dictionaries,
//! compressed or oversized batches) decoded, conformed and encoded again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, SchemaAsIpc};
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::root_as_message;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::follow::{Finish, ResultPartition, TaskKey};

/// The largest message a client is sent as it lies. Flight clients accept at
/// least 4 MiB by default (gRPC's default; ADBC accepts 16 MiB); bigger
/// batches are encoded again in pieces of about 2 MiB, as the Flight encoder
/// splits them.
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024 * 1024;

/// The Flight action with which the scheduler asks for a grant; its body is
/// a JSON [`GrantRequest`], its answer the token.
pub const GRANT_ACTION: &str = "lakelink.grant_result";

/// How a client's result ticket begins; the token follows.
pub const TICKET_PREFIX: &str = "lakelink-result:";

/// How long a grant waits for its client. An expired grant's file is removed
/// at the executor's next grant or result ticket.
pub const GRANT_TTL: Duration = Duration::from_secs(600);

/// A stream of Flight messages (or whatever else) that may fail with a gRPC status.
pub type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the scheduler asks a grant for.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantRequest {
    /// The result partition.
    pub partition: ResultPartition,
    /// The schema the client was promised (an IPC schema message, base64).
    pub schema: String,
}

/// Whether `file`'s columns have the types of `promised`.
fn same_types(file: &Schema, promised: &Schema) -> bool {
    file.fields().len() == promised.fields().len()
        && file.fields().iter().zip(promised.fields()).all(|(f, s)| f.data_type() == s.data_type())
}

/// The rows of an IPC message (its flatbuffer `header` and a body of
/// `body_len` bytes) that can go to a client as it is: an uncompressed record
/// batch no bigger than [`MAX_CLIENT_MESSAGE`]; `None` for any other.
fn forwardable_rows(header: &[u8], body_len: usize) -> Option<u64> {
    if header.len() + body_len > MAX_CLIENT_MESSAGE {
        return None;
    }
    let batch = root_as_message(header).ok()?.header_as_record_batch()?;
    batch.compression().is_none().then(|| batch.length().max(0) as u64)
}

/// `batch` with the promised `schema`: columns of another type (dictionaries,
/// string views) cast to the promised one; names and nullability relabelled.
pub fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    if batch.num_columns() != schema.fields().len() {
        return Err(ArrowError::SchemaError(format!(
            "result has {} columns but {} were announced",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns: Vec<ArrayRef> =
        batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast(column, field.data_type())
                }
            })
            .collect::<Result<_, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

/// The schema message a client reads first.
pub fn schema_message(schema: &Schema) -> FlightData {
    SchemaAsIpc::new(schema, &IpcWriteOptions::default()).into()
}

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
}

impl Grants {
    /// Grants kept in `dir`; files left there by an earlier process are removed.
    pub fn new(dir: PathBuf) -> Self {
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!("cannot remove the unread results in {}: {e}", dir.display());
        }
        Self { dir, granted: Arc::default() }
    }

    /// Grants one read of the file at `path`, written by `task`, as
    /// `schema`: the file gets a second name in the grants' folder (its task
    /// may still be writing it, through the first); the token.
    pub fn grant(&self, path: &Path, task: TaskKey, schema: SchemaRef) -> std::io::Result<String> {
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        std::fs::create_dir_all(&self.dir)?;
        let kept = self.dir.join(format!("{token}.arrow"));
        std::fs::hard_link(path, &kept)?;
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut granted);
        granted.insert(token.clone(), Grant { path: kept, task, schema, expires: Instant::now() + GRANT_TTL });
        Ok(token)
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

/// Batch messages of a result passed on as they were written, and encoded
/// anew.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// Sent as the executor wrote them.
    pub passed_on: usize,
    /// Decoded, conformed and encoded again.
    pub re_encoded: usize,
    /// The rows of all of them.
    pub rows: u64,
}

impl Sent {
    /// Batch messages sent, either way.
    pub fn messages(&self) -> usize {
        self.passed_on + self.re_encoded
    }
}

/// Sends the batches of one result file, read as the Flight messages
/// `messages` (its schema first, as [`crate::follow::follow`] reads them), to
/// `tx` in the `promised` schema: each batch message as it is when the file's
/// column types are the promised ones and the message is an uncompressed
/// batch of at most [`MAX_CLIENT_MESSAGE`];
/// otherwise decoded, conformed and encoded again (the whole file when its
/// types differ: dictionaries need the decoder's state). `Ok(false)` when the
/// client has gone away.
pub async fn send_to_client(
    mut messages: BoxedStream<FlightData>,
    promised: &SchemaRef,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
    sent: &mut Sent,
) -> Result<bool, Status> {
    let Some(first) = messages.next().await.transpose()? else {
        return Err(Status::internal("a result file without a schema"));
    };
    let file_schema = Arc::new(
        Schema::try_from(&first).map_err(|e| Status::internal(format!("a result file without a schema: {e}")))?,
    );
    if !same_types(&file_schema, promised) {
        let data =
            futures::stream::once(async { Ok(first) }).chain(messages.map_err(|e| FlightError::Tonic(Box::new(e))));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        while let Some(batch) = batches.try_next().await.map_err(Status::from)? {
            sent.re_encoded += 1;
            sent.rows += batch.num_rows() as u64;
            if !send_encoded(batch, promised, tx).await? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    while let Some(data) = messages.next().await.transpose()? {
        let delivered = if let Some(rows) = forwardable_rows(&data.data_header, data.data_body.len()) {
            sent.passed_on += 1;
            sent.rows += rows;
            tx.send(Ok(data)).await.is_ok()
        } else {
            sent.re_encoded += 1;
            let batch = arrow_flight::utils::flight_data_to_arrow_batch(&data, file_schema.clone(), &HashMap::new())
                .map_err(|e| Status::internal(format!("a result file holds a bad batch: {e}")))?;
            sent.rows += batch.num_rows() as u64;
            send_encoded(batch, promised, tx).await?
        };
        if !delivered {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Conforms `batch` to `schema`, encodes it (split into messages of about
/// 2 MiB) and sends it; `false` when the client has gone away.
async fn send_encoded(
    batch: RecordBatch,
    schema: &SchemaRef,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> Result<bool, Status> {
    let batch = conform(batch, schema).map_err(|e| Status::internal(format!("a result batch does not fit: {e}")))?;
    // The schema was sent once already.
    let mut encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .build(futures::stream::once(async { Ok(batch) }))
        .skip(1);
    while let Some(data) = encoded.next().await {
        if tx.send(Ok(data.map_err(Status::from)?)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Streams a granted result file to a client: the promised schema, then
/// the file's batches as its task writes them; the file is removed once the
/// read ends, whichever way (the ticket is used up).
pub fn serve(granted: Granted) -> BoxedStream<FlightData> {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
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
    use datafusion::arrow::array::{Array, DictionaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
    use datafusion::arrow::ipc::writer::StreamWriter;

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
        let grants = Grants::new(dir.path().join("results"));
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
        Grants::new(dir.path().join("results"));
        assert!(!dir.path().join("results").exists());
    }
}
