//! The LakeLink executor: a Ballista executor that knows LakeLink's functions
//! and codecs, run as its own process ([`run`]) or inside another one
//! ([`start_in_process`], used by embedded mode and tests).
#![warn(missing_docs)]

pub mod flight;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use lakelink_udf::Extensions;

/// Everything that can stop an executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The scheduler address is not `HOST:PORT`.
    #[error("invalid scheduler address '{0}': expected HOST:PORT")]
    SchedulerAddress(String),
    /// The work folder could not be made.
    #[error("cannot create the work folder: {0}")]
    WorkDir(std::io::Error),
    /// The scheduler could not be reached.
    #[error("cannot connect to the scheduler at {addr}: {reason}")]
    Connect {
        /// The scheduler's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Ballista's executor failed.
    #[error("executor failed: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
    /// The model configuration (config file or environment) is invalid.
    #[error("{0}")]
    Config(String),
}

/// How to run an executor process.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, as `HOST:PORT`.
    pub scheduler: String,
    /// Address to listen on.
    pub bind_host: String,
    /// Host name the scheduler and other executors reach this executor by.
    pub external_host: Option<String>,
    /// Port serving shuffle and result data (Arrow Flight).
    pub port: u16,
    /// Port of the executor's gRPC service.
    pub grpc_port: u16,
    /// Tasks run at once; 0 means one per core.
    pub concurrent_tasks: usize,
    /// Folder for shuffle files; a temporary folder when not given.
    pub work_dir: Option<PathBuf>,
    /// Receive tasks pushed by the scheduler (it must run in push mode too)
    /// instead of polling for them.
    pub push_scheduling: bool,
    /// The custom functions every node knows.
    pub extensions: Extensions,
}

/// Runs an executor until it is stopped (Ctrl-C, SIGTERM, or the scheduler).
pub async fn run(options: ExecutorOptions) -> Result<(), ExecutorError> {
    lakelink_udf::llm::config::check_process_defaults().map_err(|e| ExecutorError::Config(e.to_string()))?;
    let (host, port) = options
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| ExecutorError::SchedulerAddress(options.scheduler.clone()))?;
    // Held for the life of the process: the folder is removed when it drops.
    let temp = tempfile::Builder::new().prefix("lakelink-executor-").tempdir().map_err(ExecutorError::WorkDir)?;
    let work_dir = options.work_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&work_dir).map_err(ExecutorError::WorkDir)?;
    let ext = &options.extensions;
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.concurrent_tasks,
        task_scheduling_policy: if options.push_scheduling {
            TaskSchedulingPolicy::PushStaged
        } else {
            TaskSchedulingPolicy::PullStaged
        },
        work_dir: Some(work_dir.to_string_lossy().into_owned()),
        job_data_clean_up_interval_seconds: 300,
        // Well inside the scheduler's executor timeout (30 s by default):
        // with push scheduling, heartbeats are all that keeps an executor
        // registered while it works.
        executor_heartbeat_interval_seconds: 5,
        job_data_ttl_seconds: 3600,
        override_function_registry: Some(Arc::new(ext.function_registry())),
        override_logical_codec: Some(ext.logical_codec()),
        override_physical_codec: Some(ext.physical_codec()),
        override_config_producer: Some({
            let ext = ext.clone();
            Arc::new(move || ext.configure(SessionConfig::new_with_ballista()))
        }),
        override_arrow_flight_service: Some(Arc::new(flight_server)),
        ..Default::default()
    };
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}

/// Serves the executor's Arrow Flight service ([`flight::ExecutorFlightService`]).
fn flight_server(
    work_dir: String,
    addr: SocketAddr,
    mut shutdown: ballista_executor::shutdown::Shutdown,
    grpc: ballista_core::utils::GrpcServerConfig,
) -> tokio::task::JoinHandle<Result<(), ballista_core::error::BallistaError>> {
    tokio::spawn(async move {
        tracing::info!("executor Arrow Flight service listening on {addr}");
        let service =
            arrow_flight::flight_service_server::FlightServiceServer::new(flight::ExecutorFlightService::new(work_dir))
                .max_decoding_message_size(FLIGHT_MESSAGE_LIMIT)
                .max_encoding_message_size(FLIGHT_MESSAGE_LIMIT);
        ballista_core::utils::create_grpc_server(&grpc)
            .add_service(service)
            .serve_with_shutdown(addr, shutdown.recv())
            .await
            .map_err(ballista_core::error::BallistaError::TonicError)
    })
}

/// Largest Flight message the executor sends or accepts (Ballista's default).
const FLIGHT_MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// Starts an executor inside this process, polling the scheduler at
/// `scheduler`; it serves data on a free loopback port and runs until the
/// process ends.
pub async fn start_in_process(
    scheduler: SocketAddr,
    concurrent_tasks: usize,
    ext: &Extensions,
) -> Result<(), ExecutorError> {
    let url = format!("http://{scheduler}");
    let client = SchedulerGrpcClient::connect(url.clone())
        .await
        .map_err(|e| ExecutorError::Connect { addr: url, reason: e.to_string() })?
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let config_producer = {
        let ext = ext.clone();
        Arc::new(move || ext.configure(SessionConfig::new_with_ballista()))
    };
    let runtime_producer = Arc::new(|_: &SessionConfig| Ok(Arc::new(RuntimeEnvBuilder::new().build()?)));
    let codec = BallistaCodec::new(ext.logical_codec(), ext.physical_codec());
    ballista_executor::new_standalone_executor_from_builder(
        client,
        concurrent_tasks.max(1),
        config_producer,
        runtime_producer,
        codec,
        ext.function_registry(),
    )
    .await?;
    Ok(())
}
