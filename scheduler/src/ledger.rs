//! The cluster's ledger of model calls ([`lakelink_model::ledger`]), served
//! on the cluster port (cluster secret only) as one Flight action,
//! [`LEDGER_ACTION`](lakelink_protocol::members::LEDGER_ACTION): the body is
//! a JSON [`Request`](lakelink_model::ledger::Request), the one result a JSON
//! [`Reply`](lakelink_model::ledger::Reply). Every other Flight call is
//! refused there.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream};
use lakelink_model::ledger::{Book, Request as LedgerRequest};
pub use lakelink_protocol::members::LEDGER_ACTION;
use tonic::{Request, Response, Status, Streaming};

/// The ledger's Flight service over `book`.
pub struct LedgerService {
    book: Arc<Book>,
}

impl LedgerService {
    /// Serves `book`.
    pub fn new(book: Arc<Book>) -> Self {
        Self { book }
    }
}

fn refused() -> Status {
    Status::unimplemented(format!("the cluster port answers Flight action {LEDGER_ACTION} only"))
}

#[tonic::async_trait]
impl FlightService for LedgerService {
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type != LEDGER_ACTION {
            return Err(refused());
        }
        let asked: LedgerRequest = serde_json::from_slice(&action.body)
            .map_err(|e| Status::invalid_argument(format!("malformed {LEDGER_ACTION} request: {e}")))?;
        let reply = serde_json::to_vec(&self.book.answer(asked)).map_err(|e| Status::internal(e.to_string()))?;
        let result = arrow_flight::Result { body: reply.into() };
        Ok(Response::new(Box::pin(stream::once(async { Ok(result) }))))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(refused())
    }
    async fn list_flights(&self, _: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(refused())
    }
    async fn get_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        Err(refused())
    }
    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(refused())
    }
    async fn get_schema(&self, _: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        Err(refused())
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(refused())
    }
    async fn do_put(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(refused())
    }
    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(refused())
    }
    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(refused())
    }
}
