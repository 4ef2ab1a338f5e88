//! The executor's Arrow Flight service: Ballista's, except that a whole
//! shuffle file fetched with `do_get` (how a query's final result reaches the
//! scheduler) is sent as the Arrow IPC messages already in the file.
//!
//! Ballista's own `do_get` decodes every batch of the file and encodes it
//! again with LZ4 compression: for a large result that is most of the
//! executor's work (measured: 54% of its CPU while a 6-million-row result was
//! fetched). The file's messages are already valid Flight data (an IPC
//! message header and body; a result file's are uncompressed, see
//! [`crate::stage`]), so they are forwarded unchanged, and the scheduler
//! passes them on to the client the same way. It also serves results to
//! clients directly ([`crate::results`]): the scheduler's grants
//! ([`GRANT_ACTION`]) and the clients' tickets for them. Every other request
//! goes to Ballista's service.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaResult, Ticket,
};
use ballista_core::execution_plans::create_shuffle_path;
use ballista_core::execution_plans::sort_shuffle::is_sort_shuffle_output;
use ballista_core::serde::decode_protobuf;
use ballista_core::serde::scheduler::{Action as BallistaAction, ShuffleFileKind, ShuffleLayout};
use ballista_executor::flight_service::BallistaFlightService;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use futures::{Stream, stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::results::{
    self, GRANT_ACTION, GrantRequest, Grants, TICKET_PREFIX, is_stream_file, next_header, send_messages,
};

/// The largest message forwarded as it is: below the 16 MiB a Ballista
/// client accepts by default. A file holding a bigger message is served by
/// Ballista's service, which splits batches.
const MAX_RAW_MESSAGE: u64 = 12 * 1024 * 1024;

type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// See the module documentation.
#[derive(Clone)]
pub struct ExecutorFlightService {
    inner: BallistaFlightService,
    work_dir: String,
    grants: Grants,
}

impl ExecutorFlightService {
    /// A service over the shuffle files in `work_dir`.
    pub fn new(work_dir: String) -> Self {
        let grants = Grants::new(Path::new(&work_dir).join("lakelink-results"));
        Self { inner: BallistaFlightService::new(work_dir.clone()), work_dir, grants }
    }

    /// The result file a `FetchPartition` action names: a whole data file of
    /// a stage whose output is not repartitioned (a query's result).
    fn result_file(&self, fetch: &[u8]) -> Result<PathBuf, Status> {
        let action: BallistaAction = decode_protobuf(fetch)
            .map_err(|e| Status::invalid_argument(format!("not a FetchPartition action: {e}")))?;
        let BallistaAction::FetchPartition {
            job_id,
            stage_id,
            partition_id,
            file_id,
            layout,
            file_kind,
            byte_ranges,
            ..
        } = action;
        if !byte_ranges.is_empty() || file_kind != ShuffleFileKind::Data || layout != ShuffleLayout::Passthrough {
            return Err(Status::invalid_argument(format!(
                "job {job_id} stage {stage_id} partition {partition_id} is not a result file"
            )));
        }
        let path = create_shuffle_path(&self.work_dir, &job_id, stage_id, partition_id, file_id, false)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if is_sort_shuffle_output(&path) || !path.is_file() {
            return Err(Status::not_found(format!(
                "no result file for job {job_id} stage {stage_id} partition {partition_id} on this executor"
            )));
        }
        Ok(path)
    }

    /// Grants one client read of a result file (see [`crate::results`]).
    fn grant(&self, body: &[u8]) -> Result<String, Status> {
        use base64::Engine;
        let malformed = |what: &str| Status::invalid_argument(format!("malformed result grant request: {what}"));
        let request: GrantRequest = serde_json::from_slice(body).map_err(|e| malformed(&e.to_string()))?;
        let decode = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| malformed("not base64"));
        let path = self.result_file(&decode(&request.fetch)?)?;
        let header = decode(&request.schema)?;
        let message = root_as_message(&header).map_err(|e| malformed(&e.to_string()))?;
        let schema = message
            .header_as_schema()
            .map(datafusion::arrow::ipc::convert::fb_to_schema)
            .ok_or_else(|| malformed("no schema message"))?;
        self.grants
            .grant(&path, std::sync::Arc::new(schema))
            .map_err(|e| Status::internal(format!("cannot keep {} for its client: {e}", path.display())))
    }

    /// The file a ticket asks for whole, when it can be forwarded message by
    /// message: a plain (not sort-based) shuffle file in the IPC stream
    /// format with no dictionaries and no message too big to forward.
    fn raw_file(&self, ticket: &Ticket) -> Option<PathBuf> {
        let path = self.result_file(&ticket.ticket).ok()?;
        scan_messages(&path).ok()?.then_some(path)
    }
}

/// Whether every message of the stream file at `path` can be forwarded
/// (reads the headers only).
fn scan_messages(path: &Path) -> std::io::Result<bool> {
    if !is_stream_file(path)? {
        return Ok(false); // the IPC file format (range shuffle)
    }
    let mut reader = BufReader::new(File::open(path)?);
    while let Some((header, body_len)) = next_header(&mut reader)? {
        let dictionary = root_as_message(&header).is_ok_and(|m| m.header_type() == MessageHeader::DictionaryBatch);
        if dictionary || header.len() as u64 + body_len > MAX_RAW_MESSAGE {
            return Ok(false);
        }
        reader.seek_relative(body_len as i64)?;
    }
    Ok(true)
}

/// Streams the messages of the file at `path` as Flight data.
fn forward_file(path: PathBuf) -> BoxedStream<FlightData> {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = send_messages(&path, false, &tx) {
            let _ =
                tx.blocking_send(Err(Status::internal(format!("cannot read shuffle file {}: {e}", path.display()))));
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl FlightService for ExecutorFlightService {
    type DoActionStream = BoxedStream<arrow_flight::Result>;
    type DoExchangeStream = BoxedStream<FlightData>;
    type DoGetStream = BoxedStream<FlightData>;
    type DoPutStream = BoxedStream<PutResult>;
    type HandshakeStream = BoxedStream<HandshakeResponse>;
    type ListActionsStream = BoxedStream<ActionType>;
    type ListFlightsStream = BoxedStream<FlightInfo>;

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        if let Some(token) = request.get_ref().ticket.strip_prefix(TICKET_PREFIX.as_bytes()) {
            let token = std::str::from_utf8(token).unwrap_or_default();
            let (path, schema) = self.grants.take(token).ok_or_else(|| {
                Status::not_found(
                    "unknown result ticket: it was already read, is older than ten minutes, or was issued by another \
                     executor process; run the statement again",
                )
            })?;
            return Ok(Response::new(results::serve(path, schema)));
        }
        match self.raw_file(request.get_ref()) {
            Some(path) => Ok(Response::new(forward_file(path))),
            None => self.inner.do_get(request).await,
        }
    }

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.inner.handshake(request).await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.inner.list_flights(request).await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.inner.get_flight_info(request).await
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        self.inner.poll_flight_info(request).await
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.inner.get_schema(request).await
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.inner.do_put(request).await
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        if request.get_ref().r#type == GRANT_ACTION {
            let token = self.grant(&request.get_ref().body)?;
            let answer = arrow_flight::Result { body: token.into_bytes().into() };
            return Ok(Response::new(Box::pin(stream::once(async { Ok(answer) }))));
        }
        self.inner.do_action(request).await
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.inner.list_actions(request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.inner.do_exchange(request).await
    }
}
