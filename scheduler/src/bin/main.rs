//! `lakelink-scheduler`: a Ballista scheduler over a lake, serving Arrow Flight SQL.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use lakelink_scheduler::{AuthConfig, ResultEndpoints, SchedulerOptions, start};

/// A LakeLink scheduler: registers every table of a lake, serves Arrow
/// Flight SQL to clients on one port and Ballista's scheduler protocol to its
/// executors on another (the cluster port, open only to holders of the
/// cluster secret).
#[derive(Debug, Parser)]
#[command(name = "lakelink-scheduler", version)]
struct Args {
    /// The lake: a folder, file:// URL or object-store URL (s3://bucket/prefix,
    /// gs://, az://, http(s)://) whose files and folders are tables. A store's
    /// credentials come from the environment (AWS_ACCESS_KEY_ID, ...).
    #[arg(long)]
    lake: String,
    /// Seconds between listings of the lake (new tables and files are seen
    /// after the next one, or at once with REFRESH LAKE); 0: before every
    /// statement. Default: 0 for a local folder, 60 for an object store.
    #[arg(long, value_name = "SECS")]
    lake_refresh: Option<u64>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Port for Flight SQL clients.
    #[arg(long, default_value_t = 50050)]
    port: u16,
    /// Port for executors (Ballista's scheduler protocol); default: --port + 1.
    #[arg(long)]
    cluster_port: Option<u16>,
    /// File holding the cluster secret executors must present (letters,
    /// digits, '-' and '_', at least 16); the LAKELINK_CLUSTER_SECRET variable
    /// wins over it. Default: ~/.config/lakelink/cluster.secret, written with
    /// a new random secret when missing.
    #[arg(long)]
    cluster_secret_file: Option<std::path::PathBuf>,
    /// Serve TLS on both ports with this certificate chain (PEM); with --tls-key.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA (PEM) the executors' certificates are signed by: the scheduler
    /// then reaches executors over TLS and sends clients to them with
    /// grpc+tls://. Needed with --tls-cert, since the scheduler's own client
    /// reaches its cluster port too.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<std::path::PathBuf>,
    /// Accept client credentials (--auth-token, --password) on a port beyond
    /// loopback without TLS, where anyone on the path can read them.
    #[arg(long)]
    allow_plaintext_auth: bool,
    /// Serve the cluster port without TLS on an address beyond loopback:
    /// the cluster secret then crosses the network in the clear (trusted
    /// networks only).
    #[arg(long)]
    allow_plaintext_cluster: bool,
    /// Require this bearer token from Flight SQL clients.
    #[arg(long, env = "LAKELINK_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Accept password logins (HTTP Basic) for this user.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// The password for --user.
    #[arg(long, env = "LAKELINK_PASSWORD", hide_env_values = true, requires = "user")]
    password: Option<String>,
    /// Seconds after which a silent executor is considered dead.
    #[arg(long, default_value_t = 30)]
    executor_timeout: u64,
    /// How executors get tasks: `pull` (they poll the cluster port) or `push`
    /// (the scheduler sends them to a port each executor serves with
    /// Ballista's protocol, which LakeLink cannot authenticate: for trusted
    /// networks only); executors must be started with the same mode.
    #[arg(long, default_value = "pull", value_parser = ["pull", "push"])]
    scheduling: String,
    /// Partitions per query stage (0: one per executor task slot, at least 2).
    #[arg(long, default_value_t = 0)]
    target_partitions: usize,
    /// A DataFusion or Ballista setting for every query, as KEY=VALUE
    /// (repeatable), e.g. `--set ballista.shuffle.compression.codec=none`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Top-N lookups (one table, a filter, ORDER BY ... LIMIT N) over tables of
    /// at least this many bytes run in two passes: the first finds the N-th
    /// value of the first sort key, the second reads the other columns only
    /// where they can matter. 0: always; "never": never.
    #[arg(long, default_value_t = lakelink_scheduler::rewrite::top_n::TOP_N_NARROWING_MIN_BYTES, value_parser = parse_bytes_or_never)]
    top_n_narrowing_min_bytes: u64,
    /// Semi and anti joins (EXISTS, NOT EXISTS, IN (subquery)) keeping the
    /// rows of a small side against a large one first keep only the large
    /// side's rows whose keys the small side holds, so the large side is not
    /// shuffled: `on` or `off`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    semi_join_reduction: String,
    /// Where clients read distributed results: `scheduler` (passed on by the
    /// scheduler; clients reach only it) or `executors` (read from the
    /// executors that wrote them; clients must reach every executor's Flight
    /// data port with a one-time grant for each partition; the job runs when
    /// the client asks where to read).
    #[arg(long, default_value = "scheduler", value_parser = ["scheduler", "executors"])]
    result_endpoints: String,
    /// The longest a statement may run, in seconds, before it is cancelled
    /// with an error naming this flag. 0: no limit.
    #[arg(long, default_value_t = lakelink_scheduler::limits::DEFAULT_QUERY_TIMEOUT.as_secs())]
    query_timeout: u64,
    /// The largest result the scheduler passes on (e.g. 16GiB); a larger
    /// one ends with an error naming this flag and its statement is
    /// cancelled. 0: no limit.
    #[arg(long, default_value = "16GiB", value_parser = lakelink_protocol::limits::parse_bytes)]
    max_result_size: u64,
    /// The most statements one client address may have running at once
    /// (being planned, or their results read through the scheduler); one
    /// more is refused with an error naming this flag. 0: no limit.
    #[arg(long, default_value_t = lakelink_scheduler::limits::DEFAULT_MAX_CLIENT_STATEMENTS)]
    max_client_statements: usize,
    /// The memory a statement the scheduler runs itself (catalog reads)
    /// may hold, spilling where it can (e.g. 2GiB). 0: no limit. Default: a
    /// quarter of the host's memory. Executors bound theirs with
    /// `lakelink-executor --memory-pool`.
    #[arg(long, value_parser = lakelink_protocol::limits::parse_bytes)]
    query_memory: Option<u64>,
}

fn parse_bytes_or_never(s: &str) -> Result<u64, String> {
    match s.trim() {
        "never" => Ok(u64::MAX),
        n => n.parse().map_err(|_| format!("expected a number of bytes or 'never', got '{s}'")),
    }
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Some(missing) = lakelink_model::cpu::missing_features() {
        eprintln!("lakelink-scheduler: {missing}");
        return std::process::ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut options = SchedulerOptions::new(args.lake);
    options.lake_refresh = args.lake_refresh.map(std::time::Duration::from_secs);
    options.cluster_secret = match lakelink_protocol::cluster::resolve(args.cluster_secret_file.as_deref(), true) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("lakelink-scheduler: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    options.bind_host = args.bind;
    options.port = args.port;
    options.cluster_port = args.cluster_port.unwrap_or(0);
    options.executor_timeout_seconds = args.executor_timeout;
    options.push_scheduling = args.scheduling == "push";
    options.target_partitions = args.target_partitions;
    options.settings = args.settings;
    options.top_n_narrowing_min_bytes = args.top_n_narrowing_min_bytes;
    options.semi_join_reduction = args.semi_join_reduction == "on";
    options.result_endpoints = match args.result_endpoints.as_str() {
        "executors" => ResultEndpoints::Executors,
        _ => ResultEndpoints::Scheduler,
    };
    options.auth = AuthConfig { token: args.auth_token, basic: args.user.zip(args.password) };
    options.tls = args.tls_cert.zip(args.tls_key).map(|(cert, key)| lakelink_scheduler::TlsIdentity { cert, key });
    options.cluster_ca = args.tls_ca.map(lakelink_scheduler::TlsCa);
    options.allow_plaintext_auth = args.allow_plaintext_auth;
    options.allow_plaintext_cluster = args.allow_plaintext_cluster;
    options.limits.query_timeout = (args.query_timeout > 0).then(|| std::time::Duration::from_secs(args.query_timeout));
    options.limits.max_result_bytes = args.max_result_size;
    options.limits.max_client_statements = args.max_client_statements;
    if let Some(bytes) = args.query_memory {
        options.limits.query_memory = bytes;
    }
    let result = async {
        let running = start(options).await?;
        tokio::select! {
            r = running.wait() => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lakelink-scheduler: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
