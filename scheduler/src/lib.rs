//! The LakeLink scheduler: a Ballista scheduler over a lake folder, with the
//! Arrow Flight SQL front door on the same port.
//!
//! [`start`] binds the port, opens the lake, starts Ballista's scheduler with
//! LakeLink's functions and codecs, and serves both Ballista's own gRPC (for
//! executors) and Flight SQL (for clients).
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
/// Planning and running client SQL as distributed jobs.
pub mod query;
/// A distributed query's result on its way to the client.
pub mod result;
/// Semi-join reduction: joins made cheaper by semi joins that run first
/// (semi joins moved below inner joins, join inputs reduced to the keys a
/// small relation holds).
mod semi_join;
/// The `system` schema (`system.model_calls`).
pub mod system;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use axum::serve::ListenerExt;
use ballista::prelude::SessionContextExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::JobStatus;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use lakelink_udf::Extensions;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub use auth::AuthConfig;
pub use error::SchedulerError;

use crate::auth::Authenticator;
use crate::catalog::LakeSchema;
use crate::flight_sql::LakeLinkFlightSql;
use crate::query::{CATALOG, QueryEngine, SCHEMA};

/// The largest gRPC message either side sends: result batches are split below it.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The lake: a local folder or `file://` URL.
    pub lake: String,
    /// The address to listen on.
    pub bind_host: String,
    /// The port for Ballista gRPC and Flight SQL; 0 picks a free one.
    pub port: u16,
    /// Credentials clients must present.
    pub auth: AuthConfig,
    /// The custom functions every node knows.
    pub extensions: Extensions,
    /// An executor silent for this long is considered dead.
    pub executor_timeout_seconds: u64,
    /// Push tasks to executors (which then serve Ballista's executor gRPC)
    /// instead of letting them poll; every executor must use the same mode.
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
    /// the client must reach every executor's Flight port (its registered
    /// host), where Ballista's shuffle service answers anyone: for clients
    /// of one trust domain only. Saves the scheduler's hop (README, "Result
    /// endpoints").
    Executors,
}

impl SchedulerOptions {
    /// Defaults for a lake: all interfaces, port 50050, no auth.
    pub fn new(lake: impl Into<String>) -> Self {
        Self {
            lake: lake.into(),
            bind_host: "0.0.0.0".into(),
            port: 50050,
            auth: AuthConfig::default(),
            extensions: Extensions::lakelink(),
            executor_timeout_seconds: 30,
            push_scheduling: true,
            target_partitions: 0,
            settings: Vec::new(),
            top_n_narrowing_min_bytes: query::TOP_N_NARROWING_MIN_BYTES,
            semi_join_reduction: true,
            result_endpoints: ResultEndpoints::Scheduler,
        }
    }
}

/// How long the scheduler keeps a finished job's state (its stages, plans
/// and metrics). Ballista keeps it an hour, for its own web UI and job
/// listings, which LakeLink does not serve; a result's files are known by the
/// time its job ends. Kept an hour, the scheduler grew by 1.1 MiB a query over
/// TPC-H SF 1 for that hour (README, "Scheduler memory").
pub const FINISHED_JOB_STATE_SECONDS: u64 = 60;

/// The number of the client connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(pub u64);

/// A scheduler serving in the background.
#[derive(Debug)]
pub struct RunningScheduler {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SchedulerError>>,
}

impl RunningScheduler {
    /// The address clients and executors connect to from this machine.
    pub fn local_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    }

    /// Waits until the server stops.
    pub async fn wait(mut self) -> Result<(), SchedulerError> {
        (&mut self.task).await.map_err(|e| SchedulerError::Config(format!("scheduler task failed: {e}")))?
    }

    /// Stops serving.
    pub async fn stop(mut self) -> Result<(), SchedulerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }
}

/// Starts a scheduler and returns once it is listening.
pub async fn start(options: SchedulerOptions) -> Result<RunningScheduler, SchedulerError> {
    lakelink_model::config::check_process_defaults().map_err(|e| SchedulerError::Config(e.to_string()))?;
    let lake = Arc::new(LakeSchema::open(&options.lake)?);
    let tables = lake.entries();
    tracing::info!("lake {} holds {} table(s)", lake.root().display(), tables.len());
    for (name, err) in lake.check_all().await {
        tracing::warn!("table {name} cannot be read and will fail when queried: {err}");
    }

    let addr = format!("{}:{}", options.bind_host, options.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| SchedulerError::Bind { addr: addr.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| SchedulerError::Bind { addr, source })?;

    let ext = options.extensions.clone();
    let mut config = SchedulerConfig::default()
        .with_hostname("localhost")
        .with_port(addr.port())
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
    config.override_logical_codec = Some(ext.logical_codec());
    config.override_physical_codec = Some(ext.physical_codec());
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config).await?;

    let cancel_job: query::JobCanceller = {
        let scheduler = scheduler.clone();
        Arc::new(move |name: String| {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                let jobs = scheduler.state.task_manager.get_all_jobs().await.unwrap_or_default();
                for job in jobs.into_iter().filter(|j| j.job_name == name) {
                    if let Err(e) = scheduler.cancel_job(job.job_id.clone()).await {
                        tracing::warn!("cannot cancel job {}: {e}", job.job_id);
                    }
                }
            });
        })
    };
    let run_job: query::JobRunner = {
        let scheduler = scheduler.clone();
        Arc::new(move |name, session, plan| {
            let scheduler = scheduler.clone();
            Box::pin(async move { run_job(&scheduler, &name, session.session_id(), session.config(), &plan).await })
        })
    };
    let partitions = if options.target_partitions > 0 {
        query::Partitions::Fixed(options.target_partitions)
    } else {
        let scheduler = scheduler.clone();
        query::Partitions::PerSlot(Arc::new(move || {
            let scheduler = scheduler.clone();
            Box::pin(async move {
                let executors = scheduler.state.executor_manager.get_executors_state().await.unwrap_or_default();
                executors.iter().map(|(meta, _, _)| meta.specification.vcores as usize).sum()
            })
        }))
    };
    let engine = Arc::new(
        query_engine(&ext, lake, addr, cancel_job, run_job, partitions, &options.settings)
            .await?
            .with_top_n_narrowing(options.top_n_narrowing_min_bytes)
            .with_semi_join_reduction(options.semi_join_reduction),
    );
    let auth = Authenticator::new(options.auth.clone());
    let loopback = addr.ip().is_loopback();
    if !options.auth.enabled() && !loopback {
        tracing::warn!("Flight SQL has no authentication: anyone who reaches port {} can query the lake", addr.port());
    }
    let flight = FlightServiceServer::new(
        LakeLinkFlightSql::new(engine, auth.clone()).with_result_endpoints(options.result_endpoints),
    )
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let scheduler_grpc = SchedulerGrpcServer::new(scheduler)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);

    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(scheduler_grpc);
    routes.add_service(InterceptedService::new(flight, auth));
    let router = routes.routes().into_axum_router();
    // Every accepted connection gets a number (client sessions hang off it)
    // and its peer address (Ballista's scheduler reads it to learn where an
    // executor that did not name its host can be reached).
    let next_connection = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let app = tower::service_fn(move |incoming: axum::serve::IncomingStream<'_, Listener>| {
        let peer = *incoming.remote_addr();
        let id = next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)))
            .layer(axum::Extension(ConnectionId(id)));
        async move { Ok::<_, std::convert::Infallible>(router) }
    });
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream)), app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
            .map_err(SchedulerError::Serve)
    });
    tracing::info!("LakeLink scheduler listening on {addr} (Ballista gRPC and Arrow Flight SQL)");
    Ok(RunningScheduler { addr, shutdown: Some(shutdown), task })
}

/// The scheduler's listener: every accepted connection sends without delay.
type Listener = axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>;

/// Turns Nagle's algorithm off on an accepted connection. Left on (axum's
/// default), a small response written after another waits for the peer's
/// delayed acknowledgement, about 40 ms on Linux: every statement's
/// `GetFlightInfo`, `DoGet` and every executor's task report paid it.
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set on a connection: {e}");
    }
}

/// Submits `plan` to `scheduler` as job `name` of session `session_id` and
/// answers the job, followed while it runs (see [`job`]).
async fn run_job(
    scheduler: &SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    name: &str,
    session_id: &str,
    config: &SessionConfig,
    plan: &LogicalPlan,
) -> datafusion::error::Result<job::RunningJob> {
    let ballista = |e: ballista_core::error::BallistaError| e.into_datafusion();
    let ctx = scheduler.state.session_manager.create_or_update_session(session_id, config).await.map_err(ballista)?;
    let (subscriber, statuses) = tokio::sync::mpsc::channel::<JobStatus>(16);
    let job_id = scheduler.submit_job(name, ctx, plan, Some(subscriber)).await.map_err(ballista)?;
    Ok(job::follow(scheduler.clone(), job_id, statuses))
}

/// Settings LakeLink plans with instead of DataFusion's or Ballista's
/// defaults; an operator's `--set` of the same key wins, except that
/// [`catalog::FORCE_VIEW_TYPES`] cannot be turned on (see [`planning_config`]).
///
/// * [`catalog::FORCE_VIEW_TYPES`] off: Parquet strings are read as plain
///   `Utf8`, not views whose shared page buffers would travel with every
///   shuffled batch and Flight message (see `catalog::without_view_types`).
/// * `ballista.optimizer.broadcast_join_threshold_rows` (Ballista: 1M): a join
///   side estimated under 20M rows, and still under the 128 MiB byte threshold,
///   is broadcast to every task instead of shuffling both sides. At TPC-H SF 10
///   this changes the plans of Q3, Q12 and Q18 only; in Q3 the 32M `lineitem`
///   rows on the other side no longer go through a shuffle (3.85 s to 1.96 s,
///   measured interleaved with Ballista's value by `benches/ab_settings.sh`,
///   results in `benches/results/broadcast-rows-sf10.txt`).
/// * `ballista.optimizer.hash_join_max_build_partition_bytes` (Ballista: 64
///   MiB): a shuffled join whose build side holds more than this in one
///   partition runs as a sort-merge join (sorting both sides) instead of a
///   hash join. At 64 MiB, TPC-H SF 10 Q7, Q9 (twice) and Q18 sorted `orders`
///   or `lineitem` partitions of 90-435 MiB; at 1 GiB they hash, as
///   single-process DataFusion does (Q9 9.78 s to 7.21 s, Q7 5.19 s to 5.00 s,
///   Q18 17.0 s to 16.7 s, interleaved by `benches/ab_settings.sh`,
///   `benches/results/hash-join-build-sf10.txt`). A hash join's build side
///   cannot spill, so an executor needs memory for its largest one: the limit
///   keeps that bounded.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    (catalog::FORCE_VIEW_TYPES, "false"),
    (ballista_core::config::BALLISTA_BROADCAST_JOIN_THRESHOLD_ROWS, "20000000"),
    (ballista_core::config::BALLISTA_HASH_JOIN_MAX_BUILD_PARTITION_BYTES, "1073741824"),
];

/// The configuration every query is planned with: LakeLink's
/// [`DEFAULT_SETTINGS`], then the operator's `settings` (`--set`) in order.
/// Turning [`catalog::FORCE_VIEW_TYPES`] back on is refused: the lake catalog
/// fixes every table's string columns as plain `Utf8` when it opens them, so
/// the setting could not take effect.
fn planning_config(settings: &[(String, String)]) -> Result<SessionConfig, SchedulerError> {
    let mut config = SessionConfig::new_with_ballista()
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, SCHEMA);
    for (key, value) in DEFAULT_SETTINGS {
        config.options_mut().set(key, value).map_err(|e| SchedulerError::Config(format!("{key}={value}: {e}")))?;
    }
    for (key, value) in settings {
        if !(key.starts_with("datafusion.") || key.starts_with("ballista.")) {
            return Err(SchedulerError::Config(format!(
                "--set {key}={value}: only datafusion.* and ballista.* settings can be set this way"
            )));
        }
        config
            .options_mut()
            .set(key, value)
            .map_err(|e| SchedulerError::Config(format!("--set {key}={value}: {e}")))?;
    }
    if config.options().execution.parquet.schema_force_view_types {
        return Err(SchedulerError::Config(format!(
            "--set {}=true: lake tables are always read with plain Utf8 strings (view-typed strings would carry \
             their shared Parquet page buffers into every shuffle file and Flight message), so this setting cannot \
             be turned on",
            catalog::FORCE_VIEW_TYPES
        )));
    }
    Ok(config)
}

/// The planning sessions of the Flight SQL front door.
async fn query_engine(
    ext: &Extensions,
    lake: Arc<LakeSchema>,
    addr: SocketAddr,
    cancel_job: query::JobCanceller,
    run_job: query::JobRunner,
    partitions: query::Partitions,
    settings: &[(String, String)],
) -> Result<QueryEngine, SchedulerError> {
    let config = planning_config(settings)?;
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema(SCHEMA, lake.clone())?;
    catalog.register_schema(system::SCHEMA, Arc::new(system::SystemSchema))?;

    let state = ext.session_state(config.clone())?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let distributed = SessionContext::remote_with_state(&format!("df://{host}:{}", addr.port()), state).await?;
    ext.register_all(&distributed);
    distributed.register_catalog(CATALOG, catalog.clone());

    let local = SessionContext::new_with_config(ext.configure(config));
    ext.register_all(&local);
    local.register_catalog(CATALOG, catalog);
    Ok(QueryEngine::new(distributed, local, lake, cancel_job, run_job, partitions))
}

#[cfg(test)]
mod tests {
    use ballista_core::config::{BALLISTA_BROADCAST_JOIN_THRESHOLD_ROWS, BallistaConfig};

    use super::planning_config;

    fn broadcast_rows(settings: &[(String, String)]) -> usize {
        let config = planning_config(settings).unwrap();
        config.options().extensions.get::<BallistaConfig>().unwrap().broadcast_join_threshold_rows()
    }

    #[test]
    fn lakelink_defaults_apply_and_the_operator_overrides_them() {
        assert!(!planning_config(&[]).unwrap().options().execution.parquet.schema_force_view_types);
        assert_eq!(broadcast_rows(&[]), 20_000_000);
        let config = planning_config(&[]).unwrap();
        let ballista = config.options().extensions.get::<BallistaConfig>().unwrap();
        assert_eq!(ballista.hash_join_max_build_partition_bytes(), 1 << 30);
        let operator = [(BALLISTA_BROADCAST_JOIN_THRESHOLD_ROWS.to_string(), "1000000".to_string())];
        assert_eq!(broadcast_rows(&operator), 1_000_000);
    }

    #[test]
    fn view_typed_strings_cannot_be_turned_on() {
        let operator = [(crate::catalog::FORCE_VIEW_TYPES.to_string(), "true".to_string())];
        let err = planning_config(&operator).unwrap_err().to_string();
        assert!(err.contains("schema_force_view_types=true") && err.contains("plain Utf8"), "{err}");
        let off = [(crate::catalog::FORCE_VIEW_TYPES.to_string(), "false".to_string())];
        assert!(planning_config(&off).is_ok());
    }
}
