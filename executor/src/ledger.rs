//! The executor's way to the cluster's ledger of model calls
//! ([`lakelink_model::ledger`]): the scheduler's cluster port, with the
//! cluster secret, one Flight action per request.

use arrow_flight::flight_service_client::FlightServiceClient;
use lakelink_model::ledger::{Ledger, Reply, Request};
use lakelink_protocol::cluster::ClusterLink;
use lakelink_protocol::members::LEDGER_ACTION;
use tonic::transport::Channel;

/// Answers and budgets bigger than this are not a ledger's.
const MAX_MESSAGE: usize = 64 << 20;

/// The scheduler's ledger, reached over the network.
pub struct SchedulerLedger {
    client: FlightServiceClient<Channel>,
}

impl SchedulerLedger {
    /// The ledger at the scheduler's cluster port `host:port` (connected on
    /// first use, and again after a lost connection).
    pub fn new(host: &str, port: u16, link: &ClusterLink) -> Result<Self, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|e| format!("the scheduler's address {host}:{port}: {e}"))?;
        // A ledger that does not answer within these bounds is given up for
        // the query: the process then answers its inputs on its own.
        let channel = link
            .endpoint(endpoint)?
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .connect_lazy();
        let client = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self { client })
    }
}

#[tonic::async_trait]
impl Ledger for SchedulerLedger {
    async fn ask(&self, request: Request) -> Result<Reply, String> {
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let mut client = self.client.clone();
        let mut answers = client
            .do_action(arrow_flight::Action::new(LEDGER_ACTION, body))
            .await
            .map_err(|e| format!("the scheduler: {}", e.message()))?
            .into_inner();
        let answer = answers
            .message()
            .await
            .map_err(|e| format!("the scheduler: {}", e.message()))?
            .ok_or("the scheduler sent no reply")?;
        serde_json::from_slice(&answer.body).map_err(|e| format!("the scheduler's reply: {e}"))
    }
}
