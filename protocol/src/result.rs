//! The contract of a query's result on its way to a client.
//!
//! Whether the scheduler relays a result or the executor that wrote it
//! serves it (`--result-endpoints executors`), both send the client the
//! schema it was promised, then each batch message: as it lies in the
//! result file when the file's column types are the promised ones and the
//! message is an uncompressed record batch of at most [`MAX_CLIENT_MESSAGE`]
//! ([`send_to_client`]); otherwise decoded, conformed ([`conform`]) and
//! encoded again.
//!
//! With executor endpoints, the scheduler asks the executor writing each
//! result partition for a *grant* ([`GRANT_ACTION`] with a [`GrantRequest`]);
//! the executor answers a random token, and the client's ticket is
//! [`TICKET_PREFIX`] followed by the token, good for one read within
//! [`GRANT_TTL`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
use tonic::Status;

use crate::follow::ResultPartition;

/// The largest message a client is sent as it lies. Flight clients accept at
/// least 4 MiB by default (gRPC's default; ADBC accepts 16 MiB); bigger
/// batches are encoded again in pieces of about 2 MiB, as the Flight encoder
/// splits them.
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024 * 1024;

/// The Flight action with which the scheduler asks for a grant; its body is
/// a JSON [`GrantRequest`], its answer the token.
pub const GRANT_ACTION: &str = "lakelink.grant_result";
/// The Flight action (cluster members only) that withdraws an unread grant
/// (its body the token) and removes its file.
pub const REVOKE_ACTION: &str = "lakelink.revoke_grant";

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
/// `messages` (its schema first, as an executor's follow read sends them), to
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
