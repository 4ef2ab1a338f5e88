//! `lakelink-executor`: a Ballista executor with LakeLink's functions.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use lakelink_executor::{ExecutorOptions, run};
use lakelink_udf::Extensions;

/// A LakeLink executor: runs the tasks of distributed queries for a scheduler.
#[derive(Debug, Parser)]
#[command(name = "lakelink-executor", version)]
struct Args {
    /// The scheduler's cluster port, as HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051")]
    scheduler: String,
    /// File holding the cluster secret (the scheduler's); the
    /// LAKELINK_CLUSTER_SECRET variable wins over it. Default:
    /// ~/.config/lakelink/cluster.secret.
    #[arg(long)]
    cluster_secret_file: Option<std::path::PathBuf>,
    /// Serve TLS on the data port with this certificate chain (PEM); with --tls-key.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA (PEM) the scheduler's and the other executors' certificates
    /// are signed by: this executor then reaches them over TLS.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<std::path::PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Without TLS, serve the data port beyond loopback and reach a
    /// scheduler beyond loopback anyway: the cluster secret then crosses the
    /// network in the clear (trusted networks only).
    #[arg(long)]
    allow_plaintext_cluster: bool,
    /// Host name others reach this executor by (default: localhost).
    #[arg(long)]
    external_host: Option<String>,
    /// Port serving shuffle and result data (Arrow Flight; other executors
    /// and the scheduler present the cluster secret, clients a one-time grant).
    #[arg(long, default_value_t = 50052)]
    port: u16,
    /// Port of Ballista's executor service, served only with --scheduling push.
    #[arg(long, default_value_t = 50053)]
    grpc_port: u16,
    /// Tasks run at once (default: one per core).
    #[arg(long, default_value_t = 0)]
    concurrent_tasks: usize,
    /// Folder for shuffle files (default: a temporary folder removed at exit).
    #[arg(long)]
    work_dir: Option<std::path::PathBuf>,
    /// How to get tasks: `pull` (poll the scheduler's cluster port) or `push`
    /// (the scheduler sends them to --grpc-port, which LakeLink cannot
    /// authenticate: for trusted networks only); the same mode as the
    /// scheduler's `--scheduling`.
    #[arg(long, default_value = "pull", value_parser = ["pull", "push"])]
    scheduling: String,
    /// The memory the executor's tasks may hold (e.g. 8GiB), split evenly
    /// between its task slots; operators that can spill (sorts, aggregations)
    /// do so at their share, others fail the query with "Resources
    /// exhausted". 0: no limit. Default: Ballista's share of the host memory.
    #[arg(long, value_parser = lakelink_protocol::limits::parse_bytes)]
    memory_pool: Option<u64>,
    /// The most bytes of results kept for clients that have not read them
    /// yet (--result-endpoints executors); past it the executor grants no
    /// more reads and results pass through the scheduler instead. 0: no cap.
    #[arg(long, default_value = "4GiB", value_parser = lakelink_protocol::limits::parse_bytes)]
    max_unread_results: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Some(missing) = lakelink_model::cpu::missing_features() {
        eprintln!("lakelink-executor: {missing}");
        return std::process::ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let cluster_secret = match lakelink_protocol::cluster::resolve(args.cluster_secret_file.as_deref(), false) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("lakelink-executor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let options = ExecutorOptions {
        cluster_secret,
        memory_pool: args.memory_pool,
        max_unread_results: args.max_unread_results,
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| lakelink_protocol::tls::TlsIdentity { cert, key }),
        cluster_ca: args.tls_ca.map(lakelink_protocol::tls::TlsCa),
        scheduler: args.scheduler,
        bind_host: args.bind,
        allow_plaintext_cluster: args.allow_plaintext_cluster,
        external_host: args.external_host,
        port: args.port,
        grpc_port: args.grpc_port,
        concurrent_tasks: args.concurrent_tasks,
        work_dir: args.work_dir,
        push_scheduling: args.scheduling == "push",
        extensions: Extensions::lakelink(),
    };
    match run(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lakelink-executor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
