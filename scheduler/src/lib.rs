//! The LakeLink scheduler: a Ballista scheduler over a lake folder, with the
//! Arrow Flight SQL front door for clients.
//!
//! [`start`] binds two ports, opens the lake, starts Ballista's scheduler
//! with LakeLink's functions and codecs, and serves Flight SQL alone on the
//! client port (with the client credentials, [`auth`]) and Ballista's
//! scheduler protocol alone on the cluster port (with the cluster secret),
//! both with TLS when given a certificate ([`tls`]).
#![warn(missing_docs)]

/// Optional bearer-token and password authentication.
pub mod auth;
/// The lake catalog: every entry of the lake folder is a table.
pub mod catalog;
/// The scheduler's error type and its gRPC statuses.
pub mod error;
/// The Arrow Flight SQL service.
pub mod flight_sql;
/// A distributed query's job, followed while it runs.
pub mod job;
/// The cluster's ledger of model calls, served to the executors.
pub mod ledger;
/// The bounds every statement runs within (time, result size, memory).
pub mod limits;
/// The scheduler's calls to every executor (cancel a query's model calls,
/// read the hosts' model-call trails).
pub mod members;
/// Planning and running client SQL as distributed jobs.
pub mod query;
/// A distributed query's result on its way to the client.
pub mod result;
/// Every plan rewrite made before a job is submitted (top-N, lookups,
/// semi-join reduction) and the planner settings LakeLink changes.
pub mod rewrite;
/// The `system` schema (`system.model_calls`).
pub mod system;
/// TLS on the scheduler's ports.
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use axum::serve::ListenerExt;
use ballista::prelude::SessionContextExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use lakelink_udf::Extensions;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use auth::AuthConfig;
pub use error::SchedulerError;
pub use lakelink_protocol::cluster::{ClusterLink, ClusterSecret};
pub use lakelink_protocol::tls::{TlsCa, TlsIdentity};

use crate::auth::Authenticator;
use crate::catalog::LakeSchema;
use crate::flight_sql::LakeLinkFlightSql;
use crate::query::{CATALOG, QueryEngine, SCHEMA};

/// The largest gRPC message either side sends: result batches are split below it.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The lake: a local folder, a `file://` URL or an object-store URL
    /// (`s3://bucket/prefix`, `gs://`, `az://`, `http(s)://`).
    pub lake: String,
    /// How old the lake's listing may grow before a statement lists it
    /// again; `None`: 0 for a local folder, 60 s for a store
    /// (see [`catalog`]).
    pub lake_refresh: Option<std::time::Duration>,
    /// The address to listen on.
    pub bind_host: String,
    /// The client port (Flight SQL); 0 picks a free one.
    pub port: u16,
    /// The cluster port (Ballista's scheduler protocol, for executors only);
    /// 0: the client port + 1, or a free one when the client port is 0.
    pub cluster_port: u16,
    /// The secret executors present on the cluster port and on each other's
    /// data ports.
    pub cluster_secret: ClusterSecret,
    /// Credentials clients must present.
    pub auth: AuthConfig,
    /// The certificate and key both ports serve TLS with; `None`: plaintext.
    pub tls: Option<TlsIdentity>,
    /// The CA of the executors' certificates: with it, the scheduler reads
    /// results from executors over TLS, and clients are sent to them with
    /// `grpc+tls://`. It also checks the scheduler's own certificate where
    /// Ballista's client in the scheduler reaches the cluster port.
    pub cluster_ca: Option<TlsCa>,
    /// Serve client credentials (a token, passwords) over plaintext on an
    /// address beyond loopback; refused unless set.
    pub allow_plaintext_auth: bool,
    /// Serve the cluster port (where executors present the cluster secret)
    /// over plaintext on an address beyond loopback; refused unless set.
    pub allow_plaintext_cluster: bool,
    /// The custom functions every node knows.
    pub extensions: Extensions,
    /// An executor silent for this long is considered dead.
    pub executor_timeout_seconds: u64,
    /// Push tasks to executors, which then serve Ballista's executor gRPC:
    /// a port LakeLink cannot authenticate, so off by default (executors
    /// poll the cluster port); every executor must use the same mode.
    pub push_scheduling: bool,
    /// Partitions per query stage; 0 means one per executor task slot
    /// registered when the query is planned (at least 2).
    pub target_partitions: usize,
    /// DataFusion and Ballista settings (`datafusion.*`, `ballista.*`) for
    /// every query, e.g. `ballista.shuffle.compression.codec = none`.
    pub settings: Vec<(String, String)>,
    /// Top-N lookups over tables of at least this many bytes on disk run in
    /// two passes (`u64::MAX`: never); see `QueryEngine::narrow_top_n`.
    pub top_n_narrowing_min_bytes: u64,
    /// Reduce semi and anti joins (`EXISTS`, `NOT EXISTS`, `IN (subquery)`)
    /// of a small side against a large one before they run, so the large
    /// side is not shuffled; see the `semi_join` module.
    pub semi_join_reduction: bool,
    /// Where clients read distributed results.
    pub result_endpoints: ResultEndpoints,
    /// The bounds every statement runs within.
    pub limits: limits::Limits,
}

/// Where Flight SQL clients read a distributed query's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultEndpoints {
    /// Through the scheduler, which fetches the result files from the
    /// executors and passes them on: clients need to reach the scheduler only.
    #[default]
    Scheduler,
    /// From the executors that wrote them, one endpoint per result file:
    /// the job runs when the client asks for the statement's endpoints, and
    /// the client must reach every executor's data port (its registered
    /// host), where the one-time grant in each ticket admits the read.
    /// Saves the scheduler's hop (docs/sql.md, "Result endpoints").
    Executors,
}

impl SchedulerOptions {
    /// Defaults for a lake: all interfaces, ports 50050 and 50051, no client
    /// auth, a new random cluster secret.
    pub fn new(lake: impl Into<String>) -> Self {
        Self {
            lake: lake.into(),
            lake_refresh: None,
            bind_host: "0.0.0.0".into(),
            port: 50050,
            cluster_port: 0,
            cluster_secret: ClusterSecret::generate(),
            auth: AuthConfig::default(),
            tls: None,
            cluster_ca: None,
            allow_plaintext_auth: false,
            allow_plaintext_cluster: false,
            extensions: Extensions::lakelink(),
            executor_timeout_seconds: 30,
            push_scheduling: false,
            target_partitions: 0,
            settings: Vec::new(),
            top_n_narrowing_min_bytes: rewrite::top_n::TOP_N_NARROWING_MIN_BYTES,
            semi_join_reduction: true,
            result_endpoints: ResultEndpoints::Scheduler,
            limits: limits::Limits::default(),
        }
    }
}

/// How long the scheduler keeps a finished job's state (its stages, plans
/// and metrics). Ballista keeps it an hour, for its own web UI and job
/// listings, which LakeLink does not serve; a result's files are known by the
/// time its job ends. Kept an hour, the scheduler grew by 1.1 MiB a query over
/// TPC-H SF 1 for that hour (benches/results/HISTORY.md, "Scheduler memory").
pub const FINISHED_JOB_STATE_SECONDS: u64 = 60;

/// The number of the client connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(pub u64);

/// A scheduler serving in the background.
#[derive(Debug)]
pub struct RunningScheduler {
    /// The client port's address (Flight SQL).
    pub addr: SocketAddr,
    /// The cluster port's address (Ballista's scheduler protocol).
    pub cluster_addr: SocketAddr,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    task: JoinHandle<Result<(), SchedulerError>>,
}

impl RunningScheduler {
    /// The address clients connect to from this machine.
    pub fn local_addr(&self) -> SocketAddr {
        loopback(self.addr)
    }

    /// The address executors connect to from this machine.
    pub fn local_cluster_addr(&self) -> SocketAddr {
        loopback(self.cluster_addr)
    }

    /// Waits until the server stops.
    pub async fn wait(mut self) -> Result<(), SchedulerError> {
        (&mut self.task).await.map_err(|e| SchedulerError::Config(format!("scheduler task failed: {e}")))?
    }

    /// Stops serving.
    pub async fn stop(mut self) -> Result<(), SchedulerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        self.wait().await
    }
}

/// `addr`, with a wildcard address made the loopback address.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Binds `host:port`.
async fn bind(host: &str, port: u16) -> Result<(tokio::net::TcpListener, SocketAddr), SchedulerError> {
    let addr = format!("{host}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| SchedulerError::Bind { addr: addr.clone(), source })?;
    let bound = listener.local_addr().map_err(|source| SchedulerError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Serves `router` on `listener` (with TLS when `tls` is given), numbering
/// each accepted connection (client sessions hang off it) and noting its
/// peer address (Ballista's scheduler reads it to learn where an executor
/// that did not name its host can be reached), until `stop` resolves.
fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<Result<(), SchedulerError>>, SchedulerError> {
    match tls {
        Some(config) => {
            let addr = listener.local_addr().map_err(|source| SchedulerError::Bind { addr: "?".into(), source })?;
            let listener = tls::TlsListener::new(listener, config)
                .map_err(|source| SchedulerError::Bind { addr: addr.to_string(), source })?;
            Ok(serve_on(listener, router, stop))
        }
        None => Ok(serve_on(listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream)), router, stop)),
    }
}

fn serve_on<L>(
    listener: L,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), SchedulerError>>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let next_connection = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let app = tower::service_fn(move |incoming: axum::serve::IncomingStream<'_, L>| {
        let peer = *incoming.remote_addr();
        let id = next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)))
            .layer(axum::Extension(ConnectionId(id)));
        async move { Ok::<_, std::convert::Infallible>(router) }
    });
    // Bare on purpose: the server lives until stopped.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(
        async move { axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(SchedulerError::Serve) },
    )
}

/// Starts a scheduler and returns once it is listening.
pub async fn start(options: SchedulerOptions) -> Result<RunningScheduler, SchedulerError> {
    lakelink_model::config::check_process_defaults().map_err(|e| SchedulerError::Config(e.to_string()))?;
    // One runtime for every planning session: the lake's stores, and the
    // file lists and Parquet footers the catalog and the planner learn.
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_object_store_registry(lakelink_protocol::store::registry())
        .with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_list_files_cache_limit(catalog::LIST_CACHE_BYTES),
        )
        .build_arc()?;
    let lake = Arc::new(LakeSchema::open(&options.lake, runtime.clone(), options.lake_refresh).await?);
    let tables = lake.entries();
    tracing::info!("lake {} holds {} table(s)", lake.location(), tables.len());
    catalog::refresh_every(&lake);
    if !lake.location().is_remote() {
        for (name, err) in lake.check_all().await {
            tracing::warn!("table {name} cannot be read and will fail when queried: {err}");
        }
    }

    options.auth.check().map_err(SchedulerError::Config)?;
    if options.tls.is_some() != options.cluster_ca.is_some() {
        return Err(SchedulerError::Config(
            "TLS needs both a certificate (--tls-cert, --tls-key) and the cluster's CA (--tls-ca)".into(),
        ));
    }
    if options.push_scheduling && options.tls.is_some() {
        return Err(SchedulerError::Config(
            "push scheduling cannot use TLS: Ballista's executor task port serves plaintext; use pull scheduling \
             (the default)"
                .into(),
        ));
    }
    let (listener, addr) = bind(&options.bind_host, options.port).await?;
    if options.auth.enabled() && options.tls.is_none() && !addr.ip().is_loopback() && !options.allow_plaintext_auth {
        return Err(SchedulerError::Config(format!(
            "client credentials would cross the network in the clear on {addr}: serve TLS (--tls-cert, --tls-key), \
             listen on loopback only, or pass --allow-plaintext-auth"
        )));
    }
    let cluster_port = match (options.cluster_port, options.port) {
        (0, 0) => 0,
        (0, port) => {
            port.checked_add(1).ok_or_else(|| SchedulerError::Config("--port 65535 leaves no cluster port".into()))?
        }
        (port, _) => port,
    };
    let (cluster_listener, cluster_addr) = bind(&options.bind_host, cluster_port).await?;
    if options.tls.is_none() && !cluster_addr.ip().is_loopback() && !options.allow_plaintext_cluster {
        return Err(SchedulerError::Config(format!(
            "the cluster secret would cross the network in the clear on the cluster port {cluster_addr}: serve TLS \
             (--tls-cert, --tls-key, --tls-ca), listen on loopback only (--bind 127.0.0.1), or pass \
             --allow-plaintext-cluster"
        )));
    }
    let secret = options.cluster_secret.clone();
    let link = ClusterLink { secret: secret.clone(), ca: options.cluster_ca.clone() };

    let ext = options.extensions.clone().with_runtime_env(runtime);
    let mut config = SchedulerConfig::default()
        .with_hostname("localhost")
        .with_port(cluster_addr.port())
        .with_scheduler_policy(if options.push_scheduling {
            TaskSchedulingPolicy::PushStaged
        } else {
            TaskSchedulingPolicy::PullStaged
        })
        .with_remove_executor_wait_secs(0)
        .with_finished_job_state_clean_up_interval_seconds(FINISHED_JOB_STATE_SECONDS)
        .with_grpc_server_max_decoding_message_size(MAX_MESSAGE_SIZE as u32)
        .with_grpc_server_max_encoding_message_size(MAX_MESSAGE_SIZE as u32)
        .with_override_config_producer({
            let ext = ext.clone();
            Arc::new(move || ext.configure(SessionConfig::new_with_ballista()))
        })
        .with_override_session_builder({
            let ext = ext.clone();
            Arc::new(move |config| ext.session_state(config))
        });
    config.bind_host = options.bind_host.clone();
    config.executor_timeout_seconds = options.executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = options.executor_timeout_seconds.clamp(1, 15);
    config.override_create_grpc_client_endpoint = Some(link.endpoint_override());
    config.override_logical_codec = Some(ext.logical_codec());
    config.override_physical_codec = Some(ext.physical_codec());
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config).await?;

    let partitions = match options.target_partitions {
        0 => query::Partitions::PerSlot,
        n => query::Partitions::Fixed(n),
    };
    let rewrites = rewrite::Rewrites {
        top_n_narrowing_min_bytes: options.top_n_narrowing_min_bytes,
        semi_join_reduction: options.semi_join_reduction,
    };
    let jobs = Arc::new(job::BallistaJobs { server: scheduler.clone(), link: link.clone() });
    let engine = query_engine(&ext, lake, cluster_addr, &link, jobs, partitions, rewrites, &options.settings).await?;
    let engine = Arc::new(engine.with_query_memory(options.limits.query_memory));
    let auth = Authenticator::new(options.auth.clone());
    let loopback = addr.ip().is_loopback();
    if !options.auth.enabled() && !loopback {
        tracing::warn!("Flight SQL has no authentication: anyone who reaches port {} can query the lake", addr.port());
    }
    let flight = FlightServiceServer::new(flight_sql::door::ClientDoor(
        LakeLinkFlightSql::new(engine, auth.clone(), link.clone())
            .with_result_endpoints(options.result_endpoints)
            .with_limits(options.limits),
    ))
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let scheduler_grpc = SchedulerGrpcServer::new(scheduler)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);

    // Two doors: the client port serves Flight SQL only (with the client
    // credentials), the cluster port Ballista's scheduler protocol and the
    // ledger of model calls only (with the cluster secret).
    let mut client_routes = tonic::service::RoutesBuilder::default();
    client_routes.add_service(InterceptedService::new(flight, auth));
    let mut cluster_routes = tonic::service::RoutesBuilder::default();
    cluster_routes.add_service(InterceptedService::new(scheduler_grpc, secret.interceptor()));
    // One query's model calls over every process (this one included).
    let book = lakelink_model::ledger::process_book();
    lakelink_model::engine::use_ledger(book.clone());
    let ledger = FlightServiceServer::new(ledger::LedgerService::new(book))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    cluster_routes.add_service(InterceptedService::new(ledger, secret.interceptor()));
    let (shutdown, stop) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let tls = options.tls.as_ref().map(tls::server_config).transpose()?;
    let client = serve(listener, tls.clone(), client_routes.routes().into_axum_router(), stopped(stop.clone()))?;
    let cluster = serve(cluster_listener, tls, cluster_routes.routes().into_axum_router(), stopped(stop))?;
    // Bare on purpose: it lives as long as the two servers it waits for.
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(async move {
        let (client, cluster) = tokio::join!(client, cluster);
        let failed = |e: tokio::task::JoinError| SchedulerError::Config(format!("scheduler task failed: {e}"));
        client.map_err(failed)??;
        cluster.map_err(failed)?
    });
    tracing::info!("LakeLink scheduler: Flight SQL clients on {addr}, executors (the cluster port) on {cluster_addr}");
    Ok(RunningScheduler { addr, cluster_addr, shutdown: Some(shutdown), task })
}

/// Turns Nagle's algorithm off on an accepted connection. Left on (axum's
/// default), a small response written after another waits for the peer's
/// delayed acknowledgement, about 40 ms on Linux: every statement's
/// `GetFlightInfo`, `DoGet` and every executor's task report paid it.
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set on a connection: {e}");
    }
}

/// The planning sessions of the Flight SQL front door.
#[allow(clippy::too_many_arguments)]
async fn query_engine(
    ext: &Extensions,
    lake: Arc<LakeSchema>,
    cluster_addr: SocketAddr,
    link: &ClusterLink,
    cluster: Arc<dyn query::Cluster>,
    partitions: query::Partitions,
    rewrites: rewrite::Rewrites,
    settings: &[(String, String)],
) -> Result<QueryEngine, SchedulerError> {
    let config = rewrite::settings::planning_config(settings)?;
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema(SCHEMA, lake.clone())?;
    catalog.register_schema(system::SCHEMA, Arc::new(system::SystemSchema { cluster: Some(cluster.clone()) }))?;

    // Ballista's client in this session (the statements it runs itself)
    // reaches the scheduler's cluster port, presenting the secret.
    let distributed_config =
        config.clone().with_ballista_override_create_grpc_client_endpoint(link.endpoint_override());
    let state = ext.session_state(distributed_config)?;
    let addr = loopback(cluster_addr);
    let distributed = SessionContext::remote_with_state(&format!("df://{}:{}", addr.ip(), addr.port()), state).await?;
    ext.register_all(&distributed);
    distributed.register_catalog(CATALOG, catalog.clone());

    let local = SessionContext::new_with_config_rt(ext.configure(config), ext.runtime_env()?);
    ext.register_all(&local);
    local.register_catalog(CATALOG, catalog);
    Ok(QueryEngine::new(distributed, local, lake, cluster, partitions, rewrites))
}
