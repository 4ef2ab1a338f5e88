//! The lake catalog on a real cluster: every layout the README lists becomes
//! a table, a table added while the cluster runs is visible to the next
//! query, and a corrupt table fails alone.

use std::path::Path;

use datafusion::prelude::SessionContext;
use lakelink_tests::{TestCluster, query, rows};

/// Writes `sql`'s result to `path` in `format` with a local DataFusion.
async fn write(sql: &str, path: &Path, format: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let ctx = SessionContext::new();
    let copy = format!("COPY ({sql}) TO '{}' STORED AS {format}", path.display());
    ctx.sql(&copy).await.unwrap().collect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_lake_layout_is_a_table() {
    let lake = tempfile::tempdir().unwrap();
    let root = lake.path();
    write("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(id, name)", &root.join("single.parquet"), "PARQUET").await;
    write("SELECT * FROM (VALUES (1), (2), (3)) AS t(id)", &root.join("folder/part-0.parquet"), "PARQUET").await;
    write("SELECT * FROM (VALUES (4), (5)) AS t(id)", &root.join("folder/part-1.parquet"), "PARQUET").await;
    write("SELECT * FROM (VALUES (10), (11)) AS t(v)", &root.join("events/year=2024/part-0.parquet"), "PARQUET").await;
    write("SELECT * FROM (VALUES (12)) AS t(v)", &root.join("events/year=2025/part-0.parquet"), "PARQUET").await;
    write("SELECT * FROM (VALUES (7, 'x')) AS t(id, tag)", &root.join("tags.csv"), "CSV").await;
    write("SELECT * FROM (VALUES (8, 'y'), (9, 'z')) AS t(id, tag)", &root.join("notes.json"), "JSON").await;
    std::fs::write(root.join("README.txt"), "not a table").unwrap();

    let cluster = TestCluster::start(root).await;
    let mut conn = cluster.connect().await;
    let check = |sql: &'static str, expected: Vec<Vec<&'static str>>| (sql, expected);
    for (sql, expected) in [
        check("SELECT name FROM single ORDER BY id", vec![vec!["a"], vec!["b"]]),
        check("SELECT count(*), sum(id) FROM folder", vec![vec!["5", "15"]]),
        check(
            "SELECT year, count(*), sum(v) FROM events GROUP BY year ORDER BY year",
            vec![vec!["2024", "2", "21"], vec!["2025", "1", "12"]],
        ),
        check("SELECT tag FROM tags", vec![vec!["x"]]),
        check("SELECT count(*) FROM notes", vec![vec!["2"]]),
    ] {
        let result = query(&mut conn, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(rows(&result), expected, "{sql}");
    }
    let tables: Vec<String> = conn.tables(None).await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(tables, vec!["events", "folder", "notes", "single", "tags"]);

    // A table added while the cluster runs, and a file added to a table.
    write("SELECT 42 AS answer", &root.join("later/part-0.parquet"), "PARQUET").await;
    write("SELECT * FROM (VALUES (6)) AS t(id)", &root.join("folder/part-2.parquet"), "PARQUET").await;
    let result = query(&mut conn, "SELECT answer FROM later").await.expect("new table is visible");
    assert_eq!(rows(&result), vec![vec!["42"]]);
    let result = query(&mut conn, "SELECT count(*) FROM folder").await.unwrap();
    assert_eq!(rows(&result), vec![vec!["6"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_table_fails_alone() {
    let lake = tempfile::tempdir().unwrap();
    write("SELECT 1 AS ok", &lake.path().join("good.parquet"), "PARQUET").await;
    std::fs::create_dir(lake.path().join("broken")).unwrap();
    std::fs::write(lake.path().join("broken/part-0.parquet"), b"this is not parquet").unwrap();

    let cluster = TestCluster::start(lake.path()).await;
    let mut conn = cluster.connect().await;
    let err = query(&mut conn, "SELECT * FROM broken").await.expect_err("corrupt table").to_string();
    assert!(err.contains("broken") && err.contains("part-0.parquet"), "{err}");
    let result = query(&mut conn, "SELECT ok FROM good").await.expect("other tables keep working");
    assert_eq!(rows(&result), vec![vec!["1"]]);
    // Malformed SQL and unknown tables get specific messages.
    let err = query(&mut conn, "SELEC 1").await.unwrap_err().to_string();
    assert!(err.starts_with("SQL syntax error: "), "{err}");
    let err = query(&mut conn, "SELECT * FROM missing_table").await.unwrap_err().to_string();
    assert!(err.contains("missing_table") && err.contains("not found"), "{err}");
}
