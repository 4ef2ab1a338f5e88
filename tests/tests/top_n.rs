//! Top-N lookups run in two passes (the first finds the N-th value of the
//! first sort key, the second filters on it) and must answer exactly as the
//! one-pass plan does: ties at the bound, NULLs sorting first or last, NaN,
//! OFFSET, fewer matching rows than N, a computed key. Two real clusters over
//! the same lake, one narrowing every lookup and one never, answer each query.

use datafusion::prelude::SessionContext;
use lakelink_scheduler::SchedulerOptions;
use lakelink_tests::{TestCluster, loopback_options, rows};
use lakelink_udf::Extensions;

async fn cluster(lake: &std::path::Path, narrowing_min_bytes: u64) -> TestCluster {
    let options = SchedulerOptions { top_n_narrowing_min_bytes: narrowing_min_bytes, ..loopback_options(lake) };
    TestCluster::start_options(options, &Extensions::lakelink(), 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pass_lookups_answer_as_one_pass_lookups() {
    let lake = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    for part in 0..3 {
        // k: many ties and NULLs; g: a float key with NaN.
        let sql = format!(
            "COPY (SELECT id, CASE WHEN id % 11 = 0 THEN NULL ELSE id % 7 END AS k, \
             CASE WHEN id % 13 = 0 THEN CAST('NaN' AS DOUBLE) ELSE id / 3.0 END AS g, \
             chr(97 + CAST(id % 4 AS INT)) AS tag \
             FROM generate_series({}, {}) AS s(id)) TO '{}' STORED AS PARQUET",
            part * 1000,
            part * 1000 + 999,
            lake.path().join(format!("t/part-{part}.parquet")).display()
        );
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
    let narrowing = cluster(lake.path(), 0).await;
    let plain = cluster(lake.path(), u64::MAX).await;
    let (mut a, mut b) = (narrowing.connect().await, plain.connect().await);

    for sql in [
        "SELECT id, k, tag FROM t WHERE tag <> 'c' ORDER BY k DESC, id LIMIT 10",
        "SELECT id, k, tag FROM t WHERE tag <> 'c' ORDER BY k DESC NULLS LAST, id LIMIT 10",
        "SELECT id, k FROM t WHERE tag = 'b' ORDER BY k, id LIMIT 25",
        "SELECT id, k FROM t WHERE tag = 'b' ORDER BY k NULLS FIRST, id LIMIT 5 OFFSET 3",
        "SELECT id, k FROM t WHERE tag = 'b' AND k IS NOT NULL ORDER BY k DESC, id DESC LIMIT 300",
        "SELECT id, k, g FROM t WHERE id < 5 ORDER BY k, id LIMIT 10",
        "SELECT id, x FROM (SELECT id, k * 2 AS x FROM t WHERE id % 3 = 0) AS s ORDER BY x DESC, id LIMIT 7",
        "SELECT id, g FROM t WHERE tag <> 'a' ORDER BY g DESC, id LIMIT 4",
        "SELECT id, g FROM t WHERE tag <> 'a' ORDER BY g, id LIMIT 4",
        "SELECT id, k FROM t WHERE id > 2990 ORDER BY k DESC, id LIMIT 100",
    ] {
        let two_pass = lakelink_tests::run(&mut a, sql).await;
        let one_pass = lakelink_tests::run(&mut b, sql).await;
        assert!(!one_pass.is_empty(), "{sql}: the one-pass answer is empty");
        assert_eq!(two_pass, one_pass, "{sql}");
    }

    // The answers are also what local DataFusion says over the same files.
    ctx.register_parquet("t", lake.path().join("t").to_str().unwrap(), Default::default()).await.unwrap();
    let sql = "SELECT id, k, tag FROM t WHERE tag <> 'c' ORDER BY k DESC, id LIMIT 10";
    let local = rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap());
    assert_eq!(lakelink_tests::run(&mut a, sql).await, local);
    // NULLs sort first when descending: the top rows are the NULL keys.
    assert!(local.iter().all(|row| row[1] == "NULL"), "{local:?}");
}
