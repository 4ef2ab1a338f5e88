//! The client port's Flight service: LakeLink's Flight SQL service, with one
//! check before it. A ticket of an executor endpoint (`lakelink-result:`, see
//! docs/sql.md#result-endpoints) or of an executor's own partition reads
//! (`lakelink-follow:`) is never valid at the scheduler; Flight SQL would
//! report it as an undecodable message. A client that ignores endpoint
//! locations and sends such a ticket to the scheduler (flightsql-dbapi, which
//! Apache Superset uses, reads the first endpoint from the server it asked)
//! gets an error that says so instead.

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo, SchemaResult, Ticket,
};
use lakelink_protocol::follow::FOLLOW_TICKET_PREFIX;
use lakelink_protocol::result::TICKET_PREFIX;
use tonic::{Request, Response, Status, Streaming};

/// `inner` with the ticket check of [`refuse_member_ticket`] on `DoGet`.
pub struct ClientDoor<T>(pub T);

/// The error for a ticket that only an executor serves; `None` for any other.
pub fn refuse_member_ticket(ticket: &[u8]) -> Option<Status> {
    if ticket.starts_with(TICKET_PREFIX.as_bytes()) {
        return Some(Status::invalid_argument(format!(
            "this ticket ({TICKET_PREFIX}...) is an executor's result endpoint: read it at the endpoint's location, \
             not at the scheduler. A client that reads every result from the server it asked (such as \
             flightsql-dbapi, which Apache Superset uses) needs a scheduler run with --result-endpoints scheduler \
             (the default)"
        )));
    }
    if ticket.starts_with(FOLLOW_TICKET_PREFIX.as_bytes()) {
        return Some(Status::invalid_argument(format!(
            "this ticket ({FOLLOW_TICKET_PREFIX}...) is read between members of the cluster at an executor's data \
             port; the scheduler does not serve it"
        )));
    }
    None
}

#[tonic::async_trait]
impl<T: FlightService> FlightService for ClientDoor<T> {
    type DoActionStream = T::DoActionStream;
    type DoExchangeStream = T::DoExchangeStream;
    type DoGetStream = T::DoGetStream;
    type DoPutStream = T::DoPutStream;
    type HandshakeStream = T::HandshakeStream;
    type ListActionsStream = T::ListActionsStream;
    type ListFlightsStream = T::ListFlightsStream;

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        if let Some(refused) = refuse_member_ticket(&request.get_ref().ticket) {
            return Err(refused);
        }
        self.0.do_get(request).await
    }

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.0.handshake(request).await
    }
    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.0.list_flights(request).await
    }
    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.0.get_flight_info(request).await
    }
    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        self.0.poll_flight_info(request).await
    }
    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.0.get_schema(request).await
    }
    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.0.do_put(request).await
    }
    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.0.do_exchange(request).await
    }
    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.0.do_action(request).await
    }
    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.0.list_actions(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_member_tickets_are_refused() {
        let result = refuse_member_ticket(b"lakelink-result:0123456789").expect("refused");
        assert_eq!(result.code(), tonic::Code::InvalidArgument);
        assert!(result.message().contains("--result-endpoints scheduler"), "{}", result.message());
        let follow = refuse_member_ticket(b"lakelink-follow:{}").expect("refused");
        assert!(follow.message().contains("data port"), "{}", follow.message());
        // Flight SQL tickets (protobuf `Any` messages) and anything else pass.
        assert!(
            refuse_member_ticket(b"\n\x3atype.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery").is_none()
        );
        assert!(refuse_member_ticket(b"").is_none());
        assert!(refuse_member_ticket(b"lakelink-resul").is_none());
    }
}
