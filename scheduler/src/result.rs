//! A distributed query's result on its way to the client: each partition of
//! the result is read, in order, from the executor whose task writes it,
//! while the task writes it ([`crate::job`]), and its Arrow IPC messages are
//! passed on as they arrive, without decoding a batch and encoding it again.
//!
//! Executors send a result file's messages as they lie in the file
//! (`lakelink_protocol::follow`), and a result stage writes them
//! uncompressed (the executor's stage engine), so a batch message is already
//! what a Flight client reads. The client first gets the advertised schema;
//! then every batch message whose columns have the advertised types, that is
//! uncompressed and no bigger than
//! [`lakelink_protocol::result::MAX_CLIENT_MESSAGE`] goes on unchanged. Any
//! other batch (compressed, over the limit, or of a file whose column types
//! differ from the advertised ones, e.g. dictionaries) is decoded, conformed
//! to the advertised schema and encoded again (docs/benchmarks.md, "Result
//! transfer", for what it saves). The rules are the executors' own
//! ([`lakelink_protocol::result::send_to_client`]), which serve results to
//! clients directly when the scheduler hands out executor endpoints
//! ([`grant`](crate::result::grant)).

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightEndpoint};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use lakelink_protocol::cluster::ClusterLink;
use lakelink_protocol::result::{GRANT_ACTION, GrantRequest, REVOKE_ACTION, Sent, TICKET_PREFIX, send_to_client};

use crate::error::query_status;
use crate::job::{Located, RunningJob};

/// Largest message accepted from an executor (a result file's messages are
/// as the result stage wrote them; Ballista's own encoding at most 16 MiB).
const MAX_EXECUTOR_MESSAGE: usize = 64 * 1024 * 1024;

/// How long a failed read of a partition waits for the job to say how it
/// ended, so that the client gets the job's own error (the task's) rather
/// than the read's.
const JOB_ERROR_WAIT: Duration = Duration::from_secs(30);

/// Flight messages of a result.
pub type FlightDataStream = futures::stream::BoxStream<'static, Result<FlightData, Status>>;

/// Streams the result of `job`, partition by partition as the job writes
/// them, as Flight data in `schema`. A client that stops reading stops the
/// reading (and, before the job has ended, cancels the query); the job's
/// files are removed once the stream ends.
pub fn forward(job: RunningJob, schema: SchemaRef, link: ClusterLink) -> FlightDataStream {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
    // Bare on purpose: the relay ends when the client goes away (its channel closes) or at the result's end.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        // A client that goes away while nothing is sent (the job is still
        // computing) is noticed at once: the job is dropped, which cancels it.
        tokio::select! {
            sent = send_result(job, &schema, &link, &tx) => if let Err(e) = sent {
                let _ = tx.send(Err(e)).await;
            },
            _ = tx.closed() => {}
        }
    });
    ReceiverStream::new(rx).boxed()
}

async fn send_result(
    mut job: RunningJob,
    schema: &SchemaRef,
    link: &ClusterLink,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> Result<(), Status> {
    // The schema message exactly as the encoder of re-encoded batches writes
    // it (dictionaries become their value types), and the schema the client
    // reads from it.
    let header = schema_message(schema).await?;
    let sent_schema = Arc::new(Schema::try_from(&header).map_err(|e| Status::internal(e.to_string()))?);
    if tx.send(Ok(header)).await.is_err() {
        return Ok(());
    }
    let mut sent = Sent::default();
    // Each partition as read: where from, and how many rows.
    let mut read_from: Vec<(Located, u64)> = vec![];
    let mut attempts = 0;
    while let Some(located) = job.partition(read_from.len()).await.map_err(query_status)? {
        let before = sent;
        let n = read_from.len();
        let read = match fetch(&located, link).await {
            Ok(messages) => send_to_client(messages, &sent_schema, tx, &mut sent).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(true) => {
                read_from.push((located, sent.rows - before.rows));
                attempts = 0;
            }
            Ok(false) => return Ok(()), // the client went away
            Err(status) => {
                // The task's failure fails the job: its error is the one to
                // report. A partition whose task was run again after a failure
                // is read again, unless part of it was sent already.
                let ended = tokio::time::timeout(JOB_ERROR_WAIT, job.ended()).await;
                match ended {
                    Ok(Err(e)) => return Err(query_status(e)),
                    Ok(Ok(())) if sent.messages() == before.messages() && attempts < MAX_READS => {
                        attempts += 1;
                        tracing::info!("result partition {n} of job {} is read again: {status}", job.id());
                        tokio::time::sleep(REREAD_PAUSE * attempts).await;
                    }
                    _ => {
                        return Err(Status::aborted(format!(
                            "the query's result failed while it was being sent, after some of its rows: {}; run \
                             the statement again",
                            status.message()
                        )));
                    }
                }
            }
        }
    }
    job.ended().await.map_err(query_status)?;
    check_as_reported(&read_from, &job.reported())?;
    tracing::debug!(
        "result sent from {} partition(s): {} messages passed on, {} re-encoded",
        read_from.len(),
        sent.passed_on,
        sent.re_encoded
    );
    Ok(())
}

/// Checks the partitions sent against what the job reported when it ended:
/// the same rows from each (or, where it reported no count, the same task).
/// A partition is read to its file's end without waiting for its task, which
/// may write other partitions too; a task that failed after closing a file
/// (Ballista's writer closes it on a failure too) and was run again would
/// show here, after its rows were sent, and fails the query rather than
/// leave the client a wrong result.
fn check_as_reported(read_from: &[(Located, u64)], reported: &[Option<Located>]) -> Result<(), Status> {
    let changed = || {
        Status::aborted(
            "the query's result changed while it was being sent (a task writing it failed and was run again); \
             run the statement again",
        )
    };
    if read_from.len() != reported.len() {
        return Err(changed());
    }
    for ((read, rows), reported) in read_from.iter().zip(reported) {
        let Some(reported) = reported else { return Err(changed()) };
        let same = match reported.rows {
            Some(reported_rows) => reported_rows == *rows,
            None => reported.partition == read.partition && reported.host == read.host && reported.port == read.port,
        };
        if !same {
            tracing::warn!(
                "result partition {} sent {rows} rows from task {}, the job reports {:?} rows from task {}",
                read.partition.partition_id,
                read.partition.task_id,
                reported.rows,
                reported.partition.task_id
            );
            return Err(changed());
        }
    }
    Ok(())
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

/// How often a partition whose read failed (its task run again) is read again.
const MAX_READS: u32 = 3;
/// The pause before reading a partition again, times the attempt.
const REREAD_PAUSE: Duration = Duration::from_millis(200);

/// A client of the executor writing `located`, presenting the cluster secret.
async fn executor_client(located: &Located, link: &ClusterLink) -> Result<FlightServiceClient<Channel>, Status> {
    executor_client_at(&located.host, located.port, &describe(located), link).await
}

/// A client of the executor serving data on `host:port` (`what` names it in
/// errors), presenting the cluster secret.
pub(crate) async fn executor_client_at(
    host: &str,
    port: u16,
    what: &str,
    link: &ClusterLink,
) -> Result<FlightServiceClient<Channel>, Status> {
    let unreachable = |e: &dyn std::fmt::Display| Status::unavailable(format!("cannot reach {what}: {e}"));
    // Ballista's own fetches use the same limits: an executor not reached
    // within 20 s, or whose connection stops answering keep-alive pings (one
    // every five minutes, 20 s to answer), fails the query instead of
    // stalling it.
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}")).map_err(|e| unreachable(&e))?;
    let channel = link
        .endpoint(endpoint)
        .map_err(|e| unreachable(&e))?
        .connect_timeout(Duration::from_secs(20))
        .tcp_keepalive(Some(Duration::from_secs(3600)))
        .http2_keep_alive_interval(Duration::from_secs(300))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(FlightServiceClient::new(channel).max_decoding_message_size(MAX_EXECUTOR_MESSAGE))
}

/// Reads a result partition from the executor writing it, as it is written.
async fn fetch(
    located: &Located,
    link: &ClusterLink,
) -> Result<lakelink_protocol::result::BoxedStream<FlightData>, Status> {
    let response = executor_client(located, link)
        .await?
        .do_get(located.partition.ticket())
        .await
        .map_err(|e| Status::unavailable(format!("cannot read {}: {e}", describe(located))))?;
    let what = describe(located);
    Ok(response.into_inner().map_err(move |e| Status::unavailable(format!("reading {what}: {e}"))).boxed())
}

/// Where a client reads one result partition itself: the executor writing
/// it, with a ticket for one read as `schema` (`lakelink_protocol::result`).
/// The executor answers once the partition's task has started writing it.
pub async fn grant(located: &Located, schema: &Schema, link: &ClusterLink) -> Result<FlightEndpoint, Status> {
    use base64::Engine;
    let request = GrantRequest {
        partition: located.partition.clone(),
        schema: base64::engine::general_purpose::STANDARD
            .encode(&lakelink_protocol::result::schema_message(schema).data_header),
    };
    let body = serde_json::to_vec(&request).map_err(|e| Status::internal(e.to_string()))?;
    let refused = |e: &dyn std::fmt::Display| {
        Status::unavailable(format!("cannot hand {} to the client: {e}", describe(located)))
    };
    let mut answers = executor_client(located, link)
        .await?
        .do_action(arrow_flight::Action::new(GRANT_ACTION, body))
        .await
        .map_err(|e| match e.code() {
            // The executor's cap of unread results: the caller may read it another way.
            tonic::Code::ResourceExhausted => {
                Status::resource_exhausted(format!("cannot hand {} to the client: {}", describe(located), e.message()))
            }
            _ => refused(&e),
        })?
        .into_inner();
    let token = answers.message().await.map_err(|e| refused(&e))?.ok_or_else(|| refused(&"no token"))?.body;
    let ticket = [TICKET_PREFIX.as_bytes(), &token].concat();
    Ok(FlightEndpoint::new().with_ticket(arrow_flight::Ticket::new(ticket)).with_location(format!(
        "{}://{}:{}",
        link.scheme(),
        located.host,
        located.port
    )))
}

/// Withdraws the grants of `endpoints` (made by [`grant`] at `located`,
/// unread), so their files do not wait for clients that will not come.
pub async fn revoke(granted: &[(Located, FlightEndpoint)], link: &ClusterLink) {
    for (located, endpoint) in granted {
        let Some(token) = endpoint.ticket.as_ref().and_then(|t| t.ticket.strip_prefix(TICKET_PREFIX.as_bytes())) else {
            continue;
        };
        let action = arrow_flight::Action::new(REVOKE_ACTION, token.to_vec());
        let revoked = match executor_client(located, link).await {
            Ok(mut client) => client.do_action(action).await.map(|_| ()),
            Err(status) => Err(status),
        };
        if let Err(status) = revoked {
            tracing::warn!("cannot withdraw the unread grant of {}: {status}", describe(located));
        }
    }
}

fn describe(located: &Located) -> String {
    format!("result partition {} on executor {}:{}", located.partition.partition_id, located.host, located.port)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field};

    use super::*;

    fn located(task_id: usize, rows: Option<u64>) -> Located {
        Located {
            host: "h".into(),
            port: 1,
            partition: lakelink_protocol::follow::ResultPartition {
                job_id: "j".into(),
                stage_id: 2,
                partition_id: 0,
                task_id,
            },
            rows,
        }
    }

    #[test]
    fn partitions_sent_must_match_the_jobs_report() {
        // The same rows, whichever task the job names.
        assert!(check_as_reported(&[(located(1, None), 10)], &[Some(located(4, Some(10)))]).is_ok());
        // Fewer rows sent than the job wrote: a file closed by a failure.
        let err = check_as_reported(&[(located(1, None), 7)], &[Some(located(4, Some(10)))]).unwrap_err();
        assert!(err.message().contains("run the statement again"), "{}", err.message());
        // No count reported: the task must be the one read.
        assert!(check_as_reported(&[(located(1, None), 7)], &[Some(located(1, None))]).is_ok());
        assert!(check_as_reported(&[(located(1, None), 7)], &[Some(located(2, None))]).is_err());
        // A partition more or less than reported.
        assert!(check_as_reported(&[(located(1, None), 7)], &[]).is_err());
    }

    #[tokio::test]
    async fn dictionaries_are_sent_as_values() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let dicts = Arc::new(Schema::new(vec![Field::new("a", dict, true)]));
        assert_eq!(sent_schema(&dicts).await.unwrap().field(0).data_type(), &DataType::Utf8);
    }
}
