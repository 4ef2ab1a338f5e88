//! A distributed query's result reaches the client as the messages the
//! executors wrote: batch messages of the advertised column types pass
//! through the scheduler unchanged, and the rest (dictionaries, messages over
//! the forwarding limit) are decoded and encoded again. Either way the client
//! reads what local DataFusion computes over the same files; the scheduler's
//! log says which way each result went.

use datafusion::prelude::SessionContext;
use lakelink_tests::{LogCapture, TestCluster, rows};

/// Batch messages passed on and re-encoded for the last result sent.
fn last_result(log: &LogCapture) -> (usize, usize) {
    let text = log.text();
    let line = text.lines().rfind(|l| l.contains("result sent from")).expect("no result logged");
    let number = |before: &str| -> usize {
        let head = &line[..line.find(before).unwrap()];
        head.trim_end().rsplit([' ', ',']).next().unwrap().parse().unwrap()
    };
    (number(" messages passed on"), number(" re-encoded"))
}

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_pass_through_the_scheduler_as_the_executors_wrote_them() {
    let log = LogCapture::install("lakelink_scheduler=debug");
    let lake = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let columns = "id, chr(97 + CAST(id % 4 AS INT)) AS tag, \
                   CASE WHEN id % 7 = 0 THEN NULL ELSE id / 8.0 END AS amount, \
                   CAST(id % 500 AS INT) + DATE '2020-01-01' AS day, id % 3 = 0 AS flag";
    lakelink_tests::write_parquet_parts(&ctx, lake.path(), "t", 3, 10_000, columns).await;
    ctx.register_parquet("t", lake.path().join("t").to_str().unwrap(), Default::default()).await.unwrap();
    let local = |sql: &'static str| {
        let ctx = ctx.clone();
        async move { sorted(rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap())) }
    };
    let cluster = TestCluster::start(lake.path()).await;
    let mut conn = cluster.connect().await;

    // Plain columns: every batch message goes on as it is.
    let sql = "SELECT * FROM t";
    let answer = sorted(lakelink_tests::run(&mut conn, sql).await);
    assert_eq!(answer.len(), 30_000);
    assert_eq!(answer, local(sql).await);
    let (passed_on, re_encoded) = last_result(&log);
    assert!(passed_on > 0 && re_encoded == 0, "{sql}: {passed_on} passed on, {re_encoded} re-encoded");

    // A dictionary column reaches the client as its values: decoded and
    // encoded again.
    let sql = "SELECT id, arrow_cast(tag, 'Dictionary(Int32, Utf8)') AS d FROM t WHERE id % 5 = 0";
    let answer = sorted(lakelink_tests::run(&mut conn, sql).await);
    assert_eq!(answer.len(), 6_000);
    assert_eq!(answer, local(sql).await);
    let (passed_on, re_encoded) = last_result(&log);
    assert!(passed_on == 0 && re_encoded > 0, "{sql}: {passed_on} passed on, {re_encoded} re-encoded");

    // Batches of about 8 MiB, over the forwarding limit: split anew.
    let sql = "SELECT id, repeat(tag, 1000) AS long FROM t";
    let answer = sorted(lakelink_tests::run(&mut conn, sql).await);
    assert_eq!(answer.len(), 30_000);
    assert_eq!(answer, local(sql).await);
    let (_, re_encoded) = last_result(&log);
    assert!(re_encoded > 0, "{sql}: nothing re-encoded");

    // Batches of about 24 MiB, over what the executors send in one message:
    // sliced there.
    let sql = "SELECT id, repeat(tag, 3000) AS long FROM t";
    let answer = sorted(lakelink_tests::run(&mut conn, sql).await);
    assert_eq!(answer.len(), 30_000);
    assert_eq!(answer, local(sql).await);

    // An empty result still carries its schema.
    let sql = "SELECT id, tag FROM t WHERE id < 0";
    assert!(lakelink_tests::run(&mut conn, sql).await.is_empty());
}

async fn flight_client(
    url: &str,
) -> arrow_flight::flight_service_client::FlightServiceClient<tonic::transport::Channel> {
    let channel =
        tonic::transport::Endpoint::from_shared(url.replace("grpc://", "http://")).unwrap().connect().await.unwrap();
    arrow_flight::flight_service_client::FlightServiceClient::new(channel)
}

/// The endpoints a scheduler started with `--result-endpoints executors`
/// gives for `sql`, asked with a plain Flight client.
async fn endpoints(url: &str, sql: &str) -> arrow_flight::FlightInfo {
    use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
    use prost::Message;
    let mut client = flight_client(url).await;
    let command = CommandStatementQuery { query: sql.into(), transaction_id: None };
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    client.get_flight_info(descriptor).await.unwrap().into_inner()
}

/// Reads one endpoint at its location: the batches, or the error's message.
async fn read_endpoint(endpoint: &arrow_flight::FlightEndpoint) -> Result<usize, String> {
    use futures::TryStreamExt;
    let mut client = flight_client(&endpoint.location[0].uri).await;
    let ticket = endpoint.ticket.clone().unwrap();
    let data = client.do_get(ticket).await.map_err(|e| e.message().to_string())?.into_inner();
    let batches: Vec<_> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        data.map_err(arrow_flight::error::FlightError::from),
    )
    .try_collect()
    .await
    .map_err(|e| e.to_string())?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_read_from_the_executors_match_and_each_ticket_reads_once() {
    let lake = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let columns =
        "id, chr(97 + CAST(id % 4 AS INT)) AS tag, CASE WHEN id % 7 = 0 THEN NULL ELSE id / 8.0 END AS amount";
    lakelink_tests::write_parquet_parts(&ctx, lake.path(), "t", 3, 10_000, columns).await;
    ctx.register_parquet("t", lake.path().join("t").to_str().unwrap(), Default::default()).await.unwrap();
    let mut options = lakelink_tests::loopback_options(lake.path());
    options.result_endpoints = lakelink_scheduler::ResultEndpoints::Executors;
    let cluster = TestCluster::start_options(options, &lakelink_udf::Extensions::lakelink(), 2).await;
    let mut conn = cluster.connect().await;

    // Plain columns, a dictionary column (sent as its values), batches over
    // the client message limit (split anew) and an empty result: the client
    // reads each from the executors' endpoints and gets what DataFusion
    // computes here.
    for sql in [
        "SELECT * FROM t",
        "SELECT id, arrow_cast(tag, 'Dictionary(Int32, Utf8)') AS d FROM t WHERE id % 5 = 0",
        "SELECT id, repeat(tag, 1000) AS long FROM t",
        "SELECT id, repeat(tag, 3000) AS long FROM t",
        "SELECT id, tag FROM t WHERE id < 0",
    ] {
        let answer = sorted(lakelink_tests::run(&mut conn, sql).await);
        assert_eq!(answer, sorted(rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap())), "{sql}");
    }
    // Order holds across the endpoints.
    let sql = "SELECT id, tag FROM t ORDER BY tag DESC, id LIMIT 20000";
    let answer = lakelink_tests::run(&mut conn, sql).await;
    assert_eq!(answer, rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap()));

    // Every file of a distributed result is its own endpoint at an executor,
    // not at the scheduler.
    let info = endpoints(&cluster.url(), "SELECT * FROM t WHERE id % 2 = 0").await;
    assert!(info.endpoint.len() >= 2, "one endpoint per result file: {:?}", info.endpoint);
    let scheduler = cluster.url();
    for e in &info.endpoint {
        assert_eq!(e.location.len(), 1);
        assert_ne!(e.location[0].uri, scheduler, "an endpoint at the scheduler");
    }
    let mut read = 0;
    for e in &info.endpoint {
        read += read_endpoint(e).await.unwrap();
    }
    assert_eq!(read, 15_000);
    // A ticket reads once; a made-up one reads nothing.
    let again = read_endpoint(&info.endpoint[0]).await.unwrap_err();
    assert!(again.contains("unknown result ticket"), "{again}");
    let mut forged = info.endpoint[0].clone();
    forged.ticket = Some(arrow_flight::Ticket::new(format!("{}guess", lakelink_executor::results::TICKET_PREFIX)));
    let refused = read_endpoint(&forged).await.unwrap_err();
    assert!(refused.contains("unknown result ticket"), "{refused}");

    // Statements answered by the scheduler itself still work.
    assert_eq!(lakelink_tests::run(&mut conn, "SELECT 1 + 1 AS two").await, vec![vec!["2".to_string()]]);
    let analyzed = lakelink_tests::run(&mut conn, "EXPLAIN ANALYZE SELECT count(*) FROM t").await;
    assert!(analyzed.iter().flatten().any(|cell| cell.contains("output_rows")), "{analyzed:?}");
    assert!(!lakelink_tests::run(&mut conn, "SELECT table_name FROM information_schema.tables").await.is_empty());
}
