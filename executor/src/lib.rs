//! The LakeLink executor: a Ballista executor that knows LakeLink's functions
//! and codecs, run as its own process ([`run`]) or inside another one
//! ([`start_in_process`], used by embedded mode and tests; it always takes
//! tasks pushed by the scheduler).
#![warn(missing_docs)]

pub mod flight;
pub mod follow;
pub mod results;
pub mod stage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::ExecutorRegistration;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::scheduler::{ExecutorOperatingSystemSpecification, ExecutorSpecification};
use ballista_executor::executor::Executor;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::metrics::LoggingMetricsCollector;
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
    /// No loopback port to serve on (in-process executors).
    #[error("cannot listen on a loopback port: {0}")]
    Listen(std::io::Error),
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
    lakelink_model::config::check_process_defaults().map_err(|e| ExecutorError::Config(e.to_string()))?;
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
        override_config_producer: Some(config_producer(ext)),
        override_arrow_flight_service: Some(Arc::new(flight_server)),
        override_execution_engine: Some(Arc::new(stage::StageEngine::default())),
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
        ballista_core::utils::create_grpc_server(&grpc)
            .add_service(flight_service(work_dir))
            .serve_with_shutdown(addr, shutdown.recv())
            .await
            .map_err(ballista_core::error::BallistaError::TonicError)
    })
}

/// [`flight::ExecutorFlightService`] over `work_dir`, with the message limits.
fn flight_service(
    work_dir: String,
) -> arrow_flight::flight_service_server::FlightServiceServer<flight::ExecutorFlightService> {
    arrow_flight::flight_service_server::FlightServiceServer::new(flight::ExecutorFlightService::new(work_dir))
        .max_decoding_message_size(FLIGHT_MESSAGE_LIMIT)
        .max_encoding_message_size(FLIGHT_MESSAGE_LIMIT)
}

/// Largest Flight message the executor sends or accepts (Ballista's default).
const FLIGHT_MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// Every task's session: Ballista's defaults with LakeLink's functions.
fn config_producer(ext: &Extensions) -> ballista_core::ConfigProducer {
    let ext = ext.clone();
    Arc::new(move || ext.configure(SessionConfig::new_with_ballista()))
}

/// Starts an executor inside this process for the scheduler at `scheduler`,
/// which must push tasks (`SchedulerOptions::push_scheduling`, the default):
/// tasks arrive the moment they are ready and finished ones are reported at
/// once, where a polling executor waits up to 50 ms for each. It serves data
/// (the same Flight service as an executor process) and takes tasks on free
/// loopback ports, keeps its shuffle files in a temporary folder, and runs
/// until the tokio runtime ends or the scheduler stops it. Unlike [`run`] it
/// leaves Ctrl-C to the host process (the shell cancels a query with it).
pub async fn start_in_process(
    scheduler: SocketAddr,
    concurrent_tasks: usize,
    ext: &Extensions,
) -> Result<(), ExecutorError> {
    let url = format!("http://{scheduler}");
    let client = SchedulerGrpcClient::connect(url.clone())
        .await
        .map_err(|e| ExecutorError::Connect { addr: url.clone(), reason: e.to_string() })?
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let vcores = concurrent_tasks.max(1);
    let work = tempfile::Builder::new().prefix("lakelink-executor-").tempdir().map_err(ExecutorError::WorkDir)?;
    let work_dir = work.path().to_string_lossy().into_owned();

    // The Flight service listens before the executor registers, so the
    // scheduler never learns of a port nobody serves.
    let flight_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(ExecutorError::Listen)?;
    let flight_port = flight_listener.local_addr().map_err(ExecutorError::Listen)?.port();
    let shutdown = ballista_executor::shutdown::ShutdownNotifier::new();
    {
        let service = flight_service(work_dir.clone());
        let mut stop = shutdown.subscribe_for_shutdown();
        // A listener bound here keeps none of the server's TCP settings:
        // without no-delay, a small response waits ~40 ms for an acknowledgement.
        let incoming = tonic::transport::server::TcpIncoming::from(flight_listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            ballista_core::utils::create_grpc_server(&Default::default())
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move { stop.recv().await })
                .await
        });
    }

    let config_producer = config_producer(ext);
    let runtime_producer: ballista_core::RuntimeProducer =
        Arc::new(|_: &SessionConfig| Ok(Arc::new(RuntimeEnvBuilder::new().build()?)));
    let config = Arc::new(ExecutorProcessConfig {
        bind_host: "127.0.0.1".into(),
        grpc_max_decoding_message_size: FLIGHT_MESSAGE_LIMIT as u32,
        grpc_max_encoding_message_size: FLIGHT_MESSAGE_LIMIT as u32,
        executor_heartbeat_interval_seconds: 5,
        ..Default::default()
    });
    // Ballista binds the task port itself, from a number: take a free one,
    // and another if something else grabbed it in between.
    let (stop_send, mut stop_recv) = tokio::sync::mpsc::channel::<bool>(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let grpc_port = free_loopback_port().map_err(ExecutorError::Listen)?;
        let metadata = ExecutorRegistration {
            id: ballista_core::ids::new_instance_id(),
            host: Some("127.0.0.1".into()),
            port: flight_port.into(),
            grpc_port: grpc_port.into(),
            specification: Some(ExecutorSpecification::default().with_vcores(vcores as u32).into()),
            os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
            ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
        };
        let executor = Arc::new(Executor::new(
            metadata,
            &work_dir,
            runtime_producer.clone(),
            config_producer.clone(),
            Arc::new(ext.function_registry()),
            Arc::new(LoggingMetricsCollector::default()),
            vcores,
            Arc::new(stage::StageEngine::default()),
        ));
        let codec: BallistaCodec = BallistaCodec::new(ext.logical_codec(), ext.physical_codec());
        let started = ballista_executor::executor_server::startup(
            client.clone(),
            config.clone(),
            executor,
            codec,
            stop_send.clone(),
            &shutdown,
            ballista_executor::health::ExecutorHealth::new(),
        )
        .await;
        match started {
            Ok(_) => break,
            Err(ballista_core::error::BallistaError::IoError(e))
                if attempt < 3 && e.kind() == std::io::ErrorKind::AddrInUse =>
            {
                tracing::warn!("in-process executor: task port {grpc_port} taken ({e}), trying another");
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Keeps the services and the shuffle folder alive until the scheduler
    // asks the executor to stop or the runtime shuts down.
    tokio::spawn(async move {
        let _work = work;
        stop_recv.recv().await;
        drop(shutdown);
    });
    Ok(())
}

/// A loopback port free at the time of asking.
fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
