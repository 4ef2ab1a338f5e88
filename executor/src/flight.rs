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
//! passes them on to the client the same way. A query's result partitions
//! are read while their tasks still write them ([`crate::follow`], tickets
//! from [`ResultPartition::ticket`]). It also serves results to clients
//! directly ([`crate::results`]): the scheduler's grants ([`GRANT_ACTION`])
//! and the clients' tickets for them. Every other request goes to Ballista's
//! service.
//!
//! Only a client's result ticket is served without the cluster secret (the
//! ticket's one-time token is its credential); every other call must present
//! the secret (the scheduler's reads and grants, other executors' shuffle
//! reads) or is refused as unauthenticated.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaResult, Ticket,
};
use ballista_core::execution_plans::sort_shuffle::is_sort_shuffle_output;
use ballista_core::serde::decode_protobuf;
use ballista_core::serde::scheduler::{Action as BallistaAction, ShuffleFileKind, ShuffleLayout};
use ballista_executor::flight_service::BallistaFlightService;
use datafusion::arrow::ipc::root_as_message;
use futures::stream;
use tonic::{Request, Response, Status, Streaming};

use crate::follow::{
    Finish, MAX_RAW_MESSAGE, Next, ResultPartition, TaskKey, follow, next_header, partition_path, task_key,
};
use crate::results::{self, BoxedStream, GRANT_ACTION, GrantRequest, Grants, REVOKE_ACTION, TICKET_PREFIX};
use lakelink_protocol::cluster::{ClusterSecret, unauthenticated};
use lakelink_protocol::members;

/// See the module documentation.
#[derive(Clone)]
pub struct ExecutorFlightService {
    inner: BallistaFlightService,
    work_dir: String,
    grants: Grants,
    secret: ClusterSecret,
    /// Whether this service answers `lakelink.trail` with its host's trail:
    /// an executor inside the scheduler's process (embedded mode, tests)
    /// does not, since the scheduler reads that process's trail itself.
    host_trail: bool,
}

impl ExecutorFlightService {
    /// A service over the shuffle files in `work_dir`, for the cluster whose
    /// processes present `secret`.
    /// At most `max_unread` bytes of granted results wait for their
    /// clients (0: no cap).
    pub fn new(work_dir: String, secret: ClusterSecret, max_unread: u64) -> Self {
        let grants = Grants::new(Path::new(&work_dir).join("lakelink-results"), max_unread);
        grants.sweep_in_background();
        Self { inner: BallistaFlightService::new(work_dir.clone()), work_dir, grants, secret, host_trail: true }
    }

    /// The same service for an executor inside the scheduler's process: it
    /// answers `lakelink.trail` with nothing.
    pub fn in_process(mut self) -> Self {
        self.host_trail = false;
        self
    }

    /// Refuses a call that does not present the cluster secret.
    fn cluster_only<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.secret.admits(request.metadata()) { Ok(()) } else { Err(unauthenticated()) }
    }

    /// The result file a `FetchPartition` action names (a whole data file of
    /// a stage whose output is not repartitioned, such as the input of a
    /// final merge) and the task that wrote it.
    fn result_file(&self, fetch: &[u8]) -> Result<(PathBuf, TaskKey), Status> {
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
        let (Some(task_id), true, ShuffleFileKind::Data, ShuffleLayout::Passthrough) =
            (file_id, byte_ranges.is_empty(), file_kind, layout)
        else {
            return Err(Status::invalid_argument(format!(
                "job {job_id} stage {stage_id} partition {partition_id} is not a result file"
            )));
        };
        let partition =
            ResultPartition { job_id: job_id.to_string(), stage_id, partition_id, task_id: task_id as usize };
        let path = partition_path(&partition, &self.work_dir)?;
        if is_sort_shuffle_output(&path) || !path.is_file() {
            return Err(Status::not_found(format!(
                "no result file for job {job_id} stage {stage_id} partition {partition_id} on this executor"
            )));
        }
        Ok((path, task_key(&partition, &self.work_dir)))
    }

    /// Grants one client read of a result partition (see [`crate::results`]),
    /// once its task has created the file.
    async fn grant(&self, body: &[u8]) -> Result<String, Status> {
        use base64::Engine;
        let malformed = |what: &str| Status::invalid_argument(format!("malformed result grant request: {what}"));
        let request: GrantRequest = serde_json::from_slice(body).map_err(|e| malformed(&e.to_string()))?;
        let header =
            base64::engine::general_purpose::STANDARD.decode(&request.schema).map_err(|_| malformed("not base64"))?;
        let message = root_as_message(&header).map_err(|e| malformed(&e.to_string()))?;
        let schema = message
            .header_as_schema()
            .map(datafusion::arrow::ipc::convert::fb_to_schema)
            .ok_or_else(|| malformed("no schema message"))?;
        let path = partition_path(&request.partition, &self.work_dir)?;
        let task = task_key(&request.partition, &self.work_dir);
        crate::follow::wait_for_file(&path, &task).await?;
        self.grants.grant(&path, task, std::sync::Arc::new(schema)).map_err(|e| match e {
            results::GrantError::Full { .. } => Status::resource_exhausted(e.to_string()),
            results::GrantError::Io(io) => {
                Status::internal(format!("cannot keep {} for its client: {io}", path.display()))
            }
        })
    }

    /// The file a ticket asks for whole, when it can be forwarded message by
    /// message: a plain (not sort-based) shuffle file in the IPC stream
    /// format with no dictionaries and no message too big to forward.
    fn raw_file(&self, ticket: &Ticket) -> Option<(PathBuf, TaskKey)> {
        let (path, task) = self.result_file(&ticket.ticket).ok()?;
        scan_messages(&path).ok()?.then_some((path, task))
    }
}

/// Whether every message of the stream file at `path` can be forwarded
/// (reads the headers only).
fn scan_messages(path: &Path) -> std::io::Result<bool> {
    if !is_stream_file(path)? {
        return Ok(false); // the IPC file format (range shuffle)
    }
    let file = File::open(path)?;
    let mut offset = 0;
    while let Next::Message { header, body_at, body_len, dictionary } = next_header(&file, offset)? {
        if dictionary || header.len() as u64 + body_len > MAX_RAW_MESSAGE as u64 {
            return Ok(false);
        }
        offset = body_at + body_len;
    }
    Ok(true)
}

/// Whether the file at `path` is an IPC stream (not the IPC file format).
fn is_stream_file(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 6];
    let mut file = File::open(path)?;
    Ok(file.read_exact(&mut magic).is_err() || &magic != b"ARROW1")
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
        let ticket = &request.get_ref().ticket;
        if let Some(token) = ticket.strip_prefix(TICKET_PREFIX.as_bytes()) {
            let token = std::str::from_utf8(token).unwrap_or_default();
            let granted = self.grants.take(token).ok_or_else(|| {
                Status::not_found(
                    "unknown result ticket: it was already read, is older than ten minutes, or was issued by another \
                     executor process; run the statement again",
                )
            })?;
            return Ok(Response::new(results::serve(granted)));
        }
        self.cluster_only(&request)?;
        if let Some(partition) = ResultPartition::from_ticket(ticket) {
            let partition = partition?;
            let path = partition_path(&partition, &self.work_dir)?;
            // The scheduler checks the partition against the job's report.
            return Ok(Response::new(follow(path, task_key(&partition, &self.work_dir), Finish::Marker)));
        }
        match self.raw_file(request.get_ref()) {
            // Files of stages that have ended (Ballista reads its inputs then).
            Some((path, task)) => Ok(Response::new(follow(path, task, Finish::TaskSucceeded))),
            None => self.inner.do_get(request).await,
        }
    }

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.cluster_only(&request)?;
        self.inner.handshake(request).await
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.cluster_only(&request)?;
        self.inner.list_flights(request).await
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.cluster_only(&request)?;
        self.inner.get_flight_info(request).await
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        self.cluster_only(&request)?;
        self.inner.poll_flight_info(request).await
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.cluster_only(&request)?;
        self.inner.get_schema(request).await
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.cluster_only(&request)?;
        self.inner.do_put(request).await
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.cluster_only(&request)?;
        if request.get_ref().r#type == GRANT_ACTION {
            let token = self.grant(&request.get_ref().body).await?;
            let answer = arrow_flight::Result { body: token.into_bytes().into() };
            return Ok(Response::new(Box::pin(stream::once(async { Ok(answer) }))));
        }
        if request.get_ref().r#type == members::CANCEL_ACTION {
            let query_id = String::from_utf8_lossy(&request.get_ref().body).into_owned();
            lakelink_model::engine::cancel_query(&lakelink_model::config::process_defaults().trail_dir, &query_id);
            let answer = arrow_flight::Result { body: "cancelled".into() };
            return Ok(Response::new(Box::pin(stream::once(async { Ok(answer) }))));
        }
        if request.get_ref().r#type == members::TRAIL_ACTION {
            let scan: lakelink_model::trail::Scan = serde_json::from_slice(&request.get_ref().body)
                .map_err(|e| Status::invalid_argument(format!("malformed trail scan: {e}")))?;
            let dir = std::path::PathBuf::from(&lakelink_model::config::process_defaults().trail_dir);
            let host_trail = self.host_trail;
            let files = tokio::task::spawn_blocking(move || {
                if host_trail { lakelink_model::trail::read_files(&dir, &scan) } else { vec![] }
            })
            .await
            .map_err(|e| Status::internal(format!("reading the trail failed: {e}")))?;
            let answers: Vec<Result<arrow_flight::Result, Status>> = members::chunks(files)
                .into_iter()
                .map(|chunk| {
                    let body = serde_json::to_vec(&chunk).map_err(|e| Status::internal(e.to_string()))?;
                    Ok(arrow_flight::Result { body: body.into() })
                })
                .collect();
            return Ok(Response::new(Box::pin(stream::iter(answers))));
        }
        if request.get_ref().r#type == REVOKE_ACTION {
            let token = String::from_utf8_lossy(&request.get_ref().body).into_owned();
            let revoked = self.grants.revoke(&token);
            let answer = arrow_flight::Result { body: if revoked { "revoked" } else { "unknown" }.into() };
            return Ok(Response::new(Box::pin(stream::once(async { Ok(answer) }))));
        }
        self.inner.do_action(request).await
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.cluster_only(&request)?;
        self.inner.list_actions(request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.cluster_only(&request)?;
        self.inner.do_exchange(request).await
    }
}
