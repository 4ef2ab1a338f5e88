//! Top-N lookups run in two passes (the first finds the N-th value of the
//! first sort key, the second filters on it) and must answer exactly as the
//! one-pass plan does: ties at the bound, NULLs sorting first or last, NaN,
//! OFFSET, fewer matching rows than N, a computed key. Two real clusters over
//! the same lake, one narrowing every lookup and one never, answer each query,
//! and the scheduler's log says which queries the first one ran in two passes.

use datafusion::prelude::SessionContext;
use lakelink_scheduler::SchedulerOptions;
use lakelink_tests::{LogCapture, TestCluster, loopback_options, rows};
use lakelink_udf::Extensions;

fn two_pass_lookups(log: &LogCapture) -> usize {
    log.text().matches("in two passes").count()
}

async fn cluster(lake: &std::path::Path, narrowing_min_bytes: u64) -> TestCluster {
    let options = SchedulerOptions { top_n_narrowing_min_bytes: narrowing_min_bytes, ..loopback_options(lake) };
    TestCluster::start_options(options, &Extensions::lakelink(), 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pass_lookups_answer_as_one_pass_lookups() {
    let log = LogCapture::install("lakelink_scheduler=info");
    let lake = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    // k: many ties and NULLs; g: a float key with NaN.
    let columns = "id, CASE WHEN id % 11 = 0 THEN NULL ELSE id % 7 END AS k, \
                   CASE WHEN id % 13 = 0 THEN CAST('NaN' AS DOUBLE) ELSE id / 3.0 END AS g, \
                   chr(97 + CAST(id % 4 AS INT)) AS tag";
    lakelink_tests::write_parquet_parts(&ctx, lake.path(), "t", 3, 1000, columns).await;
    let narrowing = cluster(lake.path(), 0).await;
    let plain = cluster(lake.path(), u64::MAX).await;
    let (mut a, mut b) = (narrowing.connect().await, plain.connect().await);

    // (query, whether the narrowing cluster runs it in two passes: not when
    // the N-th key is NULL, fewer than N rows pass or the key is a float).
    for (sql, two_pass) in [
        ("SELECT id, k, tag FROM t WHERE tag <> 'c' ORDER BY k DESC, id LIMIT 10", false),
        ("SELECT id, k, tag FROM t WHERE tag <> 'c' ORDER BY k DESC NULLS LAST, id LIMIT 10", true),
        ("SELECT id, k FROM t WHERE tag = 'b' ORDER BY k, id LIMIT 25", true),
        ("SELECT id, k FROM t WHERE tag = 'b' ORDER BY k NULLS FIRST, id LIMIT 5 OFFSET 3", false),
        ("SELECT id, k FROM t WHERE tag = 'b' AND k IS NOT NULL ORDER BY k DESC, id DESC LIMIT 300", true),
        ("SELECT id, k, g FROM t WHERE id < 5 ORDER BY k, id LIMIT 10", false),
        ("SELECT id, x FROM (SELECT id, k * 2 AS x FROM t WHERE id % 3 = 0) AS s ORDER BY x DESC, id LIMIT 7", false),
        ("SELECT id, g FROM t WHERE tag <> 'a' ORDER BY g DESC, id LIMIT 4", false),
        ("SELECT id, g FROM t WHERE tag <> 'a' ORDER BY g, id LIMIT 4", false),
        ("SELECT id, k FROM t WHERE id > 2990 ORDER BY k DESC, id LIMIT 100", false),
        // NULLs first and fewer than N of them: the bound keeps them.
        ("SELECT id, k FROM t WHERE tag = 'b' AND id < 300 ORDER BY k DESC, id LIMIT 40", true),
        // A key renamed by a subquery: the bound filters the sort's input.
        (
            "SELECT id, x FROM (SELECT id, k * 2 AS x FROM t WHERE id % 3 = 0 AND id < 600) AS s \
             ORDER BY x DESC, id LIMIT 30",
            true,
        ),
    ] {
        let before = two_pass_lookups(&log);
        let narrowed = lakelink_tests::run(&mut a, sql).await;
        assert_eq!(two_pass_lookups(&log) - before, usize::from(two_pass), "{sql}: two passes expected: {two_pass}");
        let one_pass = lakelink_tests::run(&mut b, sql).await;
        assert!(!one_pass.is_empty(), "{sql}: the one-pass answer is empty");
        assert_eq!(narrowed, one_pass, "{sql}");
    }
    assert_eq!(two_pass_lookups(&log), 5, "the cluster that never narrows ran a lookup in two passes");

    // The answers are also what local DataFusion says over the same files.
    ctx.register_parquet("t", lake.path().join("t").to_str().unwrap(), Default::default()).await.unwrap();
    let sql = "SELECT id, k, tag FROM t WHERE tag <> 'c' ORDER BY k DESC, id LIMIT 10";
    let local = rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap());
    assert_eq!(lakelink_tests::run(&mut a, sql).await, local);
    // NULLs sort first when descending: the top rows are the NULL keys.
    assert!(local.iter().all(|row| row[1] == "NULL"), "{local:?}");
}
