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
//! passes them on to the client the same way. Every other request goes to
//! Ballista's service.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
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
use bytes::Bytes;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

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
}

impl ExecutorFlightService {
    /// A service over the shuffle files in `work_dir`.
    pub fn new(work_dir: String) -> Self {
        Self { inner: BallistaFlightService::new(work_dir.clone()), work_dir }
    }

    /// The file a ticket asks for whole, when it can be forwarded message by
    /// message: a plain (not sort-based) shuffle file in the IPC stream
    /// format with no dictionaries and no message too big to forward.
    fn raw_file(&self, ticket: &Ticket) -> Option<PathBuf> {
        let BallistaAction::FetchPartition {
            job_id,
            stage_id,
            partition_id,
            file_id,
            layout,
            file_kind,
            byte_ranges,
            ..
        } = decode_protobuf(&ticket.ticket).ok()?;
        if !byte_ranges.is_empty() || file_kind != ShuffleFileKind::Data || layout != ShuffleLayout::Passthrough {
            return None;
        }
        let path = create_shuffle_path(&self.work_dir, &job_id, stage_id, partition_id, file_id, false).ok()?;
        if is_sort_shuffle_output(&path) {
            return None;
        }
        let forwardable = scan_messages(&path).ok()?;
        forwardable.then_some(path)
    }
}

/// Reads the header of the next IPC message of a stream (flatbuffer, with
/// padding) and says how long its body is. `None` at the end-of-stream marker
/// or the end of the file.
fn next_header(reader: &mut impl Read) -> std::io::Result<Option<(Bytes, u64)>> {
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
    if message.header_type() == MessageHeader::DictionaryBatch {
        return Err(std::io::Error::other("dictionary batches are not forwarded"));
    }
    let body_len = message.bodyLength().max(0) as u64;
    Ok(Some((Bytes::from(header), body_len)))
}

/// Whether every message of the stream file at `path` can be forwarded
/// (reads the headers only).
fn scan_messages(path: &Path) -> std::io::Result<bool> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 6];
    reader.read_exact(&mut magic)?;
    if &magic == b"ARROW1" {
        return Ok(false); // the IPC file format (range shuffle)
    }
    reader.rewind()?;
    while let Some((header, body_len)) = next_header(&mut reader)? {
        if header.len() as u64 + body_len > MAX_RAW_MESSAGE {
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
        let result = (|| -> std::io::Result<()> {
            let mut reader = BufReader::with_capacity(1 << 20, File::open(&path)?);
            while let Some((header, body_len)) = next_header(&mut reader)? {
                let mut body = vec![0u8; body_len as usize];
                reader.read_exact(&mut body)?;
                let data = FlightData { data_header: header, data_body: Bytes::from(body), ..Default::default() };
                if tx.blocking_send(Ok(data)).is_err() {
                    return Ok(()); // the reader went away
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
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
