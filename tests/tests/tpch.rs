//! All 22 TPC-H queries on a real cluster (one scheduler, two executors)
//! through Flight SQL, compared with single-process DataFusion.

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use lakelink_tests::{TestCluster, column_names, query, rows, tpch_lake, tpch_query};

async fn reference_context() -> SessionContext {
    let ctx = SessionContext::new();
    for table in ["lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region"] {
        let path = tpch_lake().join(table);
        ctx.register_parquet(table, path.to_str().unwrap(), ParquetReadOptions::default()).await.expect("register");
    }
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_22_queries_match_single_process_datafusion() {
    let cluster = TestCluster::start(tpch_lake()).await;
    let mut conn = cluster.connect().await;
    let reference = reference_context().await;
    let mut failures = vec![];
    for n in 1..=22 {
        let sql = tpch_query(n);
        let expected = reference.sql(&sql).await.unwrap().collect().await.unwrap();
        match query(&mut conn, &sql).await {
            Ok(actual) => {
                if !actual.is_empty() && column_names(&actual) != column_names(&expected) {
                    failures.push(format!(
                        "q{n}: columns {:?} != {:?}",
                        column_names(&actual),
                        column_names(&expected)
                    ));
                } else if rows(&actual) != rows(&expected) {
                    failures.push(format!("q{n}: rows differ\n got {:?}\nwant {:?}", rows(&actual), rows(&expected)));
                }
            }
            Err(e) => failures.push(format!("q{n}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of 22 TPC-H queries failed:\n{}", failures.len(), failures.join("\n"));
}
