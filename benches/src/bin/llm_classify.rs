//! `lakelink-llm-classify`: `llm_classify` over 10 million rows holding
//! 1,000 distinct texts, against a scripted OpenAI-compatible endpoint that
//! answers after a fixed latency (50 ms), on a scheduler with two executors.
//!
//! Prints, per configuration: model calls (at most 1,000: each distinct
//! text once; fewer when rows share a request), wall time, and the ratio of
//! wall time to the floor `calls x latency / concurrency`.
//!
//! ```sh
//! cargo run --release -p lakelink-benches --bin lakelink-llm-classify -- --rows 10000000
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use lakelink_tests::model_double::{ModelDouble, answer_rows};
use lakelink_tests::{TestCluster, query, rows};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "lakelink-llm-classify")]
struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
    /// Distinct texts among them.
    #[arg(long, default_value_t = 1_000)]
    distinct: usize,
    /// The endpoint's latency per request, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Requests in flight at once (lakelink.llm.concurrency).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Writes the figures as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const LABELS: [&str; 3] = ["bug", "feature", "praise"];

fn text(k: usize) -> String {
    format!("ticket kind {} number {k}: the customer wrote about their order", LABELS[k % 3])
}

fn write_table(dir: &Path, rows: usize, distinct: usize) -> Result<(), Box<dyn std::error::Error>> {
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    std::fs::create_dir_all(dir)?;
    let files = 4;
    let per_file = rows.div_ceil(files);
    let batch_rows = 65_536;
    let texts: Vec<String> = (0..distinct).map(text).collect();
    let props = WriterProperties::builder().set_compression(datafusion::parquet::basic::Compression::SNAPPY).build();
    let mut written = 0;
    for f in 0..files {
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(dir.join(format!("part-{f}.parquet")))?,
            schema.clone(),
            Some(props.clone()),
        )?;
        let end = (written + per_file).min(rows);
        while written < end {
            let n = batch_rows.min(end - written);
            let column = StringArray::from_iter_values((written..written + n).map(|i| texts[i % distinct].as_str()));
            writer.write(&RecordBatch::try_new(schema.clone(), vec![Arc::new(column)])?)?;
            written += n;
        }
        writer.close()?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let t = Instant::now();
    write_table(&lake.join("tickets"), args.rows, args.distinct)?;
    println!(
        "table: {} rows, {} distinct texts, written in {:.1} s",
        args.rows,
        args.distinct,
        t.elapsed().as_secs_f64()
    );

    let cluster = TestCluster::start_isolated(&lake, dir.path()).await;
    let model = ModelDouble::start(|chat| {
        answer_rows(&chat.user, |row| LABELS.iter().find(|l| row.contains(*l)).unwrap_or(&"none").to_string())
    })
    .await;
    model.set_delay(Duration::from_millis(args.latency_ms));

    let sql = "SELECT llm_classify(text, 'bug', 'feature', 'praise') AS label, count(*) AS n FROM tickets GROUP BY 1 ORDER BY 1";
    let mut results = Vec::new();
    println!();
    println!(
        "| configuration | model calls | rows per call | wall s | floor s (calls x {} ms / {}) | wall / floor |",
        args.latency_ms, args.concurrency
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, batch, cache) in
        [("one row per call", 1, false), ("8 rows per call", 8, false), ("answers cached", 8, true)]
    {
        let mut conn = cluster.connect().await;
        let mut settings = model.settings();
        settings.push(format!("SET lakelink.llm.batch_size = {batch}"));
        settings.push(format!("SET lakelink.llm.cache = {cache}"));
        settings.push(format!("SET lakelink.llm.concurrency = {}", args.concurrency));
        for s in &settings {
            query(&mut conn, s).await?;
        }
        if cache {
            // Fill the cache, then measure a query that finds every answer there.
            query(&mut conn, sql).await?;
        }
        let before = model.chats();
        let t = Instant::now();
        let got = rows(&query(&mut conn, sql).await?);
        let wall = t.elapsed().as_secs_f64();
        let calls = model.chats() - before;
        let total: usize = got.iter().map(|r| r[1].parse::<usize>().unwrap_or(0)).sum();
        assert_eq!(total, args.rows, "every row is counted once: {got:?}");
        assert!(got.iter().all(|r| LABELS.contains(&r[0].as_str())), "labels: {got:?}");
        let floor = calls as f64 * args.latency_ms as f64 / 1000.0 / args.concurrency as f64;
        let per_call = if calls == 0 { 0.0 } else { args.distinct as f64 / calls as f64 };
        let ratio = if floor > 0.0 { format!("{:.2}", wall / floor) } else { "-".into() };
        println!("| {name} | {calls} | {per_call:.1} | {wall:.2} | {floor:.2} | {ratio} |");
        results.push(json!({"configuration": name, "calls": calls, "wall_s": wall, "floor_s": floor}));
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(
                &json!({"rows": args.rows, "distinct": args.distinct, "latency_ms": args.latency_ms, "concurrency": args.concurrency, "runs": results}),
            )?,
        )?;
    }
    Ok(())
}
