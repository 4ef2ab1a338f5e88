//! Shared fixtures for LakeLink's integration tests: a real cluster (a
//! scheduler and in-process executors on loopback ports) and demo lakes.
#![allow(missing_docs)]

pub mod docs;
pub mod model_double;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use lakelink::{Connection, Credentials};
use lakelink_scheduler::{AuthConfig, ClusterLink, RunningScheduler, SchedulerOptions};
use lakelink_udf::Extensions;

/// Scheduler defaults over `lake`, listening on a free loopback port.
pub fn loopback_options(lake: &Path) -> SchedulerOptions {
    let mut options = SchedulerOptions::new(lake.to_string_lossy());
    options.bind_host = "127.0.0.1".into();
    options.port = 0;
    options
}

/// A scheduler and its executors inside the test process.
pub struct TestCluster {
    pub scheduler: RunningScheduler,
    /// The secret its processes present to each other.
    pub secret: lakelink_scheduler::ClusterSecret,
}

impl TestCluster {
    /// Starts a scheduler with `scheduler_ext` and `executors` executors with
    /// `executor_ext`, over `lake`.
    pub async fn start_with(
        lake: &Path,
        scheduler_ext: Extensions,
        executor_ext: Extensions,
        executors: usize,
    ) -> Self {
        Self::start_full(lake, scheduler_ext, executor_ext, executors, AuthConfig::default()).await
    }

    pub async fn start_full(
        lake: &Path,
        scheduler_ext: Extensions,
        executor_ext: Extensions,
        executors: usize,
        auth: AuthConfig,
    ) -> Self {
        let mut options = loopback_options(lake);
        options.extensions = scheduler_ext;
        options.auth = auth;
        Self::start_options(options, &executor_ext, executors).await
    }

    /// Starts a scheduler with `options` and `executors` executors of one
    /// task slot with `executor_ext`.
    pub async fn start_options(options: SchedulerOptions, executor_ext: &Extensions, executors: usize) -> Self {
        let secret = options.cluster_secret.clone();
        let scheduler = lakelink_scheduler::start(options).await.expect("scheduler starts");
        for _ in 0..executors {
            let link = ClusterLink::plain(secret.clone());
            lakelink_executor::start_in_process(scheduler.local_cluster_addr(), 1, executor_ext, &link)
                .await
                .expect("executor starts");
        }
        Self { scheduler, secret }
    }

    /// One scheduler and two executors with LakeLink's functions, whose
    /// model answer cache and trail live in folders under `dir` (so runs do
    /// not share answers), and whose sessions may choose a model endpoint.
    pub async fn start_isolated(lake: &Path, dir: &Path) -> Self {
        // Tests point sessions at their scripted model servers.
        let defaults = lakelink_udf::LlmOptions { allow_session_endpoints: true, ..isolated_llm_defaults(dir) };
        let ext = Extensions::lakelink_with(defaults);
        Self::start_with(lake, ext.clone(), ext, 2).await
    }

    /// One scheduler and two executors with LakeLink's functions.
    pub async fn start(lake: &Path) -> Self {
        Self::start_with(lake, Extensions::lakelink(), Extensions::lakelink(), 2).await
    }

    pub fn url(&self) -> String {
        format!("grpc://{}", self.scheduler.local_addr())
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), &Credentials::None, None).await.expect("connect")
    }

    /// A connection whose session first runs `statements` (`SET ...`).
    pub async fn connect_with(&self, statements: impl IntoIterator<Item = impl AsRef<str>>) -> Connection {
        let mut conn = self.connect().await;
        for sql in statements {
            let sql = sql.as_ref();
            query(&mut conn, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        conn
    }
}

/// What this test process logs, kept in memory: [`LogCapture::install`]
/// makes it the process's tracing subscriber (once per test binary).
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Captures the events `filter` (an `EnvFilter` directive) lets through.
    pub fn install(filter: &str) -> Self {
        let log = Self::default();
        tracing_subscriber::fmt().with_writer(log.clone()).with_env_filter(filter).with_ansi(false).init();
        log
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}

/// Writes table `table` of the lake at `lake` as `parts` Parquet files of
/// `rows` rows each, with `columns` (a select list over `id`, which counts
/// 0, 1, 2, ... across the files).
pub async fn write_parquet_parts(
    ctx: &datafusion::prelude::SessionContext,
    lake: &Path,
    table: &str,
    parts: usize,
    rows: usize,
    columns: &str,
) {
    for part in 0..parts {
        let sql = format!(
            "COPY (SELECT {columns} FROM generate_series({}, {}) AS s(id)) TO '{}' STORED AS PARQUET",
            part * rows,
            (part + 1) * rows - 1,
            lake.join(table).join(format!("part-{part}.parquet")).display()
        );
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    }
}

/// Runs `sql` and returns its rows as text; panics with the SQL when it
/// fails or takes more than two minutes.
pub async fn run(conn: &mut Connection, sql: &str) -> Vec<Vec<String>> {
    let batches = tokio::time::timeout(std::time::Duration::from_secs(120), query(conn, sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} hung"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows(&batches)
}

/// Runs `sql`, which must fail within two minutes, and returns the error text.
pub async fn fails(conn: &mut Connection, sql: &str) -> String {
    match tokio::time::timeout(std::time::Duration::from_secs(120), query(conn, sql)).await {
        Ok(Ok(_)) => panic!("{sql} should fail"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("{sql} hung"),
    }
}

/// Model settings whose answer cache and trail live in folders under `dir`.
pub fn isolated_llm_defaults(dir: &Path) -> lakelink_udf::LlmOptions {
    lakelink_udf::LlmOptions {
        cache_dir: dir.join("cache").display().to_string(),
        trail_dir: dir.join("trail").display().to_string(),
        ..lakelink_udf::LlmOptions::default()
    }
}

/// Runs `sql` through Flight SQL and collects the result.
pub async fn query(conn: &mut Connection, sql: &str) -> Result<Vec<RecordBatch>, lakelink::ClientError> {
    use futures::TryStreamExt;
    let result = conn.query(sql).await?;
    result.batches.try_collect().await
}

/// A TPC-H lake at scale factor 0.01, generated once per test binary.
pub fn tpch_lake() -> &'static Path {
    static LAKE: OnceLock<PathBuf> = OnceLock::new();
    LAKE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lakelink-test-tpch-{}", std::process::id()));
        lakelink::datagen::tpch(0.01, &dir).expect("datagen");
        dir
    })
}

/// `tests/testdata`, found through the directory cargo runs the tests from, so
/// test binaries built in another checkout sharing the target folder still
/// read this checkout's files.
pub fn testdata() -> PathBuf {
    let crate_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir.join("testdata")
}

/// The 22 TPC-H queries of `tests/testdata/tpch`.
pub fn tpch_query(n: usize) -> String {
    let path = testdata().join(format!("tpch/q{n}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders batches as rows of cells, floats rounded to 6 significant digits
/// so that summation order does not matter.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for batch in batches {
        let formatters: Vec<_> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter")).collect();
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| {
                        let text = f.value(row).to_string();
                        if c.data_type().is_floating() && !c.is_null(row) {
                            let v: f64 = text.parse().expect("float");
                            format!("{v:.6e}")
                        } else {
                            text
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// Column names of a result.
pub fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default()
}
