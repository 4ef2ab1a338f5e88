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

    // An empty result still carries its schema.
    let sql = "SELECT id, tag FROM t WHERE id < 0";
    assert!(lakelink_tests::run(&mut conn, sql).await.is_empty());
}
