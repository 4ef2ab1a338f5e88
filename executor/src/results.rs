//! A query's result served to the client by the executor that wrote it
//! (`lakelink-scheduler --result-endpoints executors`; README, "Result
//! endpoints"), and the rules a result message must meet to reach a client
//! as it lies, shared with the scheduler's relay (`lakelink_scheduler::result`).
//!
//! Once a job has ended, the scheduler asks the executor holding each result
//! file for a *grant* ([`GRANT_ACTION`], naming the file and the schema the
//! client was promised). The executor answers with a random token; the
//! scheduler hands the client one endpoint per file, at that executor, whose
//! ticket is [`TICKET_PREFIX`] and the token. A granted file is moved out of
//! its job's folder, so the scheduler can remove the job's other files at
//! once; a ticket is good for one read within [`GRANT_TTL`], and the file is
//! removed once it has been read to its end, or after its grant has expired
//! (at the executor's next grant or result ticket).
//!
//! The client gets the promised schema, then the file's batch messages as
//! they lie when every one of them meets [`forwardable`] and the file's
//! column types are the promised ones; otherwise (dictionaries, compressed
//! or oversized batches) the file is decoded, conformed and encoded again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::{FileReader, StreamReader};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

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

type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the scheduler asks a grant for.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantRequest {
    /// Ballista's `FetchPartition` action naming the file (protobuf, base64).
    pub fetch: String,
    /// The schema the client was promised (an IPC schema message, base64).
    pub schema: String,
}

/// Whether `file`'s columns have the types of `promised`.
pub fn same_types(file: &Schema, promised: &Schema) -> bool {
    file.fields().len() == promised.fields().len()
        && file.fields().iter().zip(promised.fields()).all(|(f, s)| f.data_type() == s.data_type())
}

/// Whether an IPC message (its flatbuffer `header` and a body of `body_len`
/// bytes) can go to a client as it is: an uncompressed record batch no bigger
/// than [`MAX_CLIENT_MESSAGE`].
pub fn forwardable(header: &[u8], body_len: usize) -> bool {
    if header.len() + body_len > MAX_CLIENT_MESSAGE {
        return false;
    }
    let Ok(message) = root_as_message(header) else { return false };
    message.header_type() == MessageHeader::RecordBatch
        && message.header_as_record_batch().is_some_and(|batch| batch.compression().is_none())
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
    schema: SchemaRef,
    expires: Instant,
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

    /// Grants one read of the file at `path` as `schema`, moving it into the
    /// grants' folder; the token.
    pub fn grant(&self, path: &Path, schema: SchemaRef) -> std::io::Result<String> {
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        std::fs::create_dir_all(&self.dir)?;
        let kept = self.dir.join(format!("{token}.arrow"));
        std::fs::rename(path, &kept)?;
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut granted);
        granted.insert(token.clone(), Grant { path: kept, schema, expires: Instant::now() + GRANT_TTL });
        Ok(token)
    }

    /// The file and schema of an unexpired grant, which is used up.
    pub fn take(&self, token: &str) -> Option<(PathBuf, SchemaRef)> {
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut granted);
        let grant = granted.remove(token)?;
        Some((grant.path, grant.schema))
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

/// Reads the header of the next IPC message of a stream (flatbuffer, with
/// padding) and says how long its body is. `None` at the end-of-stream marker
/// or the end of the file.
pub(crate) fn next_header(reader: &mut impl Read) -> std::io::Result<Option<(Bytes, u64)>> {
    let mut word = [0u8; 4];
    match reader.read_exact(&mut word) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if word == [0xff; 4] {
        reader.read_exact(&mut word)?;
    }
    let len = i32::from_le_bytes(word);
    if len <= 0 {
        return Ok(None);
    }
    let mut header = vec![0u8; len as usize];
    reader.read_exact(&mut header)?;
    let message = root_as_message(&header).map_err(|e| std::io::Error::other(format!("not an IPC message: {e}")))?;
    let body_len = message.bodyLength().max(0) as u64;
    Ok(Some((Bytes::from(header), body_len)))
}

/// Sends the messages of the IPC stream file at `path` to `tx` as Flight
/// data, as they lie in the file (its first, the schema, left out when
/// `skip_schema`); `Ok(false)` when the reader went away. Blocks.
pub(crate) fn send_messages(
    path: &Path,
    skip_schema: bool,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> std::io::Result<bool> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut skip = skip_schema;
    while let Some((header, body_len)) = next_header(&mut reader)? {
        let mut body = vec![0u8; body_len as usize];
        reader.read_exact(&mut body)?;
        if std::mem::take(&mut skip) {
            continue;
        }
        let data = FlightData { data_header: header, data_body: Bytes::from(body), ..Default::default() };
        if tx.blocking_send(Ok(data)).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the file at `path` is an IPC stream (not the IPC file format).
pub(crate) fn is_stream_file(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 6];
    let mut file = File::open(path)?;
    Ok(file.read_exact(&mut magic).is_err() || &magic != b"ARROW1")
}

/// Whether the file at `path` can go to a client message by message as
/// `promised`: a stream whose schema has the promised types and whose every
/// other message meets [`forwardable`] (reads the headers only).
fn sendable_as_is(path: &Path, promised: &Schema) -> std::io::Result<bool> {
    if !is_stream_file(path)? {
        return Ok(false);
    }
    let mut reader = BufReader::new(File::open(path)?);
    let Some((header, body_len)) = next_header(&mut reader)? else { return Ok(false) };
    let message = root_as_message(&header).map_err(|e| std::io::Error::other(e.to_string()))?;
    let Some(schema) = message.header_as_schema() else { return Ok(false) };
    if !same_types(&datafusion::arrow::ipc::convert::fb_to_schema(schema), promised) {
        return Ok(false);
    }
    reader.seek_relative(body_len as i64)?;
    while let Some((header, body_len)) = next_header(&mut reader)? {
        if !forwardable(&header, body_len as usize) {
            return Ok(false);
        }
        reader.seek_relative(body_len as i64)?;
    }
    Ok(true)
}

/// Streams the result file at `path` to a client as `schema`, then removes it.
pub fn serve(path: PathBuf, schema: SchemaRef) -> BoxedStream<FlightData> {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
    tokio::spawn(async move {
        let failed =
            |e: &dyn std::fmt::Display| Status::internal(format!("cannot read result file {}: {e}", path.display()));
        let as_is = {
            let (path, schema) = (path.clone(), schema.clone());
            tokio::task::spawn_blocking(move || sendable_as_is(&path, &schema)).await
        };
        let sent = match as_is {
            Ok(Ok(true)) => send_as_is(path.clone(), &schema, &tx).await,
            Ok(Ok(false)) => send_encoded(path.clone(), &schema, &tx).await,
            Ok(Err(e)) => Err(failed(&e)),
            Err(e) => Err(failed(&e)),
        };
        match sent {
            Ok(true) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!("cannot remove the result file {} after it was read: {e}", path.display());
                }
            }
            Ok(false) => {} // the client went away
            Err(status) => {
                let _ = tx.send(Err(status)).await;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Sends the promised schema, then the file's batch messages as they lie;
/// `Ok(false)` when the client went away.
async fn send_as_is(
    path: PathBuf,
    schema: &Schema,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> Result<bool, Status> {
    if tx.send(Ok(schema_message(schema))).await.is_err() {
        return Ok(false);
    }
    let tx = tx.clone();
    // The file's own schema is left out: the promised one was sent.
    let read = tokio::task::spawn_blocking(move || send_messages(&path, true, &tx));
    match read.await {
        Ok(result) => result.map_err(|e| Status::internal(format!("cannot read result file: {e}"))),
        Err(e) => Err(Status::internal(format!("cannot read result file: {e}"))),
    }
}

/// Decodes the file, conforms every batch to `schema` and encodes it again;
/// `Ok(false)` when the client went away.
async fn send_encoded(
    path: PathBuf,
    schema: &SchemaRef,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> Result<bool, Status> {
    let (batch_tx, batch_rx) = mpsc::channel::<Result<RecordBatch, FlightError>>(2);
    let promised = schema.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let batches: Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>> = match is_stream_file(&path) {
            Ok(true) => {
                match File::open(&path).map_err(ArrowError::from).and_then(|f| StreamReader::try_new_buffered(f, None))
                {
                    Ok(reader) => Box::new(reader),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            }
            Ok(false) => {
                match File::open(&path).map_err(ArrowError::from).and_then(|f| FileReader::try_new_buffered(f, None)) {
                    Ok(reader) => Box::new(reader),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            }
            Err(e) => Box::new(std::iter::once(Err(ArrowError::from(e)))),
        };
        for batch in batches {
            let batch = batch.and_then(|b| conform(b, &promised)).map_err(FlightError::Arrow);
            if batch_tx.blocking_send(batch).is_err() {
                return;
            }
        }
    });
    let mut encoded = FlightDataEncoderBuilder::new().with_schema(schema.clone()).build(ReceiverStream::new(batch_rx));
    while let Some(data) = encoded.next().await {
        let data = data.map_err(|e| Status::internal(format!("cannot read result file: {e}")))?;
        if tx.send(Ok(data)).await.is_err() {
            return Ok(false);
        }
    }
    reader.await.map_err(|e| Status::internal(format!("cannot read result file: {e}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::decode::FlightRecordBatchStream;
    use datafusion::arrow::array::{Array, DictionaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
    use datafusion::arrow::ipc::writer::StreamWriter;
    use futures::TryStreamExt;

    fn write(path: &Path, batches: &[RecordBatch]) {
        let mut writer = StreamWriter::try_new(File::create(path).unwrap(), &batches[0].schema()).unwrap();
        for b in batches {
            writer.write(b).unwrap();
        }
        writer.finish().unwrap();
    }

    async fn read(path: PathBuf, schema: SchemaRef) -> Vec<RecordBatch> {
        let data: Vec<FlightData> = serve(path, schema).try_collect().await.unwrap();
        FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(data.into_iter().map(Ok)))
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_file_of_promised_types_is_sent_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.arrow");
        let file_schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(file_schema, vec![Arc::new(Int64Array::from_iter_values(0..1000))]).unwrap();
        write(&path, &[batch.clone(), batch.slice(0, 10)]);
        let promised = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        assert!(sendable_as_is(&path, &promised).unwrap());
        let got = read(path.clone(), promised.clone()).await;
        assert_eq!(got.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![1000, 10]);
        assert_eq!(got[0].schema(), promised);
        assert!(!path.exists(), "the result file stays after it was read");
    }

    #[tokio::test]
    async fn dictionaries_are_sent_as_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.arrow");
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let file_schema = Arc::new(Schema::new(vec![Field::new("d", dict.data_type().clone(), true)]));
        write(&path, &[RecordBatch::try_new(file_schema, vec![Arc::new(dict)]).unwrap()]);
        let promised = Arc::new(Schema::new(vec![Field::new("d", DataType::Utf8, true)]));
        assert!(!sendable_as_is(&path, &promised).unwrap());
        let got = read(path, promised).await;
        let values = got[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(values.iter().flatten().collect::<Vec<_>>(), vec!["a", "b", "a"]);
    }

    #[test]
    fn a_granted_file_leaves_its_job_folder_and_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let job_file = dir.path().join("job-1").join("data.arrow");
        std::fs::create_dir_all(job_file.parent().unwrap()).unwrap();
        std::fs::write(&job_file, b"x").unwrap();
        let grants = Grants::new(dir.path().join("results"));
        let token = grants.grant(&job_file, Arc::new(Schema::empty())).unwrap();
        assert!(!job_file.exists(), "the granted file is still in its job's folder");
        assert!(grants.take("not-a-token").is_none());
        let (kept, _) = grants.take(&token).unwrap();
        assert!(kept.starts_with(dir.path().join("results")) && kept.exists());
        assert!(grants.take(&token).is_none());
        // A new process starts with no leftovers.
        Grants::new(dir.path().join("results"));
        assert!(!kept.exists());
    }
}
