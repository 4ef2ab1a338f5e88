//! The SQL surface as sqllogictest files (`tests/slt/*.slt`, DataFusion's
//! format): the `llm_*` and `nl_*` functions against the scripted model
//! double, and the refusals of a read-only server. Every file runs on its
//! own Flight SQL connection to one cluster (a scheduler and two executors)
//! over a lake holding the TPC-H tables at SF 0.01 and a `reviews` table.
//!
//! ```sh
//! cargo test --workspace --test slt            # every file
//! cargo test --workspace --test slt -- llm     # files whose name contains "llm"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::parquet::arrow::ArrowWriter;
use lakelink::{ClientError, Connection};
use lakelink_tests::model_double::{Chat, ModelDouble, answer_filter, answer_rows};
use lakelink_tests::{TestCluster, query, testdata, tpch_lake};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

/// The reviews every file may read.
const REVIEWS: &[&str] = &[
    "good phone, the battery lasts",
    "poor screen, it cracked in a week",
    "good value for the price",
    "poor support, nobody answered",
];

/// The NL questions the scripted model knows, and its SQL for them.
const NL: &[(&str, &str)] = &[
    (
        "how many customers are in the building segment",
        "SELECT count(*) AS n FROM customer WHERE c_mktsegment = 'BUILDING'",
    ),
    ("which region names are there", "SELECT r_name FROM region ORDER BY r_name"),
    ("urgent orders", "SELECT * FROM orders WHERE o_orderpriority = '1-URGENT'"),
];

/// Answers the way a model following LakeLink's prompts would.
fn script(chat: &Chat) -> String {
    let system = &chat.system;
    let first_line = chat.user.lines().next().unwrap_or_default().to_lowercase();
    if let Some((_, sql)) = NL.iter().find(|(q, _)| first_line.contains(q)) {
        return format!("```sql\n{sql}\n```");
    }
    if let Some(answer) = answer_filter(system, &chat.user, |_, row| row.contains("good")) {
        answer
    } else if let Some(labels) = system.split("labels: ").nth(1) {
        let labels: Vec<&str> = labels.split('.').next().unwrap_or_default().split(", ").collect();
        answer_rows(&chat.user, |row| labels.iter().find(|l| row.contains(*l)).map_or("none".into(), |l| l.to_string()))
    } else if let Some(list) = system.split("The candidates are:\n").nth(1) {
        let candidates: Vec<&str> = list.lines().map_while(|l| l.strip_prefix("- ")).collect();
        answer_rows(&chat.user, |row| {
            candidates.iter().find(|c| row.contains(*c)).map_or("none".into(), |c| c.to_string())
        })
    } else if system.contains("Extract from the row") {
        answer_rows(&chat.user, |row| row.split(',').next().unwrap_or_default().trim().to_string())
    } else {
        format!("echo: {}", chat.user)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

/// One Flight SQL connection, as sqllogictest's database.
struct FlightDb {
    conn: Connection,
}

#[async_trait]
impl AsyncDB for FlightDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let batches = query(&mut self.conn, sql).await.map_err(|e: ClientError| SltError(e.to_string()))?;
        let Some(schema) = batches.first().map(RecordBatch::schema) else {
            return Ok(DBOutput::StatementComplete(0));
        };
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => DefaultColumnType::FloatingPoint,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
                _ => DefaultColumnType::Any,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<_, _>>()
                .map_err(|e| SltError(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| {
                            let text = f.value(row).to_string();
                            if text.is_empty() { "(empty)".to_string() } else { text }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "lakelink"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// The TPC-H test lake with a `reviews` table beside it.
fn lake(dir: &Path) -> PathBuf {
    let lake = dir.join("lake");
    std::fs::create_dir_all(&lake).expect("lake folder");
    for entry in std::fs::read_dir(tpch_lake()).expect("tpch lake") {
        let entry = entry.expect("entry");
        let to = lake.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&to).expect("table folder");
            for file in std::fs::read_dir(entry.path()).expect("table") {
                let file = file.expect("file");
                std::fs::copy(file.path(), to.join(file.file_name())).expect("copy");
            }
        } else {
            std::fs::copy(entry.path(), to).expect("copy");
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("review", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=REVIEWS.len() as i64)),
            Arc::new(StringArray::from_iter_values(REVIEWS)),
        ],
    )
    .expect("reviews");
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(lake.join("reviews.parquet")).expect("file"), schema, None)
            .expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    lake
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let failures = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let lake = lake(dir.path());
        let cluster = TestCluster::start_isolated(&lake, dir.path()).await;
        let model = ModelDouble::start(script).await;
        let settings = model.settings();
        let url = cluster.url();
        let mut files: Vec<PathBuf> = std::fs::read_dir(testdata().parent().expect("tests").join("slt"))
            .expect("tests/slt")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "slt"))
            .filter(|p| filter.as_deref().is_none_or(|f| p.to_string_lossy().contains(f)))
            .collect();
        files.sort();
        let mut failures = Vec::new();
        for file in &files {
            let (url, settings) = (url.clone(), settings.clone());
            let mut runner = sqllogictest::Runner::new(move || {
                let (url, settings) = (url.clone(), settings.clone());
                async move {
                    let mut conn = Connection::connect(&url, &lakelink::Credentials::None, None)
                        .await
                        .map_err(|e| SltError(e.to_string()))?;
                    for sql in &settings {
                        query(&mut conn, sql).await.map_err(|e| SltError(format!("{sql}: {e}")))?;
                    }
                    Ok(FlightDb { conn })
                }
            });
            match runner.run_file_async(file).await {
                Ok(()) => println!("ok   {}", file.display()),
                Err(e) => {
                    println!("FAIL {}\n{e}", file.display());
                    failures.push(file.clone());
                }
            }
        }
        println!("{} file(s), {} failed", files.len(), failures.len());
        failures
    });
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
