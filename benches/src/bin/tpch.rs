//! `lakelink-tpch`: times TPC-H queries and prints (and optionally writes as
//! JSON) the figures. Three ways to run them:
//!
//! * `--host grpc://HOST:PORT`: a running LakeLink cluster, through Flight SQL;
//! * `--lake DIR`: LakeLink embedded mode (scheduler and two executors in
//!   this process), through Flight SQL on loopback as the shell does;
//! * `--lake DIR --engine datafusion`: single-process DataFusion of the same
//!   version, the baseline LakeLink is compared with.
//!
//! ```sh
//! lakelink-tpch --host grpc://127.0.0.1:50050 --queries 1,6 --iterations 3
//! ```

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use clap::{Parser, ValueEnum};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::TryStreamExt;
use lakelink::{Connection, Credentials};

const TABLES: &[&str] = &["lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region"];

#[derive(Debug, Parser)]
#[command(name = "lakelink-tpch")]
struct Args {
    /// A running scheduler's Flight SQL address.
    #[arg(long, conflicts_with = "lake")]
    host: Option<String>,
    /// A TPC-H lake folder, run in embedded mode (or by --engine datafusion).
    #[arg(long)]
    lake: Option<PathBuf>,
    /// What runs the queries given --lake.
    #[arg(long, value_enum, default_value = "lakelink")]
    engine: Engine,
    /// Executors in embedded mode.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Queries to run, e.g. 1,6 (default: all 22).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// Also run the query in this file, named by the file's stem.
    #[arg(long)]
    sql_file: Option<PathBuf>,
    /// Runs per query; the first is the cold run.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Folder holding q1.sql … q22.sql.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/testdata/tpch"))]
    query_dir: PathBuf,
    /// Write the figures to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write each query's result as an Arrow IPC file (NAME.arrow) here.
    #[arg(long)]
    results_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// LakeLink (embedded mode with --lake, a cluster with --host).
    Lakelink,
    /// Single-process DataFusion.
    Datafusion,
}

/// Something that runs SQL and returns the whole result.
enum Runner {
    FlightSql(Connection),
    DataFusion(SessionContext),
}

impl Runner {
    async fn run(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        match self {
            Runner::FlightSql(conn) => {
                let result = conn.query(sql).await.map_err(|e| e.to_string())?;
                result.batches.try_collect().await.map_err(|e| e.to_string())
            }
            Runner::DataFusion(ctx) => {
                let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
                df.collect().await.map_err(|e| e.to_string())
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut named: Vec<(String, String)> = vec![];
    let queries: Vec<usize> =
        if args.queries.is_empty() && args.sql_file.is_none() { (1..=22).collect() } else { args.queries.clone() };
    for q in queries {
        named.push((format!("q{q}"), std::fs::read_to_string(args.query_dir.join(format!("q{q}.sql")))?));
    }
    if let Some(file) = &args.sql_file {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("query").to_string();
        named.push((name, std::fs::read_to_string(file)?));
    }

    // Kept alive while the queries run.
    let mut _cluster = None;
    let (mut runner, label) = match (&args.host, &args.lake, args.engine) {
        (Some(host), None, _) => {
            (Runner::FlightSql(Connection::connect(host, &Credentials::None, None).await?), "lakelink-cluster")
        }
        (None, Some(lake), Engine::Lakelink) => {
            let cluster = lakelink::embedded::start(&lake.to_string_lossy(), args.executors).await?;
            let url = format!("grpc://{}", cluster.local_addr());
            _cluster = Some(cluster);
            (Runner::FlightSql(Connection::connect(&url, &Credentials::None, None).await?), "lakelink-embedded")
        }
        (None, Some(lake), Engine::Datafusion) => (Runner::DataFusion(datafusion_context(lake).await?), "datafusion"),
        _ => return Err("give --host URL or --lake DIR".into()),
    };

    if let Some(dir) = &args.results_dir {
        std::fs::create_dir_all(dir)?;
    }
    println!("{label}");
    println!("{:<8} {:>8} {:>10} {:>10} {:>10}", "query", "rows", "cold s", "best s", "median s");
    let mut results = vec![];
    for (name, sql) in named {
        let mut times = vec![];
        let mut last = Ok(vec![]);
        for _ in 0..args.iterations.max(1) {
            let started = Instant::now();
            last = runner.run(&sql).await;
            times.push(started.elapsed().as_secs_f64());
            if last.is_err() {
                break;
            }
        }
        match last {
            Ok(batches) => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                let mut sorted = times.clone();
                sorted.sort_by(f64::total_cmp);
                let (best, median) = (sorted[0], sorted[sorted.len() / 2]);
                println!("{name:<8} {rows:>8} {:>10.3} {best:>10.3} {median:>10.3}", times[0]);
                if let Some(dir) = &args.results_dir {
                    write_ipc(&dir.join(format!("{name}.arrow")), &batches)?;
                }
                results.push(serde_json::json!({
                    "query": name, "rows": rows, "times_s": times, "best_s": best, "median_s": median, "error": null,
                }));
            }
            Err(e) => {
                println!("{name:<8} failed: {e}");
                results.push(serde_json::json!({"query": name, "rows": null, "times_s": times, "error": e}));
            }
        }
    }
    if let Some(path) = args.json {
        let doc = serde_json::json!({"system": label, "results": results});
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// Single-process DataFusion over the lake's table folders, with as many
/// partitions as cores (DataFusion's default).
async fn datafusion_context(lake: &Path) -> Result<SessionContext, Box<dyn std::error::Error>> {
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    for table in TABLES {
        let path = lake.join(table);
        ctx.register_parquet(*table, format!("{}/", path.display()), ParquetReadOptions::default()).await?;
    }
    Ok(ctx)
}

fn write_ipc(path: &Path, batches: &[RecordBatch]) -> Result<(), Box<dyn std::error::Error>> {
    let Some(first) = batches.first() else {
        // No batch: nothing tells the schema; an empty file says "no rows".
        std::fs::write(path, b"")?;
        return Ok(());
    };
    let file = std::fs::File::create(path)?;
    let mut writer = arrow::ipc::writer::FileWriter::try_new(file, &first.schema())?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(())
}
