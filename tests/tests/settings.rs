//! The operator's engine settings: partitions per stage (one per executor
//! task slot unless `--target-partitions` says otherwise), `--set` for any
//! DataFusion or Ballista setting, and late materialization for lookups.

use lakelink_scheduler::SchedulerOptions;
use lakelink_tests::{TestCluster, loopback_options, run, tpch_lake};
use lakelink_udf::Extensions;

/// Starts a scheduler over the TPC-H lake with its options changed by
/// `change`, and `executors` executors of one task slot.
async fn cluster(change: impl FnOnce(&mut SchedulerOptions), executors: usize) -> TestCluster {
    let mut options = loopback_options(tpch_lake());
    change(&mut options);
    TestCluster::start_options(options, &Extensions::lakelink(), executors).await
}

async fn explain(cluster: &TestCluster, sql: &str) -> String {
    let mut conn = cluster.connect().await;
    run(&mut conn, &format!("EXPLAIN {sql}")).await.into_iter().map(|row| row.join("\n")).collect::<Vec<_>>().join("\n")
}

/// The number of partitions the GROUP BY of `plan` is shuffled into.
fn scan_partitions(plan: &str) -> usize {
    let at = plan.find("partitioning=Hash([").unwrap_or_else(|| panic!("a hash shuffle in {plan}"));
    let rest = &plan[at..];
    let end = rest.find(')').unwrap();
    rest[..end].rsplit(", ").next().unwrap().trim().parse().unwrap()
}

const SCAN: &str = "SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stages_have_one_partition_per_task_slot_unless_the_operator_says() {
    // Executors register at their first poll of the cluster port, which
    // may come after the first statement is planned: wait for the third.
    let scheduler = cluster(|_| {}, 3).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut partitions = scan_partitions(&explain(&scheduler, SCAN).await);
    while partitions < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        partitions = scan_partitions(&explain(&scheduler, SCAN).await);
    }
    assert_eq!(partitions, 3, "three executors of one slot: three partitions");

    let scheduler = cluster(|o| o.target_partitions = 5, 1).await;
    assert_eq!(scan_partitions(&explain(&scheduler, SCAN).await), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_settings_reach_every_query_and_bad_ones_stop_the_start() {
    let scheduler =
        cluster(|o| o.settings = vec![("datafusion.execution.parquet.pushdown_filters".into(), "true".into())], 1)
            .await;
    // Filter pushdown for every query, not only lookups: the scan filters.
    let plan = explain(&scheduler, "SELECT count(*) FROM lineitem WHERE l_discount = 0.05").await;
    assert!(!plan.contains("FilterExec") && plan.contains("predicate=l_discount"), "{plan}");

    for (key, value, expected) in [
        ("datafusion.execution.no_such_setting", "1", "no_such_setting"),
        ("datafusion.execution.target_partitions", "many", "target_partitions"),
        ("lakelink.llm.model", "x", "only datafusion.* and ballista.*"),
        ("datafusion.execution.parquet.schema_force_view_types", "true", "plain Utf8"),
    ] {
        let mut options = loopback_options(tpch_lake());
        options.settings = vec![(key.into(), value.into())];
        let err = lakelink_scheduler::start(options).await.expect_err("a bad setting stops the start").to_string();
        assert!(err.contains(expected) && err.contains("--set"), "{key}={value}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_decode_filter_columns_first() {
    let scheduler = cluster(|_| {}, 1).await;
    let lookup = explain(
        &scheduler,
        "SELECT l_orderkey, l_extendedprice FROM lineitem WHERE l_discount = 0.05 \
         ORDER BY l_extendedprice DESC LIMIT 10",
    )
    .await;
    // With Parquet filter pushdown the scan applies the filter itself.
    assert!(!lookup.contains("FilterExec"), "{lookup}");
    assert!(lookup.contains("predicate=l_discount"), "{lookup}");

    let aggregate = explain(&scheduler, "SELECT count(*) FROM lineitem WHERE l_discount = 0.05").await;
    assert!(aggregate.contains("FilterExec"), "{aggregate}");
}
