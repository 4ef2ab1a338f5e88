//! The LakeLink executor: a Ballista executor that knows LakeLink's functions
//! and codecs, run as its own process ([`run`]) or inside another one
//! ([`start_in_process`], used by embedded mode and tests; it polls the
//! scheduler's cluster port for tasks and serves its data in plaintext on
//! loopback).
#![warn(missing_docs)]

pub mod flight;
pub mod follow;
pub mod ledger;
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
use lakelink_protocol::cluster::{ClusterLink, ClusterSecret};
use lakelink_protocol::tls::{TlsCa, TlsIdentity};
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
    /// Without TLS, listen or reach the scheduler beyond loopback anyway
    /// (the cluster secret then crosses the network in the clear).
    pub allow_plaintext_cluster: bool,
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
    /// instead of polling for them: the executor then serves Ballista's task
    /// port, which LakeLink cannot authenticate (trusted networks only).
    pub push_scheduling: bool,
    /// The cluster secret: presented to the scheduler and to other
    /// executors, required on this executor's data port.
    pub cluster_secret: ClusterSecret,
    /// The certificate and key the data port serves TLS with; `None`: plaintext.
    pub tls: Option<TlsIdentity>,
    /// The CA of the scheduler's and the other executors' certificates:
    /// with it, this executor reaches them over TLS.
    pub cluster_ca: Option<TlsCa>,
    /// The custom functions every node knows.
    pub extensions: Extensions,
    /// The memory the executor's tasks may hold, split evenly between its
    /// task slots (operators that can spill do so at their share); `None`:
    /// Ballista's default share of the host's memory; `Some(0)`: no limit.
    pub memory_pool: Option<u64>,
    /// The most bytes of granted, unread results kept for clients (0: no cap).
    pub max_unread_results: u64,
}

/// The default cap on the unread result files an executor keeps for clients.
pub const DEFAULT_MAX_UNREAD_RESULTS: u64 = 4 << 30;

/// Runs an executor until it is stopped (Ctrl-C, SIGTERM, or the scheduler).
pub async fn run(options: ExecutorOptions) -> Result<(), ExecutorError> {
    lakelink_model::config::check_process_defaults().map_err(|e| ExecutorError::Config(e.to_string()))?;
    // Tasks carry the scheduler's folders; this host uses its own.
    lakelink_model::config::keep_host_settings();
    if options.tls.is_none() && !options.allow_plaintext_cluster {
        let beyond = [options.bind_host.as_str(), options.scheduler.rsplit_once(':').map_or("", |(h, _)| h)]
            .into_iter()
            .find(|host| !is_loopback(host));
        if let Some(host) = beyond {
            return Err(ExecutorError::Config(format!(
                "the cluster secret would cross the network in the clear ({host} is beyond loopback): serve TLS \
                 (--tls-cert, --tls-key, --tls-ca), keep the executor and its scheduler on loopback, or pass \
                 --allow-plaintext-cluster"
            )));
        }
    }
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
    let link = ClusterLink { secret: options.cluster_secret.clone(), ca: options.cluster_ca.clone() };
    // Each input of a query is asked once over the cluster, within one budget.
    let ledger = ledger::SchedulerLedger::new(&host, port, &link).map_err(ExecutorError::Config)?;
    lakelink_model::engine::use_ledger(std::sync::Arc::new(ledger));
    if options.push_scheduling && options.tls.is_some() {
        return Err(ExecutorError::Config(
            "push scheduling cannot use TLS: Ballista's task port (--grpc-port) serves plaintext; use pull \
             scheduling (the default)"
                .into(),
        ));
    }
    let tls = options.tls.as_ref().map(TlsIdentity::server_config).transpose().map_err(ExecutorError::Config)?;
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
        override_config_producer: Some(config_producer(ext, &link)),
        override_create_grpc_client_endpoint: Some(link.endpoint_override()),
        override_arrow_flight_service: Some(flight_server(
            options.cluster_secret.clone(),
            tls,
            options.max_unread_results,
        )),
        override_runtime_producer: Some(runtime_producer(Some(work_dir.clone()))),
        memory_pool_size: options.memory_pool,
        override_execution_engine: Some(Arc::new(stage::StageEngine::default())),
        ..Default::default()
    };
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}

/// Whether `host` (an address or `localhost`) is a loopback address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Serves the executor's Arrow Flight service ([`flight::ExecutorFlightService`]),
/// with TLS when `tls` is given.
fn flight_server(
    secret: ClusterSecret,
    tls: Option<tonic::transport::ServerTlsConfig>,
    max_unread: u64,
) -> Arc<ballista_executor::ArrowFlightServerProvider> {
    Arc::new(move |work_dir, addr, mut shutdown, grpc| {
        let service = flight_service(work_dir, secret.clone(), max_unread, false);
        let tls = tls.clone();
        // Bare on purpose: the Flight server lives until the executor shuts down.
        #[allow(clippy::disallowed_methods)]
        let server = tokio::spawn(async move {
            let mut server = ballista_core::utils::create_grpc_server(&grpc);
            if let Some(tls) = tls {
                server = server.tls_config(tls).map_err(ballista_core::error::BallistaError::TonicError)?;
            }
            tracing::info!("executor Arrow Flight service listening on {addr}");
            server
                .add_service(service)
                .serve_with_shutdown(addr, shutdown.recv())
                .await
                .map_err(ballista_core::error::BallistaError::TonicError)
        });
        server
    })
}

/// [`flight::ExecutorFlightService`] over `work_dir`, with the message limits
/// (`in_process`: an executor inside the scheduler's process).
fn flight_service(
    work_dir: String,
    secret: ClusterSecret,
    max_unread: u64,
    in_process: bool,
) -> arrow_flight::flight_service_server::FlightServiceServer<flight::ExecutorFlightService> {
    let mut service = flight::ExecutorFlightService::new(work_dir, secret, max_unread);
    if in_process {
        service = service.in_process();
    }
    arrow_flight::flight_service_server::FlightServiceServer::new(service)
        .max_decoding_message_size(FLIGHT_MESSAGE_LIMIT)
        .max_encoding_message_size(FLIGHT_MESSAGE_LIMIT)
}

/// Largest Flight message the executor sends or accepts (Ballista's default).
const FLIGHT_MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// Every task's session: Ballista's defaults with LakeLink's functions, its
/// shuffle reads reaching other executors as `link` says.
fn config_producer(ext: &Extensions, link: &ClusterLink) -> ballista_core::ConfigProducer {
    let (ext, present) = (ext.clone(), link.endpoint_override());
    Arc::new(move || {
        ext.configure(
            SessionConfig::new_with_ballista().with_ballista_override_create_grpc_client_endpoint(present.clone()),
        )
    })
}

/// Every task's runtime: the process's object stores (a lake on a store is
/// read with this host's credentials), spill files in `temp_dir` when given.
fn runtime_producer(temp_dir: Option<PathBuf>) -> ballista_core::RuntimeProducer {
    let stores = lakelink_protocol::store::registry();
    Arc::new(move |_: &SessionConfig| {
        let mut runtime = RuntimeEnvBuilder::new().with_object_store_registry(stores.clone());
        if let Some(dir) = &temp_dir {
            runtime = runtime.with_temp_file_path(dir);
        }
        runtime.build_arc()
    })
}

/// Starts an executor inside this process for the scheduler whose cluster
/// port is `scheduler`, reaching it as `link` says. It polls the scheduler for
/// tasks (continuously while a job is active), serves its data (the same
/// Flight service as an executor process) on a free loopback port, keeps its
/// shuffle files in a temporary folder, and runs until the tokio runtime
/// ends. Unlike [`run`] it leaves Ctrl-C to the host process (the shell
/// cancels a query with it).
pub async fn start_in_process(
    scheduler: SocketAddr,
    concurrent_tasks: usize,
    ext: &Extensions,
    link: &ClusterLink,
) -> Result<(), ExecutorError> {
    let url = format!("http://{scheduler}");
    let connect_error = |e: &dyn std::fmt::Display| ExecutorError::Connect { addr: url.clone(), reason: e.to_string() };
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| connect_error(&e))?;
    let channel =
        link.endpoint(endpoint).map_err(|e| connect_error(&e))?.connect().await.map_err(|e| connect_error(&e))?;
    let secret = &link.secret;
    let client = SchedulerGrpcClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let vcores = concurrent_tasks.max(1);
    let work = tempfile::Builder::new().prefix("lakelink-executor-").tempdir().map_err(ExecutorError::WorkDir)?;
    let work_dir = work.path().to_string_lossy().into_owned();

    // The Flight service listens before the executor first polls, so the
    // scheduler never learns of a port nobody serves.
    let flight_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(ExecutorError::Listen)?;
    let flight_port = flight_listener.local_addr().map_err(ExecutorError::Listen)?.port();
    let shutdown = ballista_executor::shutdown::ShutdownNotifier::new();
    {
        let service = flight_service(work_dir.clone(), secret.clone(), DEFAULT_MAX_UNREAD_RESULTS, true);
        let mut stop = shutdown.subscribe_for_shutdown();
        // A listener bound here keeps none of the server's TCP settings:
        // without no-delay, a small response waits ~40 ms for an acknowledgement.
        let incoming = tonic::transport::server::TcpIncoming::from(flight_listener).with_nodelay(Some(true));
        // Bare on purpose: the Flight server lives until the executor shuts down.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            ballista_core::utils::create_grpc_server(&Default::default())
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move { stop.recv().await })
                .await
        });
    }

    let runtime_producer = runtime_producer(None);
    let metadata = ExecutorRegistration {
        id: ballista_core::ids::new_instance_id(),
        host: Some("127.0.0.1".into()),
        port: flight_port.into(),
        grpc_port: 0,
        specification: Some(ExecutorSpecification::default().with_vcores(vcores as u32).into()),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
    };
    let executor = Arc::new(Executor::new(
        metadata,
        &work_dir,
        runtime_producer,
        config_producer(ext, link),
        Arc::new(ext.function_registry()),
        Arc::new(LoggingMetricsCollector::default()),
        vcores,
        Arc::new(stage::StageEngine::default()),
    ));
    let codec: BallistaCodec = BallistaCodec::new(ext.logical_codec(), ext.physical_codec());
    // Bare on purpose: the executor polls for tasks until the runtime ends;
    // it holds the services and the shuffle folder that long.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        let _work = work;
        let _shutdown = shutdown;
        let health = ballista_executor::health::ExecutorHealth::new();
        if let Err(e) = ballista_executor::execution_loop::poll_loop(client, executor, codec, None, None, health).await
        {
            tracing::error!("in-process executor stopped: {e}");
        }
    });
    Ok(())
}
