//! The `llm_*` functions with the real local models (Qwen2.5-Coder-0.5B
//! through llama.cpp, all-MiniLM-L6-v2 through candle) on a cluster of one
//! scheduler and two executors. The models come from
//! `scripts/fetch-models.sh`, which the test command runs first.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use lakelink_tests::{TestCluster, query, rows};

const TICKETS: &[&str] = &[
    "The app crashes every time I open the settings page.",
    "Please add a dark mode to the dashboard.",
    "I love how fast the new search is, great work!",
    "Error 500 when uploading a file larger than 10 MB.",
    "Could you support exporting reports to Excel?",
    "Thank you, the support team was wonderful.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_model_classifies_filters_and_embeds() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from_iter_values(0..TICKETS.len() as i32)),
            Arc::new(StringArray::from_iter_values(TICKETS)),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(lake.join("tickets.parquet")).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let cluster = TestCluster::start_isolated(&lake, dir.path()).await;
    let mut conn = cluster.connect().await;
    let mut run = async |sql: &str| {
        let batches = tokio::time::timeout(Duration::from_secs(600), query(&mut conn, sql))
            .await
            .unwrap_or_else(|_| panic!("{sql} hung"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows(&batches)
    };

    let labels = ["bug", "feature", "praise"];
    let got = run("SELECT id, llm_classify(text, 'bug', 'feature', 'praise') FROM tickets ORDER BY id").await;
    assert_eq!(got.len(), TICKETS.len());
    for row in &got {
        assert!(labels.contains(&row[1].as_str()) || row[1] == "NULL", "label {row:?} is not one of {labels:?}");
    }
    assert!(got.iter().filter(|r| r[1] != "NULL").count() >= TICKETS.len() / 2, "{got:?}");

    let got = run("SELECT id, llm_filter(text, 'the text reports a problem') FROM tickets ORDER BY id").await;
    for row in &got {
        assert!(row[1] == "true" || row[1] == "false", "{row:?} is not a boolean");
    }

    let got = run("SELECT llm_similarity('The cat sat on the mat', 'A kitten is sitting on a rug') \
              > llm_similarity('The cat sat on the mat', 'Quarterly revenue grew five percent')")
    .await;
    assert_eq!(got, vec![vec!["true".to_string()]]);

    let trail = run("SELECT DISTINCT backend FROM system.model_calls").await;
    assert_eq!(trail, vec![vec!["local".to_string()]]);
}
