//! How the `llm_*` functions spend model calls.
//!
//! For one query in one process:
//! * every distinct input is answered once: the functions send distinct
//!   values, and a per-query memo shares answers (and requests in flight)
//!   across batches and partitions;
//! * answers are cached on disk across queries, keyed by model, function,
//!   prompt version, arguments and input;
//! * several rows share a request where the function allows it, and
//!   requests run concurrently up to `concurrency`;
//! * a budget of requests and tokens stops a runaway query;
//! * dropping the query's futures (a failed sibling task) drops the requests
//!   in flight with them, and [`cancel_query`](crate::engine::cancel_query) (the scheduler calls it when a
//!   client abandons a query) fails the query's requests in every process at
//!   once;
//! * every request lands in the trail.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared, join_all, try_join_all};

use super::cache::{Answer, DiskCache, key};
use super::config::{LlmOptions, OnError};
use super::hub;
use super::ledger::{self, Claim, Ledger, Reply, Request};
use super::model::{Embedder, Generator, ModelError, Served, Usage};
use super::prompt::{self, Task};
use super::trail::{self, ModelCall};

type Outcome = std::result::Result<Option<Answer>, Arc<str>>;
type BatchOutcome = std::result::Result<Vec<Option<Answer>>, Arc<str>>;
type Pending = Shared<BoxFuture<'static, Outcome>>;

enum Memo {
    /// Asked and not answered yet; alive while some caller waits for it.
    Pending(WeakShared<BoxFuture<'static, Outcome>>),
    /// Answered (or failed) during this query.
    Done(Outcome),
}

/// What one query has spent and learned in this process.
#[derive(Default)]
struct QueryState {
    calls: AtomicU64,
    tokens: AtomicU64,
    memo: Mutex<HashMap<String, Memo>>,
    cancelled: AtomicBool,
    /// The ledger failed this query once: this process goes on alone.
    alone: AtomicBool,
}

/// Where cancellation markers live: processes on other machines see them
/// through the trail folder, as they share it for `system.model_calls`.
fn marker(trail_dir: &str, query_id: &str) -> PathBuf {
    Path::new(trail_dir).join("cancelled").join(query_id)
}

/// How often a query with requests in flight looks for a cancellation marker.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// Cancels a query's model requests: in this process at once, in other
/// processes within a quarter of a second through a marker in the trail folder.
pub fn cancel_query(trail_dir: &str, query_id: &str) {
    if query_id.is_empty() {
        return;
    }
    query_state(query_id).cancelled.store(true, Ordering::Relaxed);
    let path = marker(trail_dir, query_id);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
        // Markers older than a day are of no use to anyone.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if old.is_some_and(|age| age > Duration::from_secs(86_400)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    if let Err(e) = std::fs::write(&path, b"") {
        tracing::warn!("cannot write the cancellation marker {}: {e}", path.display());
    }
}

/// What the memo knows of one key.
enum Lookup {
    /// Answered (or failed) earlier in this query.
    Known(Outcome),
    /// Being asked right now by another batch.
    Asked(Pending),
    /// Nobody has asked yet (or everybody who asked gave up).
    Unknown,
}

impl QueryState {
    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memo>> {
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the query was cancelled (here or, through its marker, elsewhere).
    fn is_cancelled(&self, options: &LlmOptions) -> bool {
        if self.cancelled.load(Ordering::Relaxed) {
            return true;
        }
        if !options.query_id.is_empty() && marker(&options.trail_dir, &options.query_id).exists() {
            self.cancelled.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Resolves once the query is cancelled.
    async fn cancellation(&self, options: &LlmOptions) {
        while !self.is_cancelled(options) {
            tokio::time::sleep(CANCEL_POLL).await;
        }
    }
}

fn lookup(memo: &HashMap<String, Memo>, key: &str) -> Lookup {
    match memo.get(key) {
        Some(Memo::Done(outcome)) => Lookup::Known(outcome.clone()),
        Some(Memo::Pending(weak)) => weak.upgrade().map_or(Lookup::Unknown, Lookup::Asked),
        None => Lookup::Unknown,
    }
}

/// Queries remembered per process; older ones are forgotten.
const REMEMBERED_QUERIES: usize = 256;

fn query_state(query_id: &str) -> Arc<QueryState> {
    if query_id.is_empty() {
        return Arc::default();
    }
    type Queries = Mutex<VecDeque<(String, Arc<QueryState>)>>;
    static QUERIES: OnceLock<Queries> = OnceLock::new();
    let mut queries = QUERIES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = queries.iter().find(|(id, _)| id == query_id) {
        return s.clone();
    }
    if queries.len() >= REMEMBERED_QUERIES {
        queries.pop_front();
    }
    let state = Arc::new(QueryState::default());
    queries.push_back((query_id.to_string(), state.clone()));
    state
}

/// The cluster's ledger, when this process was given one ([`use_ledger`]).
static LEDGER: OnceLock<Arc<dyn Ledger>> = OnceLock::new();

/// Makes every query of this process ask `ledger` before it asks a model
/// ([`crate::ledger`]): the scheduler's book, in its own process or across
/// the network. The first ledger a process is given stays.
pub fn use_ledger(ledger: Arc<dyn Ledger>) {
    let _ = LEDGER.set(ledger);
}

/// How often a process looks whether keys (or cascade sample values)
/// another process asks are settled.
pub const SETTLED_POLL: Duration = Duration::from_millis(200);

/// Keys per claim request (an answer may be an embedding).
const CLAIM_CHUNK: usize = 256;

/// One function's calls within one query.
#[derive(Clone)]
struct Scope {
    options: Arc<LlmOptions>,
    state: Arc<QueryState>,
    function: &'static str,
    model: String,
    backend: &'static str,
    /// The cluster's ledger (queries without an id keep to this process).
    ledger: Option<Arc<dyn Ledger>>,
}

/// Records a request that was dropped before it finished.
struct Unfinished<'a> {
    scope: &'a Scope,
    rows: usize,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.scope.trail(self.rows, Usage::default(), false, "cancelled");
        }
    }
}

/// Why a request produced no answer.
enum Failure {
    /// The query's budget is spent, or the query was cancelled: always fails the query.
    Stop(String),
    /// The model failed: the error policy decides.
    Model(String),
    /// The model cannot answer this kind of request (answer probabilities):
    /// the caller asks another way.
    Unsupported,
}

impl Scope {
    fn new(options: &LlmOptions, function: &'static str, model: &str, backend: &'static str) -> Self {
        let ledger = LEDGER.get().filter(|_| !options.query_id.is_empty()).cloned();
        Scope {
            options: Arc::new(options.clone()),
            state: query_state(&options.query_id),
            function,
            model: model.to_string(),
            backend,
            ledger,
        }
    }

    /// Whether this query still asks the cluster's ledger (it has one, and
    /// the ledger has not failed it), so that requests are built only then.
    fn with_ledger(&self) -> bool {
        self.ledger.is_some() && !self.state.alone.load(Ordering::Relaxed)
    }

    /// Asks the ledger; `None` when there is none or it cannot be reached
    /// (this process then keeps to its own memo and budget).
    async fn ask_ledger(&self, request: Request) -> Option<Reply> {
        let ledger = self.ledger.as_ref().filter(|_| self.with_ledger())?;
        match ledger.ask(request).await {
            Ok(reply) => Some(reply),
            Err(e) => {
                // Once per query: asking again would wait for the same failure.
                if !self.state.alone.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{}: the cluster's ledger of model calls cannot be asked ({e}): for the rest of query {} \
                         this process answers its inputs on its own, within its own budget",
                        self.function,
                        self.options.query_id
                    );
                }
                None
            }
        }
    }

    /// Adds to the query's spending; what the whole query has spent, when
    /// the ledger knows it.
    async fn spend(&self, calls: i64, tokens: u64) -> Option<(u64, u64)> {
        if !self.with_ledger() {
            return None;
        }
        let query = self.options.query_id.clone();
        let process = ledger::process_id().to_string();
        match self.ask_ledger(Request::Spend { query, process, calls, tokens }).await? {
            Reply::Spent { calls, tokens } => Some((calls, tokens)),
            _ => None,
        }
    }

    /// How long this process's claims and reservations outlive its last
    /// request to the ledger: two model time limits and five seconds.
    fn lease_ms(&self) -> u64 {
        self.options.timeout_ms.saturating_mul(2).saturating_add(5_000)
    }

    /// Claims `keys` for this process (in order).
    async fn claim(&self, keys: &[String]) -> Option<Vec<Claim>> {
        if !self.with_ledger() || keys.is_empty() {
            return None;
        }
        let lease_ms = self.lease_ms();
        let mut claims = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CLAIM_CHUNK) {
            let request = Request::Claim {
                query: self.options.query_id.clone(),
                process: ledger::process_id().to_string(),
                keys: chunk.to_vec(),
                lease_ms,
            };
            match self.ask_ledger(request).await? {
                Reply::Claims(c) if c.len() == chunk.len() => claims.extend(c),
                _ => return None,
            }
        }
        Some(claims)
    }

    /// Waits for keys other processes are asking: each one's answer, or
    /// `None` once it is this process's to ask (its claimant went silent).
    async fn settled_elsewhere(&self, keys: Vec<String>) -> std::result::Result<Vec<Option<Outcome>>, Arc<str>> {
        let mut out: Vec<Option<Option<Outcome>>> = vec![None; keys.len()];
        loop {
            let open: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            if open.is_empty() {
                return Ok(out.into_iter().map(Option::flatten).collect());
            }
            if self.state.is_cancelled(&self.options) {
                return Err(format!("{}: the query was cancelled", self.function).into());
            }
            if let Some(over) = self.budget_spent().await {
                return Err(over.into());
            }
            tokio::time::sleep(SETTLED_POLL).await;
            let asked: Vec<String> = open.iter().map(|&i| keys[i].clone()).collect();
            let Some(claims) = self.claim(&asked).await else {
                // No ledger any more: ask them here.
                return Ok(out.into_iter().map(Option::flatten).collect());
            };
            for (i, claim) in open.into_iter().zip(claims) {
                match claim {
                    Claim::Asked => {}
                    Claim::Yours => out[i] = Some(None),
                    Claim::Settled(answer) => out[i] = Some(Some(answer.map_err(Arc::from))),
                }
            }
        }
    }

    fn trail(&self, rows: usize, usage: Usage, cache_hit: bool, outcome: &str) {
        self.trail_served(rows, usage, &Served::default(), cache_hit, outcome)
    }

    /// Records a scored answer and the probability of the answer chosen.
    fn trail_choice(&self, usage: Usage, served: &Served, confidence: f64) {
        let mut call = self.record(1, usage, served, false, "ok");
        call.confidence = Some(confidence);
        trail::record(&self.options, &call);
    }

    fn trail_served(&self, rows: usize, usage: Usage, served: &Served, cache_hit: bool, outcome: &str) {
        let call = self.record(rows, usage, served, cache_hit, outcome);
        trail::record(&self.options, &call);
    }

    fn record(&self, rows: usize, usage: Usage, served: &Served, cache_hit: bool, outcome: &str) -> ModelCall {
        let mut call = ModelCall::now(&self.options.query_id, self.function, &self.model, self.backend);
        call.served_by = served.by.clone();
        call.shared = served.shared;
        call.rows = rows as u64;
        call.prompt_tokens = usage.prompt_tokens;
        call.completion_tokens = usage.completion_tokens;
        call.latency_ms = usage.latency.as_secs_f64() * 1000.0;
        call.cache_hit = cache_hit;
        call.outcome = outcome.to_string();
        call
    }

    fn cache(&self) -> Option<DiskCache> {
        self.options.cache.then(|| DiskCache::for_options(&self.options))
    }

    /// Why the query must stop, when `calls` requests (this one included)
    /// and `spent` tokens are over its budget.
    fn over_budget(&self, calls: u64, spent: u64) -> Option<String> {
        let o = &self.options;
        if calls > o.max_calls {
            return Some(format!(
                "{}: the query reached its budget of {} model calls (lakelink.llm.max_calls)",
                self.function, o.max_calls
            ));
        }
        (spent >= o.max_tokens).then(|| {
            format!(
                "{}: the query reached its budget of {} model tokens (lakelink.llm.max_tokens); it spent {spent}",
                self.function, o.max_tokens
            )
        })
    }

    /// Whether the query's budget over the cluster is spent: a process that
    /// waits for another's answers stops then, since the other may have
    /// stopped before settling them.
    async fn budget_spent(&self) -> Option<String> {
        let (calls, spent) = self.spend(0, 0).await?;
        self.over_budget(calls, spent)
    }

    /// One model request under the budget, the concurrency limit and the time limit.
    async fn request<T>(
        &self,
        rows: usize,
        call: impl Future<Output = std::result::Result<T, ModelError>>,
        usage: fn(&T) -> Usage,
    ) -> std::result::Result<T, Failure> {
        let o = &self.options;
        let cancelled = || Failure::Stop(format!("{}: the query was cancelled", self.function));
        if self.state.is_cancelled(o) {
            return Err(cancelled());
        }
        let mut calls = self.state.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut spent = self.state.tokens.load(Ordering::Relaxed);
        if let Some(cluster) = self.spend(1, 0).await {
            (calls, spent) = cluster;
        }
        if let Some(over) = self.over_budget(calls, spent) {
            return Err(Failure::Stop(over));
        }
        // The local model computes one prompt at a time; waiting for it is not
        // part of a request's time limit.
        let width = if self.backend == "local" { 1 } else { o.concurrency };
        let _permit = hub::limiter(&self.model, width).acquire_owned().await.expect("limiters are never closed");
        let limit = Duration::from_millis(o.timeout_ms) + Duration::from_millis(500);
        // A request dropped before its answer (the query failed elsewhere or
        // was cancelled) still lands in the trail.
        let mut unfinished = Unfinished { scope: self, rows, done: false };
        let result = tokio::select! {
            r = tokio::time::timeout(limit, call) => match r {
                Ok(r) => r,
                Err(_) => Err(ModelError::Timeout(format!(
                    "{} gave no answer within {} ms (lakelink.llm.timeout_ms)",
                    self.model, o.timeout_ms
                ))),
            },
            // Dropping `call` closes the request in flight.
            _ = self.state.cancellation(o) => return Err(cancelled()),
        };
        unfinished.done = true;
        match result {
            Ok(value) => {
                let u = usage(&value);
                self.state.tokens.fetch_add(u.prompt_tokens + u.completion_tokens, Ordering::Relaxed);
                self.spend(0, u.prompt_tokens + u.completion_tokens).await;
                Ok(value)
            }
            Err(ModelError::Unsupported(_)) => {
                // Not spent: the same row is asked again another way.
                self.state.calls.fetch_sub(1, Ordering::Relaxed);
                self.spend(-1, 0).await;
                Err(Failure::Unsupported)
            }
            Err(e) => {
                self.trail(rows, Usage::default(), false, &format!("error: {e}"));
                Err(Failure::Model(format!("{}: model {} failed: {e}", self.function, self.model)))
            }
        }
    }

    /// Applies the error policy to `rows` rows that got no usable answer.
    fn policy(&self, failure: Failure, rows: usize) -> BatchOutcome {
        match failure {
            Failure::Stop(m) => Err(m.into()),
            Failure::Unsupported => Err(format!("{}: the model cannot answer this request", self.function).into()),
            Failure::Model(m) => match self.options.on_error {
                OnError::Fail => Err(format!("{m} (SET lakelink.llm.on_error = 'null' to return NULL instead)").into()),
                OnError::Null => {
                    tracing::warn!("{m}; returning NULL for {rows} row(s)");
                    Ok(vec![None; rows])
                }
            },
        }
    }

    /// Answers `inputs` (distinct), each with its cache key, asking the
    /// model through `run` in batches of `batch_size` for what neither the
    /// query's memo nor the disk cache knows.
    async fn resolve(
        &self,
        keys: Vec<String>,
        inputs: Vec<String>,
        batch_size: usize,
        run: impl Fn(Vec<String>, Vec<String>) -> BoxFuture<'static, BatchOutcome>,
    ) -> Result<Vec<Option<Answer>>> {
        let n = inputs.len();
        let mut results: Vec<Option<Option<Answer>>> = vec![None; n];
        let mut waiting: Vec<(usize, Pending)> = Vec::new();

        // Answers of this query first, then the disk cache.
        let mut unknown = Vec::new();
        {
            let memo = self.state.memo();
            for (i, key) in keys.iter().enumerate() {
                match lookup(&memo, key) {
                    Lookup::Known(outcome) => results[i] = Some(outcome.map_err(execution)?),
                    Lookup::Asked(p) => waiting.push((i, p)),
                    Lookup::Unknown => unknown.push(i),
                }
            }
        }
        let mut misses = Vec::new();
        match self.cache() {
            Some(cache) => {
                let mut hits = Vec::new();
                for i in unknown {
                    match cache.get(&keys[i]) {
                        Some(answer) => {
                            results[i] = Some(Some(answer));
                            hits.push(i);
                        }
                        None => misses.push(i),
                    }
                }
                if !hits.is_empty() {
                    self.trail(hits.len(), Usage::default(), true, "ok");
                    // Later batches of this query find them in the memo.
                    let mut memo = self.state.memo();
                    for i in hits {
                        memo.insert(keys[i].clone(), Memo::Done(Ok(results[i].clone().flatten())));
                    }
                }
            }
            None => misses = unknown,
        }

        let mut todo = misses;
        loop {
            // The cluster's ledger first: what other processes of the query
            // have answered, or are asking now.
            let mut elsewhere = Vec::new();
            if self.with_ledger()
                && let Some(claims) = self.claim(&todo.iter().map(|&i| keys[i].clone()).collect::<Vec<_>>()).await
            {
                let mut mine = Vec::new();
                for (i, claim) in todo.into_iter().zip(claims) {
                    match claim {
                        Claim::Yours => mine.push(i),
                        Claim::Asked => elsewhere.push(i),
                        Claim::Settled(answer) => {
                            let outcome: Outcome = answer.map_err(Arc::from);
                            self.state.memo().insert(keys[i].clone(), Memo::Done(outcome.clone()));
                            results[i] = Some(outcome.map_err(execution)?);
                        }
                    }
                }
                todo = mine;
            }
            // Claim what nobody in this process is asking yet, batch it, and
            // wait for everything.
            {
                // Another batch may have claimed a key since the first look.
                let mut memo = self.state.memo();
                let mut owned = Vec::new();
                for i in std::mem::take(&mut todo) {
                    match lookup(&memo, &keys[i]) {
                        Lookup::Known(outcome) => results[i] = Some(outcome.map_err(execution)?),
                        Lookup::Asked(p) => waiting.push((i, p)),
                        Lookup::Unknown => owned.push(i),
                    }
                }
                for chunk in owned.chunks(batch_size.max(1)) {
                    let chunk_keys: Vec<String> = chunk.iter().map(|&i| keys[i].clone()).collect();
                    let batch = run(chunk.iter().map(|&i| inputs[i].clone()).collect(), chunk_keys.clone());
                    let batch = self.settling(chunk_keys, batch).shared();
                    for (j, &i) in chunk.iter().enumerate() {
                        let item: Pending = batch.clone().map(move |r| r.map(|mut v| v[j].take())).boxed().shared();
                        if let Some(weak) = item.downgrade() {
                            memo.insert(keys[i].clone(), Memo::Pending(weak));
                        }
                        waiting.push((i, item));
                    }
                }
            }
            // Each answer enters the memo as it arrives; the first failure fails
            // the batch at once, and dropping the other requests cancels them.
            let here = try_join_all(waiting.iter().map(|(i, pending)| {
                let (key, state) = (keys[*i].clone(), self.state.clone());
                pending.clone().map(move |outcome| {
                    state.memo().insert(key, Memo::Done(outcome.clone()));
                    outcome
                })
            }));
            let there = self.settled_elsewhere(elsewhere.iter().map(|&i| keys[i].clone()).collect());
            let (answers, settled) = futures::future::try_join(here, there).await.map_err(execution)?;
            for ((i, _), answer) in waiting.drain(..).zip(answers) {
                results[i] = Some(answer);
            }
            for (i, settled) in elsewhere.into_iter().zip(settled) {
                match settled {
                    Some(outcome) => {
                        self.state.memo().insert(keys[i].clone(), Memo::Done(outcome.clone()));
                        results[i] = Some(outcome.map_err(execution)?);
                    }
                    // Its claimant went silent: asked here in the next round.
                    None => todo.push(i),
                }
            }
            if todo.is_empty() {
                return Ok(results.into_iter().map(Option::flatten).collect());
            }
        }
    }

    /// `batch` (the answers of `keys`), its answers settled in the ledger
    /// once they come, for the query's other processes.
    fn settling(&self, keys: Vec<String>, batch: BoxFuture<'static, BatchOutcome>) -> BoxFuture<'static, BatchOutcome> {
        if !self.with_ledger() {
            return batch;
        }
        let scope = self.clone();
        async move {
            let outcome = batch.await;
            let answers = match &outcome {
                Ok(answers) => keys.into_iter().zip(answers.iter().cloned().map(Ok)).collect(),
                Err(e) => keys.into_iter().map(|k| (k, Err(e.to_string()))).collect(),
            };
            let (query, process) = (scope.options.query_id.clone(), ledger::process_id().to_string());
            scope.ask_ledger(Request::Settle { query, process, answers }).await;
            outcome
        }
        .boxed()
    }
}

fn execution(message: Arc<str>) -> DataFusionError {
    DataFusionError::Execution(message.to_string())
}

fn model_error(function: &str, e: ModelError) -> DataFusionError {
    DataFusionError::Execution(format!("{function}: {e}"))
}

/// Asks a generative task for each of `inputs` (distinct values); `None`
/// is SQL NULL (no value, or an unusable answer under `on_error = 'null'`).
pub async fn answers(options: &LlmOptions, task: Arc<dyn Task>, inputs: Vec<String>) -> Result<Vec<Option<String>>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let generator = hub::generator(options).await.map_err(|e| model_error(task.function(), e))?;
    let scope = Scope::new(options, task.function(), generator.id(), generator.backend());
    let instructions = task.instructions();
    // Calibrated and plain answers differ: they are cached apart.
    let calibrated = if options.calibrate && task.calibrated() { " calibrated" } else { "" };
    let version = format!("{}{calibrated}", task.version());
    let keys =
        inputs.iter().map(|input| key(&[generator.id(), task.function(), &version, &instructions, input])).collect();
    // Closed answers are scored one row per request unless the session
    // asked for batches (which trade the probabilities for fewer requests).
    let batch_size = match (task.allowed(), options.batch_size) {
        (Some(_), 0) => 1,
        _ if task.batchable() => options.rows_per_request(),
        _ => 1,
    };
    let answers = scope
        .resolve(keys, inputs, batch_size, |items, keys| {
            text_batch(scope.clone(), generator.clone(), task.clone(), items, keys)
        })
        .await?;
    Ok(answers
        .into_iter()
        .map(|a| match a {
            Some(Answer::Text(t)) => t,
            _ => None,
        })
        .collect())
}

/// One request for `items` (retried once when the answer is unusable; a
/// batch that stays unusable is asked row by row).
fn text_batch(
    scope: Scope,
    generator: Arc<dyn Generator>,
    task: Arc<dyn Task>,
    items: Vec<String>,
    keys: Vec<String>,
) -> BoxFuture<'static, BatchOutcome> {
    async move { text_batch_inner(scope, generator, task, items, keys).await }.boxed()
}

async fn text_batch_inner(
    scope: Scope,
    generator: Arc<dyn Generator>,
    task: Arc<dyn Task>,
    items: Vec<String>,
    keys: Vec<String>,
) -> BatchOutcome {
    let n = items.len();
    let mut prompt = prompt::build(task.as_ref(), &items, scope.options.max_output_tokens);
    if n == 1
        && let Some(allowed) = task.allowed()
    {
        let spellings: Vec<Vec<String>> = allowed.iter().map(|a| a.spellings.clone()).collect();
        let prior = match scope.options.calibrate && task.calibrated() {
            true => match prior(&scope, generator.as_ref(), task.as_ref(), &spellings).await {
                Ok(prior) => prior,
                // The row's own request would meet the same fault; an
                // uncalibrated answer would be a different function's.
                Err(failure) => return scope.policy(failure, n),
            },
            false => None,
        };
        match scope.request(n, generator.choose(&prompt, &spellings), |c| c.usage).await {
            Ok(mut choice) => {
                if let Some(prior) = prior {
                    choice.probabilities = calibrated(&choice.probabilities, &prior);
                }
                let (best, p) = choice.best().unwrap_or((0, 0.0));
                scope.trail_choice(choice.usage, &choice.served, p);
                let value = if task.scored() {
                    Some(format!("{:.6}", choice.probabilities.first().copied().unwrap_or(0.0)))
                } else {
                    allowed.get(best).and_then(|a| a.value.clone())
                };
                let answer = Some(Answer::Text(value));
                if let Some(cache) = scope.cache() {
                    cache.put(&keys[0], answer.as_ref().expect("an answer"));
                }
                return Ok(vec![answer]);
            }
            // Asked for a text answer below instead.
            Err(Failure::Unsupported) => {}
            Err(failure) => return scope.policy(failure, n),
        }
    }
    let mut problem = String::new();
    for attempt in 0..2 {
        let completion = match scope.request(n, generator.complete(&prompt), |c| c.usage).await {
            Ok(c) => c,
            Err(failure) => return scope.policy(failure, n),
        };
        match prompt::parse(task.as_ref(), &completion.text, n) {
            Ok(values) => {
                let outcome = if attempt == 0 { "ok" } else { "ok after retry" };
                scope.trail_served(n, completion.usage, &completion.served, false, outcome);
                let answers: Vec<Option<Answer>> = values.into_iter().map(|v| Some(Answer::Text(v))).collect();
                if let Some(cache) = scope.cache() {
                    for (k, a) in keys.iter().zip(&answers) {
                        if let Some(a) = a {
                            cache.put(k, a);
                        }
                    }
                }
                return Ok(answers);
            }
            Err(reason) => {
                scope.trail_served(
                    n,
                    completion.usage,
                    &completion.served,
                    false,
                    &format!("unusable answer: {reason}"),
                );
                problem = format!("{reason} (answer: '{}')", prompt::clip(&completion.text));
                prompt.user.push_str(&format!(
                    "\n\nYour previous answer could not be used: {reason}. Answer again, exactly in the requested format."
                ));
            }
        }
    }
    if n > 1 {
        let singles = items
            .into_iter()
            .zip(keys)
            .map(|(item, key)| text_batch(scope.clone(), generator.clone(), task.clone(), vec![item], vec![key]));
        let mut out = Vec::with_capacity(n);
        for r in join_all(singles).await {
            out.extend(r?);
        }
        return Ok(out);
    }
    let failure = Failure::Model(format!(
        "{}: the model's answer could not be used, even after a retry: {problem}",
        task.function()
    ));
    scope.policy(failure, n)
}

/// The text of a row that says nothing: what the model answers for it is
/// its bias for the question alone.
const CONTENT_FREE: &str = "N/A";

/// The model's probabilities of the allowed answers for a row that says
/// nothing, asked once per model and prompt in each process (requests for
/// other prompts do not wait for it). `None` when the model reports no
/// probabilities (its answers are then read as text). A failed request is
/// the row's failure, under the error policy, and is not remembered: the
/// next row asks again, so an endpoint that is down costs one request per
/// row, as for the functions that are not calibrated.
async fn prior(
    scope: &Scope,
    generator: &dyn Generator,
    task: &dyn Task,
    spellings: &[Vec<String>],
) -> Result<Option<Vec<f64>>, Failure> {
    type Priors = Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Vec<f64>>>>>;
    static PRIORS: OnceLock<Priors> = OnceLock::new();
    let prompt = prompt::build(task, &[CONTENT_FREE.to_string()], scope.options.max_output_tokens);
    let key = key(&[generator.id(), &prompt.system, &prompt.user, &format!("{spellings:?}")]);
    let cell = {
        let mut priors = PRIORS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if priors.len() >= 4096 {
            priors.clear();
        }
        priors.entry(key).or_default().clone()
    };
    let asked = cell.get_or_try_init(|| async {
        let choice = scope.request(1, generator.choose(&prompt, spellings), |c| c.usage).await?;
        let mut call = scope.record(1, choice.usage, &choice.served, false, "ok (calibration: a content-free row)");
        call.confidence = choice.best().map(|(_, p)| p);
        trail::record(&scope.options, &call);
        Ok::<_, Failure>(choice.probabilities)
    });
    match asked.await {
        Ok(prior) => Ok(Some(prior.clone())),
        Err(Failure::Unsupported) => Ok(None),
        Err(failure) => Err(failure),
    }
}

/// Contextual calibration: each answer's probability divided by its
/// probability for a content-free row, normalized again, so that a model
/// that leans to one answer whatever the row says no longer does.
fn calibrated(probabilities: &[f64], prior: &[f64]) -> Vec<f64> {
    if probabilities.len() != prior.len() {
        return probabilities.to_vec();
    }
    let raw: Vec<f64> = probabilities.iter().zip(prior).map(|(p, q)| p / q.max(1e-3)).collect();
    let total: f64 = raw.iter().sum();
    if total > 0.0 { raw.iter().map(|r| r / total).collect() } else { probabilities.to_vec() }
}

/// Rows per embedding request.
const EMBED_BATCH: usize = 32;

/// Adds `entries` to the query's cluster-wide sample `cascade` of `size`
/// values and reserves up to `want` more for this process
/// ([`ledger::Request::Sample`]). `None` when the query has no ledger or
/// it cannot be reached: the process then samples on its own. Once the
/// query is cancelled or its budget spent this fails, so that a process
/// waiting for the others' sample values stops waiting.
pub async fn share_sample(
    options: &LlmOptions,
    function: &'static str,
    cascade: &str,
    size: usize,
    want: usize,
    entries: Vec<String>,
) -> Result<Option<ledger::SampleState>> {
    let scope = Scope::new(options, function, "", "proxy");
    if scope.state.is_cancelled(options) {
        return Err(DataFusionError::Execution(format!("{function}: the query was cancelled")));
    }
    if !scope.with_ledger() {
        return Ok(None);
    }
    if let Some(over) = scope.budget_spent().await {
        return Err(DataFusionError::Execution(over));
    }
    let request = Request::Sample {
        query: options.query_id.clone(),
        process: ledger::process_id().to_string(),
        cascade: cascade.to_string(),
        size,
        want,
        entries,
        lease_ms: scope.lease_ms(),
    };
    Ok(match scope.ask_ledger(request).await {
        Some(Reply::Sample(state)) => Some(state),
        _ => None,
    })
}

/// Embeds each of `inputs` (distinct values) for `function`.
pub async fn embeddings(
    options: &LlmOptions,
    function: &'static str,
    inputs: Vec<String>,
) -> Result<Vec<Option<Vec<f32>>>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let embedder = hub::embedder(options).await.map_err(|e| model_error(function, e))?;
    let scope = Scope::new(options, function, embedder.id(), embedder.backend());
    let keys = inputs.iter().map(|input| key(&[embedder.id(), "embed", input])).collect();
    let answers = scope
        .resolve(keys, inputs, EMBED_BATCH, |items, keys| {
            embed_batch(scope.clone(), embedder.clone(), items, keys).boxed()
        })
        .await?;
    Ok(answers
        .into_iter()
        .map(|a| match a {
            Some(Answer::Vector(v)) => Some(v),
            _ => None,
        })
        .collect())
}

async fn embed_batch(scope: Scope, embedder: Arc<dyn Embedder>, items: Vec<String>, keys: Vec<String>) -> BatchOutcome {
    let n = items.len();
    let dim = scope.options.embedding_dim;
    let result = match scope.request(n, embedder.embed(&items), |e| e.usage).await {
        Ok(e) => e,
        Err(failure) => return scope.policy(failure, n),
    };
    if let Some(v) = result.vectors.iter().find(|v| v.len() != dim) {
        let reason = format!(
            "{}: {} returned vectors of {} dimensions but lakelink.llm.embedding_dim is {dim}",
            scope.function,
            scope.model,
            v.len()
        );
        scope.trail(n, result.usage, false, &format!("unusable answer: {reason}"));
        return scope.policy(Failure::Model(reason), n);
    }
    scope.trail_served(n, result.usage, &result.served, false, "ok");
    let answers: Vec<Option<Answer>> = result.vectors.into_iter().map(|v| Some(Answer::Vector(v))).collect();
    if let Some(cache) = scope.cache() {
        for (k, a) in keys.iter().zip(&answers) {
            if let Some(a) = a {
                cache.put(k, a);
            }
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger that cannot be reached, counting the requests made to it.
    #[derive(Default)]
    struct Unreachable(AtomicU64);

    #[async_trait::async_trait]
    impl Ledger for Unreachable {
        async fn ask(&self, _: Request) -> std::result::Result<Reply, String> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err("connection refused".into())
        }
    }

    #[tokio::test]
    async fn an_unreachable_ledger_is_asked_once_per_query() {
        let ledger = Arc::new(Unreachable::default());
        let options = LlmOptions { query_id: "q-unreachable".into(), ..LlmOptions::default() };
        let scope = Scope { ledger: Some(ledger.clone()), ..Scope::new(&options, "llm_filter", "m", "openai") };
        assert_eq!(scope.spend(1, 0).await, None);
        assert_eq!(scope.claim(&["k".to_string()]).await, None);
        assert_eq!(scope.spend(0, 10).await, None);
        assert_eq!(ledger.0.load(Ordering::Relaxed), 1, "asked again after it failed");
        // Keys another process was asking are then asked here.
        assert_eq!(scope.settled_elsewhere(vec!["k".into()]).await.unwrap(), vec![None]);
    }
}
