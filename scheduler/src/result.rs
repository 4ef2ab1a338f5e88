//! A distributed query's result on its way to the client: each result file is
//! fetched from the executor that wrote it, in order, and its Arrow IPC
//! messages are passed on as they arrive, without decoding a batch and
//! encoding it again.
//!
//! Executors send a result file's messages as they lie in the file
//! (`lakelink_executor::flight`), and a result stage writes them
//! uncompressed (`lakelink_executor::stage`), so a batch message is already
//! what a Flight client reads. The client first gets the advertised schema;
//! then every batch message whose columns have the advertised types, that is
//! uncompressed and no bigger than [`lakelink_executor::results::MAX_CLIENT_MESSAGE`] goes on
//! unchanged. Any other batch (compressed, over the limit, or of a file whose
//! column types differ from the advertised ones, e.g. dictionaries) is decoded,
//! conformed to the advertised schema and encoded again (README, "Result
//! transfer", for what it saves). The rules are the executors' own
//! (`lakelink_executor::results`), which serve results to clients directly
//! when the scheduler hands out executor endpoints ([`grant`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightEndpoint, Ticket};
use ballista_core::serde::protobuf::{self, PartitionLocation};
use ballista_core::serde::scheduler::{Action, ShuffleFileKind};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt, stream};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use lakelink_executor::results::{GRANT_ACTION, GrantRequest, TICKET_PREFIX, same_types};

use crate::query::{ResultFiles, conform};

/// Largest message accepted from an executor (a result file's messages are
/// at most 12 MiB, Ballista's own encoding at most 16 MiB).
const MAX_EXECUTOR_MESSAGE: usize = 64 * 1024 * 1024;

/// Flight messages of a result.
pub type FlightDataStream = futures::stream::BoxStream<'static, Result<FlightData, Status>>;

/// Streams the result files `files`, in order, as Flight data in `schema`.
/// A client that stops reading stops the fetching; either way the files are
/// removed once the stream ends.
pub fn forward(files: ResultFiles, schema: SchemaRef) -> FlightDataStream {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
    tokio::spawn(async move {
        let result = async {
            // The schema message exactly as the encoder of re-encoded batches
            // writes it (dictionaries become their value types), and the
            // schema the client reads from it.
            let header = schema_message(&schema).await?;
            let sent = Schema::try_from(&header).map_err(|e| Status::internal(e.to_string()))?;
            if tx.send(Ok(header)).await.is_err() {
                return Ok(());
            }
            let mut count = Count::default();
            for file in &files.locations {
                forward_file(file, &schema, &sent, &tx, &mut count).await?;
            }
            tracing::debug!(
                "result sent from {} file(s): {} messages passed on, {} re-encoded",
                files.locations.len(),
                count.passed_on,
                count.re_encoded
            );
            Ok(())
        };
        if let Err(e) = result.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    ReceiverStream::new(rx).boxed()
}

/// Batch messages passed on unchanged and written anew.
#[derive(Default)]
struct Count {
    passed_on: usize,
    re_encoded: usize,
}

/// The schema a client of a result in `schema` reads (dictionaries become
/// their value types, as the Flight encoder writes them).
pub async fn sent_schema(schema: &SchemaRef) -> Result<Schema, Status> {
    Schema::try_from(&schema_message(schema).await?).map_err(|e| Status::internal(e.to_string()))
}

async fn schema_message(schema: &SchemaRef) -> Result<FlightData, Status> {
    let mut encoder = FlightDataEncoderBuilder::new().with_schema(schema.clone()).build(stream::empty());
    encoder.next().await.ok_or_else(|| Status::internal("no schema message"))?.map_err(Status::from)
}

/// Sends the batches of one result file to `tx`; `Ok` also when the client
/// has gone away.
async fn forward_file(
    file: &PartitionLocation,
    schema: &SchemaRef,
    sent: &Schema,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
    count: &mut Count,
) -> Result<(), Status> {
    let mut messages = fetch(file).await?;
    let Some(first) = messages.message().await? else {
        return Err(Status::internal(format!("{} sent no schema", describe(file))));
    };
    let file_schema = Arc::new(
        Schema::try_from(&first).map_err(|e| Status::internal(format!("{} sent no schema: {e}", describe(file))))?,
    );
    if !same_types(&file_schema, sent) {
        // Decoded whole: dictionaries and casts need the decoder's state.
        let data = stream::once(async { Ok(first) }).chain(messages.map_err(|e| FlightError::Tonic(Box::new(e))));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        while let Some(batch) = batches.try_next().await.map_err(Status::from)? {
            count.re_encoded += 1;
            if !send_encoded(batch, schema, tx).await? {
                return Ok(());
            }
        }
        return Ok(());
    }
    while let Some(data) = messages.message().await? {
        let sent = if forwardable(&data) {
            count.passed_on += 1;
            tx.send(Ok(data)).await.is_ok()
        } else {
            count.re_encoded += 1;
            let batch = arrow_flight::utils::flight_data_to_arrow_batch(&data, file_schema.clone(), &HashMap::new())
                .map_err(|e| Status::internal(format!("{}: bad batch: {e}", describe(file))))?;
            send_encoded(batch, schema, tx).await?
        };
        if !sent {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether a message from an executor can go to the client as it is: an
/// uncompressed record batch no bigger than [`lakelink_executor::results::MAX_CLIENT_MESSAGE`].
fn forwardable(data: &FlightData) -> bool {
    lakelink_executor::results::forwardable(&data.data_header, data.data_body.len())
}

/// Conforms `batch` to `schema`, encodes it (split into messages of about
/// 2 MiB) and sends it; `false` when the client has gone away.
async fn send_encoded(
    batch: RecordBatch,
    schema: &SchemaRef,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> Result<bool, Status> {
    let batch = conform(batch, schema).map_err(crate::error::query_status)?;
    let mut encoded =
        FlightDataEncoderBuilder::new().with_schema(schema.clone()).build(stream::once(async { Ok(batch) })).skip(1); // the schema, sent once already
    while let Some(data) = encoded.next().await {
        if tx.send(Ok(data.map_err(Status::from)?)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Ballista's action naming a result file, and a client of the executor
/// holding it.
async fn executor_for(file: &PartitionLocation) -> Result<(Vec<u8>, FlightServiceClient<Channel>), Status> {
    let (Some(executor), Some(id)) = (&file.executor_meta, &file.partition_id) else {
        return Err(Status::internal("a result file without its executor or partition"));
    };
    let action = Action::FetchPartition {
        job_id: id.job_id.clone().into(),
        stage_id: id.stage_id as usize,
        partition_id: id.partition_id as usize,
        host: executor.host.clone(),
        port: executor.port as u16,
        file_id: file.file_id,
        layout: file.layout(),
        file_kind: ShuffleFileKind::Data,
        byte_ranges: Vec::new(),
    };
    let action: protobuf::Action = action.try_into().map_err(|e| Status::internal(format!("{e}")))?;
    let unreachable = |e: &dyn std::fmt::Display| Status::unavailable(format!("cannot fetch {}: {e}", describe(file)));
    // Ballista's own fetches use the same limits: an executor not reached
    // within 20 s, or whose connection stops answering keep-alive pings (one
    // every five minutes, 20 s to answer), fails the query instead of
    // stalling it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}:{}", executor.host, executor.port))
        .map_err(|e| unreachable(&e))?
        .connect_timeout(Duration::from_secs(20))
        .tcp_keepalive(Some(Duration::from_secs(3600)))
        .http2_keep_alive_interval(Duration::from_secs(300))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| unreachable(&e))?;
    let client = FlightServiceClient::new(channel).max_decoding_message_size(MAX_EXECUTOR_MESSAGE);
    Ok((action.encode_to_vec(), client))
}

/// Asks the executor holding a result file for it.
async fn fetch(file: &PartitionLocation) -> Result<Streaming<FlightData>, Status> {
    let (action, mut client) = executor_for(file).await?;
    let response = client
        .do_get(Ticket::new(action))
        .await
        .map_err(|e| Status::unavailable(format!("cannot fetch {}: {e}", describe(file))))?;
    Ok(response.into_inner())
}

/// Where a client reads one result file itself: the executor holding it,
/// with a ticket for one read as `schema` (`lakelink_executor::results`).
pub async fn grant(file: &PartitionLocation, schema: &Schema) -> Result<FlightEndpoint, Status> {
    use base64::Engine;
    let (action, mut client) = executor_for(file).await?;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let request = GrantRequest {
        fetch: encode(&action),
        schema: encode(&lakelink_executor::results::schema_message(schema).data_header),
    };
    let body = serde_json::to_vec(&request).map_err(|e| Status::internal(e.to_string()))?;
    let refused =
        |e: &dyn std::fmt::Display| Status::unavailable(format!("cannot hand {} to the client: {e}", describe(file)));
    let mut answers =
        client.do_action(arrow_flight::Action::new(GRANT_ACTION, body)).await.map_err(|e| refused(&e))?.into_inner();
    let token = answers.message().await.map_err(|e| refused(&e))?.ok_or_else(|| refused(&"no token"))?.body;
    let executor = file.executor_meta.as_ref().expect("checked by executor_for");
    let ticket = [TICKET_PREFIX.as_bytes(), &token].concat();
    Ok(FlightEndpoint::new()
        .with_ticket(Ticket::new(ticket))
        .with_location(format!("grpc://{}:{}", executor.host, executor.port)))
}

fn describe(file: &PartitionLocation) -> String {
    let executor = file.executor_meta.as_ref().map(|e| format!("{}:{}", e.host, e.port)).unwrap_or_default();
    let partition = file.partition_id.as_ref().map(|p| p.partition_id).unwrap_or_default();
    format!("result partition {partition} on executor {executor}")
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::arrow::ipc::CompressionType;
    use datafusion::arrow::ipc::writer::IpcWriteOptions;

    use super::*;

    /// One batch of `rows` numbers as the message an executor would send.
    async fn batch_message(options: IpcWriteOptions, rows: i64) -> FlightData {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap();
        let mut data: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_options(options)
            .with_max_flight_data_size(usize::MAX)
            .build(stream::once(async { Ok(batch) }))
            .try_collect()
            .await
            .unwrap();
        data.pop().unwrap()
    }

    #[tokio::test]
    async fn only_small_uncompressed_batches_are_forwarded() {
        assert!(forwardable(&batch_message(IpcWriteOptions::default(), 1000).await));
        let lz4 = IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME)).unwrap();
        assert!(!forwardable(&batch_message(lz4, 1000).await));
        assert!(!forwardable(&batch_message(IpcWriteOptions::default(), 1 << 20).await), "an 8 MiB batch");
        assert!(!forwardable(&schema_message(&Arc::new(Schema::empty())).await.unwrap()));
    }

    #[tokio::test]
    async fn types_must_match_those_sent_and_dictionaries_are_sent_as_values() {
        let plain = Schema::new(vec![Field::new("a", DataType::Utf8, false)]);
        let renamed = Schema::new(vec![Field::new("b", DataType::Utf8, true)]);
        assert!(same_types(&plain, &renamed));
        let view = Schema::new(vec![Field::new("a", DataType::Utf8View, true)]);
        assert!(!same_types(&view, &plain));
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let dicts = Arc::new(Schema::new(vec![Field::new("a", dict, true)]));
        let sent = Schema::try_from(&schema_message(&dicts).await.unwrap()).unwrap();
        assert_eq!(sent.field(0).data_type(), &DataType::Utf8);
        assert!(!same_types(&dicts, &sent));
    }
}
