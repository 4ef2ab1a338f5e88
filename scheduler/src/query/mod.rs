//! The query engine behind the Flight SQL front door: plans SQL on a Ballista
//! planning session (so every query runs as a distributed job), binds
//! parameters, and streams results in the schema that was advertised. It
//! knows nothing about gRPC (`flight_sql.rs` does).
//!
//! * [`session`](crate::query::session): the model settings each client connection changed;
//! * [`params`](crate::query::params): `?` placeholders;
//! * [`wire`](crate::query::wire): the schema a client is promised;
//! * [`route`](crate::query::route): where a statement runs (the cluster or here);
//! * [`cluster`](crate::query::cluster): what the engine needs of the cluster;
//! * the plan rewrites made before a job is submitted live in
//!   [`crate::rewrite`].

pub mod cluster;
pub mod params;
pub mod route;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{ParamValues, Result, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{LogicalPlan, Statement};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use lakelink_nl::NlEnv;

pub use cluster::Cluster;
pub use params::number_question_marks;
pub use session::SettingChange;
pub use wire::result_schema;

use crate::catalog::LakeSchema;
use crate::error::QueryError;
use crate::job::RunningJob;
use crate::rewrite::{Prepared, Rewrites};
use route::reads_only_catalog;
use session::Sessions;
use wire::conform;

/// The catalog name clients see.
pub const CATALOG: &str = "lakelink";
/// The schema holding the lake's tables.
pub const SCHEMA: &str = "public";

/// A query's result: a distributed job's (read from the executors while the
/// job runs, see `crate::result`), or batches computed here.
pub enum QueryResult {
    /// The running job.
    Job(RunningJob),
    /// Batches in the advertised schema.
    Batches(SendableRecordBatchStream),
}

/// How many partitions each stage of a query is split into.
#[derive(Debug, Clone, Copy)]
pub enum Partitions {
    /// Always this many (`--target-partitions N`).
    Fixed(usize),
    /// As many as the executors registered when the query is planned have
    /// task slots (at least 2), so every slot gets one share of each stage
    /// and a stage costs one round of tasks.
    PerSlot,
}

/// Plans and runs SQL for remote clients.
pub struct QueryEngine {
    /// A Ballista planning session: its physical planner submits jobs to the
    /// scheduler.
    distributed: SessionContext,
    /// A local session over the same catalog, for queries that read only the
    /// catalog itself (`information_schema`, `SHOW TABLES`): those tables live
    /// in this process and need no cluster.
    local: SessionContext,
    lake: Arc<LakeSchema>,
    sessions: Sessions,
    cluster: Arc<dyn Cluster>,
    /// What the NL compiler may use of the lake (its metadata folder).
    nl: NlEnv,
    partitions: Partitions,
    rewrites: Rewrites,
    /// The memory a statement run here may hold; 0: no limit.
    query_memory: u64,
}

impl QueryEngine {
    /// An engine planning on `distributed`, answering catalog queries on
    /// `local`, and running jobs on `cluster`.
    pub fn new(
        distributed: SessionContext,
        local: SessionContext,
        lake: Arc<LakeSchema>,
        cluster: Arc<dyn Cluster>,
        partitions: Partitions,
        rewrites: Rewrites,
    ) -> Self {
        let nl = NlEnv { metadata_dir: Some(lake.metadata_dir().to_path_buf()) };
        Self {
            distributed,
            local,
            lake,
            sessions: Sessions::default(),
            cluster,
            nl,
            partitions,
            rewrites,
            query_memory: 0,
        }
    }

    /// Bounds the memory of each statement run here (catalog reads) to
    /// `bytes`, spilling where DataFusion can; 0: no limit.
    pub fn with_query_memory(mut self, bytes: u64) -> Self {
        self.query_memory = bytes;
        self
    }

    /// Cancels the query of `df` once `timeout` has passed, if it still runs.
    pub fn cancel_after(&self, df: &DataFrame, timeout: std::time::Duration) {
        let options = lakelink_model::LlmOptions::from_config(df.task_ctx().session_config().options());
        let cluster = self.cluster.clone();
        // Bare on purpose: a timer; cancelling a query that has ended does nothing.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            cluster.cancel(&options.query_id);
        });
    }

    /// If `sql` is `SET`/`RESET` of a model setting, applies it to the
    /// client session `session` and says what changed; `None` for any other
    /// statement.
    pub async fn apply_setting(&self, session: &str, sql: &str) -> Result<Option<SettingChange>> {
        let first = sql.split_whitespace().next().unwrap_or("");
        if !(first.eq_ignore_ascii_case("SET") || first.eq_ignore_ascii_case("RESET")) {
            return Ok(None);
        }
        let plan = self.distributed.state().create_logical_plan(sql).await?;
        let (variable, value) = match plan {
            LogicalPlan::Statement(Statement::SetVariable(set)) => (set.variable, Some(set.value)),
            LogicalPlan::Statement(Statement::ResetVariable(reset)) => (reset.variable, None),
            _ => return Ok(None),
        };
        let defaults = lakelink_model::LlmOptions::from_config(self.distributed.state().config().options());
        self.sessions.apply(session, &variable, value, &defaults).map(Some)
    }

    /// The settings a client session changed, in key order.
    pub fn session_settings(&self, session: &str) -> Vec<(String, String)> {
        self.sessions.settings(session)
    }

    /// A session context for one query: the shared planning session with
    /// the client's settings (checked again by the rules of `SET`, whatever
    /// carried them), the stage partition count and a fresh query id.
    async fn query_context(&self, base: &SessionContext, settings: &[(String, String)]) -> Result<SessionContext> {
        let partitions = match self.partitions {
            Partitions::Fixed(n) => n,
            Partitions::PerSlot => self.cluster.task_slots().await.max(2),
        };
        let mut state = base.state();
        let defaults = lakelink_model::LlmOptions::from_config(state.config().options());
        let options = state.config_mut().options_mut();
        options.execution.target_partitions = partitions;
        for (key, value) in settings {
            session::check(key, value, &defaults)?;
            options.set(key, value)?;
        }
        if self.query_memory > 0 {
            let pool = Arc::new(FairSpillPool::new(usize::try_from(self.query_memory).unwrap_or(usize::MAX)));
            let runtime =
                RuntimeEnvBuilder::from_runtime_env(state.runtime_env()).with_memory_pool(pool).build_arc()?;
            state = SessionStateBuilder::new_from_existing(state).with_runtime_env(runtime).build();
        }
        Ok(SessionContext::new_with_state(new_query_id(state)?))
    }

    /// The lake behind the engine.
    pub fn lake(&self) -> &Arc<LakeSchema> {
        &self.lake
    }

    /// Plans one read-only statement under a client's `settings` and binds
    /// `params` to its placeholders (`$1`, `$2`, ... or `?`).
    pub async fn plan(
        &self,
        sql: &str,
        params: Option<&[ScalarValue]>,
        settings: &[(String, String)],
    ) -> Result<DataFrame> {
        bind(self.plan_unbound(sql, settings).await?, params)
    }

    /// Plans one read-only statement under a client's `settings`, leaving
    /// its placeholders to be bound ([`bind`]); `nl_*` calls are compiled
    /// now, once.
    pub async fn plan_unbound(&self, sql: &str, settings: &[(String, String)]) -> Result<DataFrame> {
        let sql = number_question_marks(sql)?;
        if is_refresh_lake(&sql) {
            return self.refresh_lake(settings).await;
        }
        self.lake.refresh_for_statement().await;
        let ctx = self.query_context(&self.distributed, settings).await?;
        let df = if lakelink_nl::mentions_nl(&sql) {
            self.plan_nl(&ctx, &sql, settings).await?
        } else {
            let plan = ctx.state().create_logical_plan(&sql).await?;
            refuse_non_queries(&plan)?;
            DataFrame::new(ctx.state(), plan)
        };
        if reads_only_catalog(df.logical_plan()) {
            let local = self.query_context(&self.local, settings).await?;
            return Ok(DataFrame::new(local.state(), local.state().create_logical_plan(&sql).await?));
        }
        Ok(df)
    }

    /// `REFRESH LAKE`: lists the lake now and answers one row saying what
    /// it holds (`tables`, `files`, `bytes`) and how many tables changed.
    async fn refresh_lake(&self, settings: &[(String, String)]) -> Result<DataFrame> {
        use datafusion::arrow::array::UInt64Array;
        let summary = self.lake.refresh().await?;
        let column = |name: &str| Field::new(name, DataType::UInt64, false);
        let schema = Arc::new(Schema::new(vec![column("tables"), column("files"), column("bytes"), column("changed")]));
        let value = |n: u64| Arc::new(UInt64Array::from(vec![n])) as _;
        let batch = RecordBatch::try_new(
            schema,
            vec![
                value(summary.tables as u64),
                value(summary.files as u64),
                value(summary.bytes),
                value(summary.changed as u64),
            ],
        )?;
        self.query_context(&self.local, settings).await?.read_batch(batch)
    }

    /// Plans a statement that calls `nl_*` functions: they are compiled
    /// into SQL first (see `lakelink_nl`). EXPLAIN of such a statement
    /// starts with one row per call showing the question and its SQL.
    async fn plan_nl(&self, ctx: &SessionContext, sql: &str, settings: &[(String, String)]) -> Result<DataFrame> {
        let state = ctx.state();
        let (plan, compiled) = self.expand_nl(&state, sql).await?;
        refuse_non_queries(&plan)?;
        let df = DataFrame::new(state, plan);
        if !matches!(df.logical_plan(), LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) || compiled.is_empty() {
            return Ok(df);
        }
        let schema = Arc::new(df.schema().as_arrow().clone());
        let mut rows: Vec<(String, String)> = compiled
            .iter()
            .map(|c| {
                let source = if c.cache_hit { "cache" } else { c.model.as_str() };
                (c.function.clone(), format!("question: {}\nsql: {}\nfrom: {source}", c.question, c.sql))
            })
            .collect();
        let mut batches = df.collect().await?;
        if schema.fields().len() == 2 {
            let (kinds, texts): (Vec<String>, Vec<String>) = rows.drain(..).unzip();
            let nl = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(datafusion::arrow::array::StringArray::from(kinds)),
                    Arc::new(datafusion::arrow::array::StringArray::from(texts)),
                ],
            )?;
            batches.insert(0, nl);
        }
        self.query_context(&self.local, settings).await?.read_batches(batches)
    }

    /// Compiles the `nl_*` calls of `sql` into SQL and plans the result;
    /// also says what each call compiled to.
    async fn expand_nl(&self, state: &SessionState, sql: &str) -> Result<(LogicalPlan, Vec<lakelink_nl::Compiled>)> {
        let dialect = state.config().options().sql_parser.dialect;
        let mut statement = state.sql_to_statement(sql, &dialect)?;
        let compiled = lakelink_nl::expand(state, &self.nl, &mut statement).await?;
        let plan = state.statement_to_plan(statement).await?;
        Ok((plan, compiled))
    }

    /// The parameters a planned statement takes, in order, as an Arrow schema
    /// (`$1`, `$2`, ...); the type is `Null` where the planner could not infer it.
    pub fn parameter_schema(df: &DataFrame) -> Result<Schema> {
        let types: HashMap<String, Option<DataType>> = df.logical_plan().get_parameter_types()?;
        let mut names: Vec<&String> = types.keys().collect();
        names.sort_by_key(|n| n.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX));
        Ok(Schema::new(
            names
                .into_iter()
                .map(|n| Field::new(n, types[n].clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Runs a planned statement. Batches carry exactly `schema`; result files
    /// hold batches of the same column types (`conform` relabels them).
    /// A client that goes away before the job ends (cancels, disconnects)
    /// cancels the query: its distributed job and its model requests; so does
    /// one that stops reading batches computed here before their end.
    ///
    /// A distributed job is submitted to the scheduler in this process and
    /// answered while it runs, so that its result's messages can reach the
    /// client as the executors write them. Statements Ballista answers
    /// without a job of its own (catalog reads, `EXPLAIN ANALYZE`, an empty
    /// relation) run through its planner as before.
    pub async fn execute(&self, df: DataFrame, schema: SchemaRef) -> Result<QueryResult> {
        self.commit_examples(&df)?;
        match self.job_or_here(df).await? {
            Ok(job) => Ok(QueryResult::Job(job)),
            Err((df, guard)) => self.execute_here(df, schema, guard).await,
        }
    }

    /// Submits `df` as a distributed job, as [`QueryEngine::execute`] does,
    /// and answers the running job; `None`, without running anything, for a
    /// statement Ballista answers without a job of its own.
    pub async fn run_as_job(&self, df: DataFrame) -> Result<Option<RunningJob>> {
        self.commit_examples(&df)?;
        Ok(match self.job_or_here(df).await? {
            Ok(job) => Some(job),
            Err((_, mut guard)) => {
                guard.finished = true; // nothing was started
                None
            }
        })
    }

    /// Stores the examples the statement's `nl_accept` calls accepted: they
    /// are kept when the statement runs, once, not when it is planned.
    fn commit_examples(&self, df: &DataFrame) -> Result<()> {
        let options = lakelink_model::LlmOptions::from_config(df.task_ctx().session_config().options());
        lakelink_nl::commit_accepted(&options.query_id)
    }

    /// The running job of `df` submitted as a distributed job (dropped
    /// before it ends, it cancels the query), or (unrun) the statement to run
    /// here with the guard that cancels it.
    async fn job_or_here(&self, df: DataFrame) -> Result<std::result::Result<RunningJob, (DataFrame, CancelOnDrop)>> {
        let options = lakelink_model::LlmOptions::from_config(df.task_ctx().session_config().options());
        let mut guard = CancelOnDrop {
            query_id: options.query_id.clone(),
            trail_dir: options.trail_dir.clone(),
            cluster: self.cluster.clone(),
            finished: false,
        };
        let (state, plan) = match self.rewrites.for_cluster(&self.lake, df).await? {
            Prepared::Cluster(state, plan) => (*state, plan),
            Prepared::Here(df) => return Ok(Err((df, guard))),
        };
        let mut job = self.cluster.submit(&options.query_id, &state, &plan).await?;
        // From here on the job's handle cancels the query when abandoned.
        guard.finished = true;
        job.on_abandon(move || guard.cancel());
        Ok(Ok(job))
    }

    /// Runs a statement through DataFusion's (and Ballista's) planner here.
    async fn execute_here(&self, df: DataFrame, schema: SchemaRef, mut guard: CancelOnDrop) -> Result<QueryResult> {
        let stream = if matches!(df.logical_plan(), LogicalPlan::Analyze(_)) {
            explain_analyze(df, &self.local).await?
        } else {
            df.execute_stream().await?
        };
        let conformed = {
            let schema = schema.clone();
            stream.map(move |batch| conform(batch?, &schema)).chain(futures::stream::poll_fn(move |_| {
                // Borrowing the whole guard moves it into the closure, so
                // it lives (and can cancel) as long as the stream.
                let guard = &mut guard;
                guard.finished = true;
                std::task::Poll::Ready(None)
            }))
        };
        Ok(QueryResult::Batches(Box::pin(RecordBatchStreamAdapter::new(schema, conformed))))
    }
}

/// Runs `EXPLAIN ANALYZE` and adds a row, `Model calls`, saying what the
/// statement's semantic functions spent, from the trail of every host: per
/// function, the model requests and the values they answered, the values
/// the answer cache answered, and what a cascade's proxy decided.
async fn explain_analyze(df: DataFrame, local: &SessionContext) -> Result<SendableRecordBatchStream> {
    use datafusion::arrow::array::StringArray;
    let (state, plan) = df.into_parts();
    let query_id = lakelink_model::LlmOptions::from_config(state.config().options()).query_id;
    let df = DataFrame::new(state, plan);
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut batches = df.collect().await?;
    let spent = model_calls_of(local, &query_id).await?;
    if !spent.is_empty() && schema.fields().len() == 2 {
        let row = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["Model calls"])), Arc::new(StringArray::from(vec![spent.join("\n")]))],
        )?;
        batches.push(row);
    }
    let batches = futures::stream::iter(batches.into_iter().map(Ok));
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
}

/// One line per semantic function the query `query_id` called, from
/// `system.model_calls` (read through `local`, the catalog's context); none
/// when it called none.
async fn model_calls_of(ctx: &SessionContext, query_id: &str) -> Result<Vec<String>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
    if query_id.is_empty() || !query_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT function, \
           CAST(sum(CASE WHEN backend <> 'proxy' AND NOT cache_hit THEN 1 ELSE 0 END) AS BIGINT UNSIGNED), \
           CAST(sum(CASE WHEN backend <> 'proxy' AND NOT cache_hit THEN rows ELSE 0 END) AS BIGINT UNSIGNED), \
           CAST(sum(CASE WHEN cache_hit THEN rows ELSE 0 END) AS BIGINT UNSIGNED), \
           CAST(sum(CASE WHEN backend = 'proxy' THEN rows ELSE 0 END) AS BIGINT UNSIGNED), \
           min(CASE WHEN backend = 'proxy' THEN confidence END), \
           CAST(sum(CASE WHEN outcome LIKE 'cascade refused%' THEN 1 ELSE 0 END) AS BIGINT UNSIGNED) \
         FROM system.model_calls WHERE query_id = '{query_id}' GROUP BY function ORDER BY function"
    );
    let mut lines = vec![];
    for batch in ctx.sql(&sql).await?.collect().await? {
        let count = |i: usize, row: usize| batch.column(i).as_primitive::<UInt64Type>().value(row);
        let agreement = batch.column(5).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let function = batch.column(0).as_string::<i32>().value(row);
            let mut line = format!(
                "{function}: {} model requests (embeddings included) for {} values, {} values from the answer cache",
                count(1, row),
                count(2, row),
                count(3, row)
            );
            if !agreement.is_null(row) {
                line += &format!(
                    ", {} values decided by the cascade's proxy (its samples agreed with the model on at least {:.1}%)",
                    count(4, row),
                    agreement.value(row) * 100.0
                );
            }
            if count(6, row) > 0 {
                line += ", the cascade refused (see system.model_calls)";
            }
            lines.push(line);
        }
    }
    Ok(lines)
}

/// Cancels a query whose result stream is dropped before its end.
struct CancelOnDrop {
    query_id: String,
    trail_dir: String,
    cluster: Arc<dyn Cluster>,
    finished: bool,
}

impl CancelOnDrop {
    /// Cancels the query: its distributed job and its model requests.
    fn cancel(&self) {
        if !self.query_id.is_empty() {
            tracing::info!("query {} abandoned by its client: cancelling it", self.query_id);
            lakelink_model::engine::cancel_query(&self.trail_dir, &self.query_id);
            self.cluster.cancel(&self.query_id);
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel();
        }
    }
}

/// Binds `params` to the placeholders of a planned statement; every
/// placeholder needs a value.
pub fn bind(df: DataFrame, params: Option<&[ScalarValue]>) -> Result<DataFrame> {
    match params {
        Some(values) => df.with_param_values(ParamValues::from(values.to_vec())),
        None => {
            let missing = df.logical_plan().get_parameter_names()?;
            if missing.is_empty() { Ok(df) } else { Err(QueryError::UnboundParameters(missing.len()).into()) }
        }
    }
}

/// `state` with a new query id: each execution of a statement is a query
/// of its own (trail, model-call dedupe and budgets, its job's name).
fn new_query_id(mut state: SessionState) -> Result<SessionState> {
    let query_id = uuid::Uuid::new_v4().to_string();
    let options = state.config_mut().options_mut();
    options.set("lakelink.llm.query_id", &query_id)?;
    options.set(ballista_core::config::BALLISTA_JOB_NAME, &query_id)?;
    Ok(state)
}

/// A planned statement to run once more, as a query of its own.
pub fn new_execution(df: DataFrame) -> Result<DataFrame> {
    let (state, plan) = df.into_parts();
    Ok(DataFrame::new(new_query_id(state)?, plan))
}

/// Whether `sql` is `REFRESH LAKE` (any case, spacing, a final `;`).
fn is_refresh_lake(sql: &str) -> bool {
    let words: Vec<&str> = sql.trim().trim_end_matches(';').split_whitespace().collect();
    words.len() == 2 && words[0].eq_ignore_ascii_case("REFRESH") && words[1].eq_ignore_ascii_case("LAKE")
}

/// Refuses what is not a query: LakeLink serves read-only statements
/// (`SET`/`RESET` of model settings are answered before planning).
fn refuse_non_queries(plan: &LogicalPlan) -> Result<()> {
    match plan {
        LogicalPlan::Statement(_) => Err(QueryError::NotAQuery.into()),
        _ if lakelink_nl::check::plan_writes(plan).is_some() => Err(QueryError::ReadOnly.into()),
        _ => Ok(()),
    }
}
