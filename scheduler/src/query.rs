//! The query engine behind the Flight SQL front door: plans SQL on a Ballista
//! planning session (so every query runs as a distributed job), binds
//! parameters, and streams results in the schema that was advertised.
//!
//! Transport code (Flight SQL) stays in `flight_sql.rs`; this module knows
//! nothing about gRPC.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, ParamValues, Result, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionState;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::logical_plan::{FetchType, Limit, SkipType};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, LogicalPlanBuilder, SortExpr, Statement, TableScan, lit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::StreamExt;

use lakelink_nl::NlEnv;

use crate::catalog::LakeSchema;
use crate::job::RunningJob;

/// The catalog name clients see.
pub const CATALOG: &str = "lakelink";
/// The schema holding the lake's tables.
pub const SCHEMA: &str = "public";

/// Model settings a client may change with `SET lakelink.llm.<key> = ...`.
/// Paths, the API key's variable and the query id are the operator's.
pub const SESSION_KEYS: &[&str] = &[
    "backend",
    "model",
    "embedding_model",
    "base_url",
    "timeout_ms",
    "retries",
    "concurrency",
    "batch_size",
    "max_output_tokens",
    "on_error",
    "max_calls",
    "max_tokens",
    "cache",
    "nl_attempts",
    "nl_strategy",
    "nl_models",
    "nl_vote",
    "nl_max_tables",
];

/// Sessions idle for longer are forgotten.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The settings one client connection changed.
struct Session {
    settings: BTreeMap<String, String>,
    last_used: Instant,
}

/// What a client's `SET` or `RESET` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettingChange {
    /// The full key, `lakelink.llm.<key>`.
    pub key: String,
    /// The new value; `None` after RESET (the process default applies again).
    pub value: Option<String>,
}

/// Cancels the Ballista job named after a query id (the query engine names
/// every job after its query).
pub type JobCanceller = Arc<dyn Fn(String) + Send + Sync>;

/// Submits a query's plan as a distributed job to this scheduler (the job's
/// name, the query's session, whose id and configuration the job takes, and
/// its optimized logical plan) and answers the running job, whose result is
/// read while it runs.
pub type JobRunner = Arc<
    dyn Fn(String, SessionState, LogicalPlan) -> futures::future::BoxFuture<'static, Result<RunningJob>> + Send + Sync,
>;

/// A query's result: a distributed job's (read from the executors while the
/// job runs, see `crate::result`), or batches computed here.
pub enum QueryResult {
    /// The running job.
    Job(RunningJob),
    /// Batches in the advertised schema.
    Batches(SendableRecordBatchStream),
}

/// Counts the task slots of the executors registered now.
pub type SlotCounter = Arc<dyn Fn() -> futures::future::BoxFuture<'static, usize> + Send + Sync>;

/// How many partitions each stage of a query is split into.
#[derive(Clone)]
pub enum Partitions {
    /// Always this many (`--target-partitions N`).
    Fixed(usize),
    /// As many as the executors registered when the query is planned have
    /// task slots (at least 2), so every slot gets one share of each stage
    /// and a stage costs one round of tasks.
    PerSlot(SlotCounter),
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
    sessions: Mutex<HashMap<String, Session>>,
    cancel_job: JobCanceller,
    run_job: JobRunner,
    /// What the NL compiler may use of the lake (its metadata folder).
    nl: NlEnv,
    partitions: Partitions,
    /// Top-N lookups over tables at least this big (bytes on disk) run in two
    /// passes, see [`QueryEngine::narrow_top_n`].
    top_n_narrowing_min_bytes: u64,
    /// Semi and anti joins of a small side against a large one are reduced
    /// first, see [`crate::semi_join`].
    semi_join_reduction: bool,
}

/// The default for [`QueryEngine::with_top_n_narrowing`]: below this much
/// Parquet a second job costs more than the decoding it saves.
pub const TOP_N_NARROWING_MIN_BYTES: u64 = 256 * 1024 * 1024;

impl QueryEngine {
    /// An engine planning on `distributed` and answering catalog queries on `local`.
    /// `cancel_job` stops the distributed job of a query whose client went away.
    pub fn new(
        distributed: SessionContext,
        local: SessionContext,
        lake: Arc<LakeSchema>,
        cancel_job: JobCanceller,
        run_job: JobRunner,
        partitions: Partitions,
    ) -> Self {
        let nl = NlEnv { metadata_dir: Some(lake.root().join(crate::catalog::METADATA_DIR)) };
        Self {
            distributed,
            local,
            lake,
            sessions: Mutex::default(),
            cancel_job,
            run_job,
            nl,
            partitions,
            top_n_narrowing_min_bytes: TOP_N_NARROWING_MIN_BYTES,
            semi_join_reduction: true,
        }
    }

    /// Whether semi and anti joins of a small side against a large one are
    /// reduced first (the default), see [`crate::semi_join`].
    pub fn with_semi_join_reduction(mut self, on: bool) -> Self {
        self.semi_join_reduction = on;
        self
    }

    /// Top-N lookups over tables of at least `min_bytes` on disk run in two
    /// passes (`u64::MAX`: never), see [`QueryEngine::narrow_top_n`].
    pub fn with_top_n_narrowing(mut self, min_bytes: u64) -> Self {
        self.top_n_narrowing_min_bytes = min_bytes;
        self
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
        let variable = variable.to_ascii_lowercase();
        let Some(key) = variable.strip_prefix("lakelink.llm.") else {
            return Err(DataFusionError::Plan(format!(
                "only model settings (lakelink.llm.<key>) can be set over Flight SQL, not {variable}"
            )));
        };
        if !SESSION_KEYS.contains(&key) {
            return Err(DataFusionError::Plan(if lakelink_model::config::KEYS.iter().any(|(k, _)| *k == key) {
                format!(
                    "lakelink.llm.{key} is set by the operator in the process configuration, not by a session; \
                     sessions may set: {}",
                    SESSION_KEYS.join(", ")
                )
            } else {
                format!("unknown setting lakelink.llm.{key}; sessions may set: {}", SESSION_KEYS.join(", "))
            }));
        }
        if let Some(value) = &value {
            if matches!(key, "model" | "embedding_model" | "nl_models")
                && value.split(',').any(|v| v.trim().starts_with('/') || v.split(['/', '\\']).any(|part| part == ".."))
            {
                return Err(DataFusionError::Plan(format!(
                    "lakelink.llm.{key} = '{value}': a session may name a model inside the models folder \
                     (or an endpoint's model name), not a path elsewhere"
                )));
            }
            let defaults = lakelink_udf::LlmOptions::from_config(self.distributed.state().config().options());
            if key == "base_url" && !defaults.allow_session_endpoints {
                return Err(DataFusionError::Plan(
                    "lakelink.llm.base_url is fixed by the operator; sessions may choose an endpoint only when the \
                     process configuration sets allow_session_endpoints = true"
                        .into(),
                ));
            }
            // Check the value now, so a bad SET fails, not the next query.
            let mut probe = defaults;
            probe.set_key(key, value)?;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.last_used.elapsed() < SESSION_TTL);
        let entry = sessions
            .entry(session.to_string())
            .or_insert_with(|| Session { settings: BTreeMap::new(), last_used: Instant::now() });
        entry.last_used = Instant::now();
        match &value {
            Some(v) => entry.settings.insert(variable.clone(), v.clone()),
            None => entry.settings.remove(&variable),
        };
        Ok(Some(SettingChange { key: variable, value }))
    }

    /// The settings a client session changed, in key order.
    pub fn session_settings(&self, session: &str) -> Vec<(String, String)> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(session) {
            Some(s) => {
                s.last_used = Instant::now();
                s.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            None => Vec::new(),
        }
    }

    /// A session context for one query: the shared planning session with
    /// the client's settings, the stage partition count and a fresh query id.
    async fn query_context(&self, base: &SessionContext, settings: &[(String, String)]) -> Result<SessionContext> {
        let partitions = match &self.partitions {
            Partitions::Fixed(n) => *n,
            Partitions::PerSlot(count) => count().await.max(2),
        };
        let mut state = base.state();
        let options = state.config_mut().options_mut();
        options.execution.target_partitions = partitions;
        for (key, value) in settings {
            options.set(key, value)?;
        }
        let query_id = uuid::Uuid::new_v4().to_string();
        options.set("lakelink.llm.query_id", &query_id)?;
        options.set(ballista_core::config::BALLISTA_JOB_NAME, &query_id)?;
        Ok(SessionContext::new_with_state(state))
    }

    /// The lake behind the engine.
    pub fn lake(&self) -> &Arc<LakeSchema> {
        &self.lake
    }

    /// Plans one read-only statement under a client's `settings`.
    /// Parameters, if any, replace its placeholders (`$1`, `$2`, ... or `?`).
    pub async fn plan(
        &self,
        sql: &str,
        params: Option<&[ScalarValue]>,
        settings: &[(String, String)],
    ) -> Result<DataFrame> {
        let sql = number_question_marks(sql)?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let ctx = self.query_context(&self.distributed, settings).await?;
        let df = if lakelink_nl::mentions_nl(&sql) {
            self.plan_nl(&ctx, &sql, options, settings).await?
        } else {
            ctx.sql_with_options(&sql, options).await.map_err(explain_refusal)?
        };
        let df = if reads_only_catalog(df.logical_plan()) {
            self.query_context(&self.local, settings).await?.sql_with_options(&sql, options).await?
        } else {
            late_materialization_for_lookups(small_batches_for_model_limits(df))
        };
        match params {
            Some(values) => df.with_param_values(ParamValues::from(values.to_vec())),
            None => {
                let missing = df.logical_plan().get_parameter_names()?;
                if missing.is_empty() {
                    Ok(df)
                } else {
                    Err(DataFusionError::Plan(format!(
                        "the statement has {} parameter placeholder(s) but no values were bound",
                        missing.len()
                    )))
                }
            }
        }
    }

    /// Plans a statement that calls `nl_*` functions: they are compiled
    /// into SQL first (see `lakelink_nl`). EXPLAIN of such a statement
    /// starts with one row per call showing the question and its SQL.
    async fn plan_nl(
        &self,
        ctx: &SessionContext,
        sql: &str,
        options: SQLOptions,
        settings: &[(String, String)],
    ) -> Result<DataFrame> {
        let state = ctx.state();
        let (plan, compiled) = self.expand_nl(&state, sql).await?;
        options.verify_plan(&plan).map_err(explain_refusal)?;
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
        let plan = state.statement_to_plan(statement).await.map_err(explain_refusal)?;
        Ok((plan, compiled))
    }

    /// The parameters a statement takes, in order, as an Arrow schema
    /// (`$1`, `$2`, ...); the type is `Null` where the planner could not infer it.
    /// `nl_*` calls are compiled first, under the client's `settings` (the
    /// compiled SQL is remembered, so planning the statement again reuses it).
    pub async fn parameter_schema(&self, sql: &str, settings: &[(String, String)]) -> Result<Schema> {
        let sql = number_question_marks(sql)?;
        let plan = if lakelink_nl::mentions_nl(&sql) {
            self.expand_nl(&self.query_context(&self.distributed, settings).await?.state(), &sql).await?.0
        } else {
            self.distributed.state().create_logical_plan(&sql).await?
        };
        let types: HashMap<String, Option<DataType>> = plan.get_parameter_types()?;
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
        match self.job_or_here(df).await? {
            Ok(job) => Ok(QueryResult::Job(job)),
            Err((df, guard)) => self.execute_here(df, schema, guard).await,
        }
    }

    /// Submits `df` as a distributed job, as [`QueryEngine::execute`] does,
    /// and answers the running job; `None`, without running anything, for a
    /// statement Ballista answers without a job of its own.
    pub async fn run_as_job(&self, df: DataFrame) -> Result<Option<RunningJob>> {
        Ok(match self.job_or_here(df).await? {
            Ok(job) => Some(job),
            Err((_, mut guard)) => {
                guard.finished = true; // nothing was started
                None
            }
        })
    }

    /// The running job of `df` submitted as a distributed job (dropped
    /// before it ends, it cancels the query), or (unrun) the statement to run
    /// here with the guard that cancels it.
    async fn job_or_here(&self, df: DataFrame) -> Result<std::result::Result<RunningJob, (DataFrame, CancelOnDrop)>> {
        let options = lakelink_udf::LlmOptions::from_config(df.task_ctx().session_config().options());
        let mut guard = CancelOnDrop {
            query_id: options.query_id.clone(),
            trail_dir: options.trail_dir.clone(),
            cancel_job: self.cancel_job.clone(),
            finished: false,
        };
        let (state, plan) = self.narrow_top_n(df).await.into_parts();
        let Some(mut optimized) = distributed_plan(&state, &plan)? else {
            return Ok(Err((DataFrame::new(state, plan), guard)));
        };
        if self.semi_join_reduction {
            optimized = crate::semi_join::optimize(&state, optimized).await?;
        }
        let mut job = (self.run_job)(options.query_id, state, optimized).await?;
        // From here on the job's handle cancels the query when abandoned.
        guard.finished = true;
        job.on_abandon(move || guard.cancel());
        Ok(Ok(job))
    }

    /// Runs a statement through DataFusion's (and Ballista's) planner here.
    async fn execute_here(&self, df: DataFrame, schema: SchemaRef, mut guard: CancelOnDrop) -> Result<QueryResult> {
        let stream = df.execute_stream().await?;
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

impl QueryEngine {
    /// Runs a top-N lookup over a large table in two passes. A lookup (one
    /// table under a filter, sorted, the first N rows; see
    /// [`is_lookup`]) reads its filter columns for every row, and then every
    /// other column of every row that passes; when the passing rows are spread
    /// over the files, that is nearly every page of every column. The first
    /// pass reads only the first sort key of the passing rows and finds the
    /// N-th value; the statement then runs with `key >= value` (`<=` when
    /// ascending) added to its filter, so the other columns are decoded for
    /// little more than the N rows returned. Ties and NULLs that sort first are
    /// kept, so the answer is the same. Skipped (the statement runs as it is)
    /// for tables under the size limit, statements calling a model or a
    /// volatile function (a second pass could see other values), sort keys
    /// that are not plain columns or are floats (NaN), and when the first
    /// pass fails or finds fewer than N rows. TPC-H SF 30 needle query: 5.2-5.5 s to 3.9-4.2 s.
    async fn narrow_top_n(&self, df: DataFrame) -> DataFrame {
        let Some(top) = TopN::find(df.logical_plan()) else { return df };
        let min_bytes = self.top_n_narrowing_min_bytes;
        if min_bytes > 0 && !self.lake.table_holds_at_least(&top.table, min_bytes) {
            return df;
        }
        let (state, plan) = df.into_parts();
        let first_pass = async {
            DataFrame::new(state.clone(), top.sort_input.clone())
                .select(vec![Expr::Column(top.key.clone())])?
                .sort(vec![top.order.clone()])?
                .limit(0, Some(top.rows))?
                .collect()
                .await
        };
        let narrowed = match first_pass.await {
            Ok(values) => nth_value(&values, top.rows).map(|bound| top.narrow(&plan, bound)),
            Err(e) => Some(Err(e)),
        };
        match narrowed {
            Some(Ok(narrowed)) => {
                tracing::info!("top-N lookup on {} in two passes, the second bounded by {}", top.table, top.key);
                DataFrame::new(state, narrowed)
            }
            Some(Err(e)) => {
                tracing::warn!("top-N lookup on {} runs in one pass: {e}", top.table);
                DataFrame::new(state, plan)
            }
            None => DataFrame::new(state, plan),
        }
    }
}

/// The shape [`QueryEngine::narrow_top_n`] works on: a lookup's sort, its
/// first key and the number of rows it keeps.
struct TopN {
    table: String,
    sort_input: LogicalPlan,
    key: datafusion::common::Column,
    order: SortExpr,
    rows: usize,
}

impl TopN {
    /// The top-N of `plan` when it is a lookup sorted first by a plain column
    /// (not a float) with more columns to read than that key, and calls
    /// neither a model nor a volatile function.
    fn find(plan: &LogicalPlan) -> Option<TopN> {
        if !is_lookup(plan) || lakelink_udf::planner::plan_calls_model(plan) || has_volatile(plan) {
            return None;
        }
        let mut node = plan;
        let mut rows: Option<usize> = None;
        let sort = loop {
            match node {
                LogicalPlan::Limit(limit) => {
                    let (fetch, skip) = limit_rows(limit)?;
                    let n = fetch + skip?;
                    rows = Some(rows.map_or(n, |r| r.min(n)));
                    node = &limit.input;
                }
                LogicalPlan::Projection(projection) => node = &projection.input,
                LogicalPlan::Sort(sort) => break sort,
                _ => return None,
            }
        };
        let rows = match (rows, sort.fetch) {
            (Some(r), Some(f)) => r.min(f),
            (r, f) => r.or(f)?,
        };
        let order = sort.expr.first()?.clone();
        let Expr::Column(key) = &order.expr else { return None };
        // Parquet statistics leave NaN out of a float column's min and max, so
        // a bound on a float key could prune row groups holding NaN rows that
        // sort among the first N.
        let floating = sort
            .input
            .schema()
            .qualified_field_from_column(key)
            .map(|(_, f)| f.data_type().is_floating())
            .unwrap_or(true);
        if rows == 0 || floating || sort.input.schema().fields().len() < 2 {
            return None;
        }
        let mut table = None;
        let _ = sort.input.apply(|n| {
            if let LogicalPlan::TableScan(scan) = n {
                table = Some(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Some(TopN { table: table?, sort_input: sort.input.as_ref().clone(), key: key.clone(), order, rows })
    }

    /// `plan` with the rows entering its sort limited to those that can be
    /// among the first N, given `bound`, the N-th value of the first key.
    ///
    /// When the key is a table column (qualified by the table) the bound
    /// becomes the first condition of the lookup's own filter: the Parquet
    /// reader evaluates conditions in order, each only where the ones before
    /// it hold, so the bound, which few rows pass, spares decoding the other
    /// filter columns too (needle query, second pass: 2.5-2.8 s with the bound
    /// last, 1.6-1.8 s with it first). Otherwise the bound filters the sort's
    /// input.
    fn narrow(&self, plan: &LogicalPlan, bound: ScalarValue) -> Result<LogicalPlan> {
        let key = Expr::Column(self.key.clone());
        let mut keep = if self.order.asc { key.clone().lt_eq(lit(bound)) } else { key.clone().gt_eq(lit(bound)) };
        if self.order.nulls_first {
            keep = keep.or(key.is_null());
        }
        let in_filter = replace_first(plan, |node| match node {
            LogicalPlan::Filter(filter)
                if self.key.relation.is_some() && filter.input.schema().has_column(&self.key) =>
            {
                Some(
                    Filter::try_new(keep.clone().and(filter.predicate.clone()), filter.input.clone())
                        .map(LogicalPlan::Filter),
                )
            }
            _ => None,
        })?;
        if let Some(narrowed) = in_filter {
            return Ok(narrowed);
        }
        let above_input = replace_first(plan, |node| match node {
            LogicalPlan::Sort(sort) => {
                Some(LogicalPlanBuilder::from(sort.input.as_ref().clone()).filter(keep.clone()).and_then(|input| {
                    let mut sort = sort.clone();
                    sort.input = Arc::new(input.build()?);
                    Ok(LogicalPlan::Sort(sort))
                }))
            }
            _ => None,
        })?;
        above_input.ok_or_else(|| DataFusionError::Internal("a top-N lookup without a sort".into()))
    }
}

/// `plan` with its first node (top down) for which `replace` gives a
/// replacement replaced; `None` when there is no such node.
fn replace_first(
    plan: &LogicalPlan,
    mut replace: impl FnMut(&LogicalPlan) -> Option<Result<LogicalPlan>>,
) -> Result<Option<LogicalPlan>> {
    let mut done = false;
    let rewritten = plan.clone().transform_down(|node| match replace(&node) {
        Some(new) => {
            done = true;
            Ok(Transformed::new(new?, true, TreeNodeRecursion::Stop))
        }
        None => Ok(Transformed::no(node)),
    })?;
    Ok(done.then_some(rewritten.data))
}

/// A limit's row count and its offset, when they are literals (the offset is
/// `None` when it is not, e.g. an unbound parameter).
fn limit_rows(limit: &Limit) -> Option<(usize, Option<usize>)> {
    let FetchType::Literal(Some(fetch)) = limit.get_fetch_type().ok()? else { return None };
    let skip = match limit.get_skip_type() {
        Ok(SkipType::Literal(skip)) => Some(skip),
        _ => None,
    };
    Some((fetch, skip))
}

/// The `n`-th value (1-based) of the only column of `batches`, when there is
/// one and it is not NULL.
fn nth_value(batches: &[RecordBatch], n: usize) -> Option<ScalarValue> {
    let mut seen = 0;
    for batch in batches {
        if seen + batch.num_rows() >= n {
            let value = ScalarValue::try_from_array(batch.column(0), n - seen - 1).ok()?;
            return (!value.is_null()).then_some(value);
        }
        seen += batch.num_rows();
    }
    None
}

/// Whether any expression of `plan` calls a volatile function (`random()`).
pub(crate) fn has_volatile(plan: &LogicalPlan) -> bool {
    let mut volatile = false;
    let _ = plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            if expr.is_volatile() {
                volatile = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    volatile
}

/// Cancels a query whose result stream is dropped before its end.
struct CancelOnDrop {
    query_id: String,
    trail_dir: String,
    cancel_job: JobCanceller,
    finished: bool,
}

impl CancelOnDrop {
    /// Cancels the query: its distributed job and its model requests.
    fn cancel(&self) {
        if !self.query_id.is_empty() {
            tracing::info!("query {} abandoned by its client: cancelling it", self.query_id);
            lakelink_model::engine::cancel_query(&self.trail_dir, &self.query_id);
            (self.cancel_job)(self.query_id.clone());
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

/// The schema a client is promised for a statement: the logical plan's, with
/// every column nullable and view types as their plain counterparts.
///
/// * Physical plans may disagree with the logical one about nullability, and a
///   client that checks the promised schema against the data (ADBC does) must
///   never see a difference.
/// * A `Utf8View` batch read from Parquet shares large data buffers with its
///   neighbours; Arrow IPC sends those buffers whole with every batch, many
///   times the data itself. Plain `Utf8` is compact on the wire and every
///   Flight SQL client (JDBC and BI tools included) understands it.
pub fn result_schema(df: &DataFrame) -> SchemaRef {
    let fields: Vec<Field> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(wire_type(f.data_type())).with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The type a column travels as.
fn wire_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(Arc::new(f.as_ref().clone().with_data_type(wire_type(f.data_type())))),
        DataType::LargeList(f) => {
            DataType::LargeList(Arc::new(f.as_ref().clone().with_data_type(wire_type(f.data_type()))))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| f.as_ref().clone().with_data_type(wire_type(f.data_type()))).collect(),
        ),
        other => other.clone(),
    }
}

/// Re-labels (and where needed casts) a batch to the advertised schema.
pub(crate) fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    lakelink_protocol::result::conform(batch, schema).map_err(|e| match e {
        datafusion::arrow::error::ArrowError::SchemaError(message) => DataFusionError::Internal(message),
        other => other.into(),
    })
}

/// The optimized plan to submit as a job, or `None` for a statement Ballista
/// answers without a job of its own (catalog reads, `EXPLAIN ANALYZE`, an
/// empty relation).
fn distributed_plan(state: &SessionState, plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    if reads_only_catalog(plan) {
        return Ok(None);
    }
    let optimized = state.optimize(plan)?;
    Ok((!matches!(optimized, LogicalPlan::Analyze(_) | LogicalPlan::EmptyRelation(_))).then_some(optimized))
}

/// Whether every table the plan reads lives in this process
/// (`information_schema`, `system`).
fn reads_only_catalog(plan: &LogicalPlan) -> bool {
    let mut scans = 0;
    let mut catalog_scans = 0;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(TableScan { table_name, .. }) = node {
            scans += 1;
            if matches!(table_name.schema(), Some("information_schema") | Some(crate::system::SCHEMA)) {
                catalog_scans += 1;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans > 0 && scans == catalog_scans
}

/// A query that calls a model under a `LIMIT n` runs with batches of about
/// `n` rows, so model calls stop soon after enough rows are produced
/// (every batch's distinct values are sent to the model at once).
fn small_batches_for_model_limits(df: DataFrame) -> DataFrame {
    let plan = df.logical_plan();
    if !lakelink_udf::planner::plan_calls_model(plan) {
        return df;
    }
    let mut fetch: Option<usize> = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Limit(limit) = node
            && let Some((n, skip)) = limit_rows(limit)
        {
            let n = n + skip.unwrap_or(0);
            fetch = Some(fetch.map_or(n, |f: usize| f.min(n)));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let Some(rows) = fetch else { return df };
    let (mut state, plan) = df.into_parts();
    let batch = rows.clamp(16, 8192);
    if batch < state.config().batch_size() {
        let _ = state.config_mut().options_mut().set("datafusion.execution.batch_size", &batch.to_string());
    }
    DataFrame::new(state, plan)
}

/// A lookup (the top rows of one table under a filter, with no join,
/// aggregate or window) reads its filter columns first and decodes the other
/// columns only for the rows that pass (Parquet filter pushdown). On a
/// selective filter that skips most of the decoding (TPC-H SF 30 needle
/// query: 5.4 s to 4.9 s). It stays off for other queries: with joins and
/// aggregates it made TPC-H SF 10 queries up to 1.6x slower.
fn late_materialization_for_lookups(df: DataFrame) -> DataFrame {
    if !is_lookup(df.logical_plan()) {
        return df;
    }
    let (mut state, plan) = df.into_parts();
    state.config_mut().options_mut().execution.parquet.pushdown_filters = true;
    DataFrame::new(state, plan)
}

/// Whether `plan` is a lookup: it reads one table under a filter and keeps
/// the top rows (a limit, or a sort with a limit), with no join, aggregate,
/// window or union.
fn is_lookup(plan: &LogicalPlan) -> bool {
    let (mut scans, mut filter, mut limit, mut other) = (0, false, false, false);
    let _ = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(_) => scans += 1,
            LogicalPlan::Filter(_) => filter = true,
            LogicalPlan::Limit(_) => limit = true,
            LogicalPlan::Sort(sort) if sort.fetch.is_some() => limit = true,
            LogicalPlan::Join(_) | LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Union(_) => {
                other = true
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans == 1 && filter && limit && !other
}

/// Rewrites JDBC/ODBC-style `?` placeholders into DataFusion's positional
/// `$1`, `$2`, ... using the SQL tokenizer, so `?` inside strings, quoted
/// identifiers and comments is left alone. Only the placeholders' own
/// characters change: the rest of the text stays byte for byte what the
/// client sent (re-rendering tokens would lose the quoting of `''`).
pub fn number_question_marks(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| DataFusionError::SQL(Box::new(e.into()), None))?;
    let mut placeholders = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .peekable();
    if placeholders.peek().is_none() {
        return Ok(sql.to_string());
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut line, mut column, mut n) = (1u64, 1u64, 0);
    for ch in sql.chars() {
        if placeholders.peek() == Some(&(line, column)) {
            placeholders.next();
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Ok(out)
}

/// Says plainly why a statement was refused.
fn explain_refusal(err: DataFusionError) -> DataFusionError {
    let text = err.to_string();
    if text.contains("DDL not supported") || text.contains("DML not supported") {
        DataFusionError::Plan(
            "LakeLink serves read-only queries: statements that create, change or delete data are refused".into(),
        )
    } else if text.contains("Statement not supported") {
        DataFusionError::Plan(
            "statements such as PREPARE or transactions are not supported over Flight SQL; use a query \
             (SET and RESET accept model settings, lakelink.llm.<key>)"
                .into(),
        )
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_leave_quoted_quotes_alone() {
        let sql = "SELECT 'it''s?' AS a,\n  ? AS b FROM t WHERE n = 'X'' OR ''1''=''1' AND c = ?";
        assert_eq!(
            number_question_marks(sql).unwrap(),
            "SELECT 'it''s?' AS a,\n  $1 AS b FROM t WHERE n = 'X'' OR ''1''=''1' AND c = $2"
        );
        assert_eq!(number_question_marks("SELECT 'what?'").unwrap(), "SELECT 'what?'");
    }

    #[test]
    fn question_marks_become_positional() {
        let sql = "SELECT '?' AS q, \"a?\" FROM t WHERE a = ? AND b > ? -- why?";
        assert_eq!(
            number_question_marks(sql).unwrap(),
            "SELECT '?' AS q, \"a?\" FROM t WHERE a = $1 AND b > $2 -- why?"
        );
    }

    async fn plan_of(sql: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS SELECT * FROM (VALUES (1, 2, 'a', 0.5), (3, 4, 'b', 1.5)) AS v(a, b, c, d)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        ctx.sql(sql).await.unwrap().logical_plan().clone()
    }

    #[tokio::test]
    async fn top_n_lookups_are_found_with_their_key_and_rows() {
        let top = TopN::find(&plan_of("SELECT a, c FROM t WHERE c <> 'x' ORDER BY b DESC, a LIMIT 5 OFFSET 2").await)
            .expect("a lookup");
        assert_eq!((top.key.name.as_str(), top.rows, top.order.asc, top.table.as_str()), ("b", 7, false, "t"));
        for not_narrowed in [
            "SELECT a, c FROM t ORDER BY b LIMIT 5",                    // no filter
            "SELECT a, c FROM t WHERE a > 1 ORDER BY b + 1 LIMIT 5",    // a computed key
            "SELECT a, c FROM t WHERE a > 1 ORDER BY d LIMIT 5",        // a float key (NaN)
            "SELECT a, c FROM t WHERE a > random() ORDER BY b LIMIT 5", // volatile
            "SELECT b, count(*) FROM t WHERE a > 1 GROUP BY b ORDER BY b LIMIT 5", // aggregate
            "SELECT a, c FROM t WHERE a > 1 ORDER BY b",                // no limit
        ] {
            assert!(TopN::find(&plan_of(not_narrowed).await).is_none(), "{not_narrowed}");
        }
    }

    #[tokio::test]
    async fn narrowing_puts_the_bound_first_in_the_lookups_filter() {
        for (sql, expected) in [
            ("SELECT a, c FROM t WHERE c <> 'x' ORDER BY b DESC NULLS LAST LIMIT 5", "t.b >= Int64(4)"),
            ("SELECT a, c FROM t WHERE c <> 'x' ORDER BY b DESC LIMIT 5", "t.b >= Int64(4) OR t.b IS NULL"),
            ("SELECT a, c FROM t WHERE c <> 'x' ORDER BY b LIMIT 5", "t.b <= Int64(4)"),
        ] {
            let plan = plan_of(sql).await;
            let narrowed = TopN::find(&plan).unwrap().narrow(&plan, ScalarValue::Int64(Some(4))).unwrap();
            let mut filters = vec![];
            let _ = narrowed.apply(|node| {
                if let LogicalPlan::Filter(filter) = node {
                    let conditions = datafusion::logical_expr::utils::split_conjunction(&filter.predicate);
                    filters.push(conditions.iter().map(|c| c.to_string()).collect::<Vec<_>>());
                }
                Ok(TreeNodeRecursion::Continue)
            });
            assert_eq!(filters, vec![vec![expected.to_string(), "t.c != Utf8(\"x\")".to_string()]], "{sql}");
        }
        // A key renamed by a subquery is bounded where it is named: above the
        // sort's input.
        let sql = "SELECT a, x FROM (SELECT a, b AS x FROM t WHERE c <> 'x') AS s ORDER BY x DESC LIMIT 5";
        let plan = plan_of(sql).await;
        let narrowed = TopN::find(&plan).unwrap().narrow(&plan, ScalarValue::Int64(Some(4))).unwrap();
        let mut bound_above_input = false;
        let _ = narrowed.apply(|node| {
            if let LogicalPlan::Sort(sort) = node
                && let LogicalPlan::Filter(filter) = sort.input.as_ref()
            {
                bound_above_input = filter.predicate.to_string() == "s.x >= Int64(4) OR s.x IS NULL";
            }
            Ok(TreeNodeRecursion::Continue)
        });
        assert!(bound_above_input, "{narrowed}");
    }

    #[test]
    fn the_nth_value_spans_batches_and_null_is_no_bound() {
        use datafusion::arrow::array::Int64Array;
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let batch =
            |v: Vec<Option<i64>>| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap();
        let batches = [batch(vec![Some(9), Some(8)]), batch(vec![Some(7), None])];
        assert_eq!(nth_value(&batches, 3), Some(ScalarValue::Int64(Some(7))));
        assert_eq!(nth_value(&batches, 4), None);
        assert_eq!(nth_value(&batches, 5), None);
    }

    #[test]
    fn view_types_travel_as_plain_types() {
        let nested = DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true)));
        assert_eq!(wire_type(&DataType::Utf8View), DataType::Utf8);
        assert_eq!(wire_type(&nested), DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))));
        assert_eq!(wire_type(&DataType::Int64), DataType::Int64);
    }

    #[test]
    fn conform_relabels_nullability() {
        use datafusion::arrow::array::Int64Array;
        let data = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(data, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let advertised = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        assert_eq!(conform(batch, &advertised).unwrap().schema(), advertised);
    }
}
