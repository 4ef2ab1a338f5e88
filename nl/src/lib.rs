//! The NL compiler: natural language becomes checked, read-only SQL once,
//! when a query is planned.
//!
//! * [`knowledge`]: tables, columns, descriptions, sample values, joins and
//!   accepted examples of the lake;
//! * [`retrieve`]: the tables, value hints and examples for one question;
//! * [`strategy`]: how a question becomes a prompt (`pipeline` or `plain`);
//! * [`fix`]: repairs of missing joins and misspelt tables without the model;
//! * [`check`]: extraction (DataFusion's parser) and checking (read-only
//!   planning, table policy);
//! * [`coverage`]: whether a checked query covers its question (values,
//!   years, top N named; no contradictory equalities);
//! * [`rewrite`]: `nl_query`, `nl_filter`, `nl_sql` and `nl_accept` in a
//!   statement are replaced by what they compile to;
//! * [`task`]: the trail of NL tasks (`system.nl_tasks`).
//!
//! [`compile`] ties them together: cache, retrieval, attempts with repair,
//! ensembles (first success, or a vote by result), trail.

pub mod check;
pub mod coverage;
pub mod error;
pub mod fix;
pub mod knowledge;
pub mod retrieve;
pub mod rewrite;
pub mod strategy;
pub mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionState;
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use sha2::{Digest, Sha256};

use self::check::{Checked, Policy, Problem};
use self::knowledge::Knowledge;
use self::retrieve::Retrieved;
use self::strategy::{Attempt, PromptInput, Target};
use lakelink_model::cache::{self, Answer, DiskCache};
use lakelink_model::config::LlmOptions;
use lakelink_model::hub;
use lakelink_model::trail::{self, ModelCall};

pub use error::NlError;
pub use rewrite::{expand, mentions_nl};

/// One `nl_*` function as documented (they are statement rewrites, not
/// UDFs: the scheduler replaces each call by what it compiles to).
#[derive(Debug, Clone, Copy)]
pub struct NlFunction {
    /// The SQL name.
    pub name: &'static str,
    /// Where it may appear.
    pub kind: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Its syntax.
    pub syntax: &'static str,
    /// An example.
    pub example: &'static str,
}

/// The `nl_*` functions (the source of `docs/functions.md`).
pub const FUNCTIONS: &[NlFunction] = &[
    NlFunction {
        name: "nl_query",
        kind: "table function",
        description: "The question becomes a checked, read-only SELECT over the lake, compiled once when the \
                      statement is planned and run as a derived table.",
        syntax: "nl_query('question')",
        example: "SELECT * FROM nl_query('top 5 suppliers in Germany by account balance');",
    },
    NlFunction {
        name: "nl_filter",
        kind: "WHERE condition",
        description: "The condition becomes a predicate over the columns of that SELECT's FROM clause, in \
                      parentheses, so scans prune with it like with a hand-written one.",
        syntax: "nl_filter('condition')",
        example: "SELECT o_orderkey, o_totalprice FROM orders WHERE nl_filter('urgent orders over 300k from 1995');",
    },
    NlFunction {
        name: "nl_sql",
        kind: "scalar (text)",
        description: "The SQL `nl_query` would run for the question, without running it.",
        syntax: "nl_sql('question')",
        example: "SELECT nl_sql('how many orders were placed in March 1995');",
    },
    NlFunction {
        name: "nl_accept",
        kind: "scalar (text)",
        description: "Checks the SQL and keeps the pair as an accepted example in the lake's metadata folder; \
                      similar later questions show it to the model.",
        syntax: "nl_accept('question', 'sql')",
        example: "SELECT nl_accept('how many customers are in each segment', \
                  'SELECT c_mktsegment, count(*) FROM customer GROUP BY 1');",
    },
];

/// Examples accepted by statements planned but not yet run, by query id.
type Pending = HashMap<String, (Instant, Vec<(PathBuf, knowledge::Example)>)>;

fn pending() -> &'static Mutex<Pending> {
    static PENDING: OnceLock<Mutex<Pending>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// Statements planned and never run are forgotten after this long.
const PENDING_TTL: Duration = Duration::from_secs(3600);

/// Keeps `example`, accepted by `nl_accept` in the query `query_id`, to be
/// stored in `dir` when that query runs.
pub(crate) fn pending_accept(query_id: &str, dir: &std::path::Path, example: knowledge::Example) {
    let mut pending = pending().lock().unwrap_or_else(|e| e.into_inner());
    pending.retain(|_, (at, _)| at.elapsed() < PENDING_TTL);
    let entry = pending.entry(query_id.to_string()).or_insert_with(|| (Instant::now(), Vec::new()));
    entry.1.push((dir.to_path_buf(), example));
}

/// Stores the examples the query `query_id` accepted (`nl_accept`), once:
/// the host calls it when the query runs.
pub fn commit_accepted(query_id: &str) -> Result<()> {
    let accepted = pending().lock().unwrap_or_else(|e| e.into_inner()).remove(query_id);
    for (dir, example) in accepted.map(|(_, e)| e).unwrap_or_default() {
        knowledge::accept_example(&dir, &example)?;
    }
    Ok(())
}

/// Where the compiler runs: supplied by the host that plans queries.
#[derive(Debug, Clone, Default)]
pub struct NlEnv {
    /// The lake's metadata folder (`<lake>/_lakelink`): descriptions,
    /// joins and accepted examples. `None`: no such knowledge.
    pub metadata_dir: Option<PathBuf>,
}

/// Rows a candidate's result is read to when candidates are voted.
const VOTE_ROWS: usize = 10_000;
/// Compiled questions are remembered this long in the process (a Flight SQL
/// query is planned twice: for its schema, then to run).
const MEMO_TTL: Duration = Duration::from_secs(600);
/// A question that found no SQL is answered with the same error this long,
/// so a client planning a statement several times does not ask again each time.
const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Fixes without the model tried on one answer (one per missing join or name).
const MAX_FIXES: usize = 3;
/// Version of the compiler's prompts and checks, part of every cache key.
const COMPILER_VERSION: &str = "nl-1";

/// What one `nl_*` call compiled to.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// `nl_query`, `nl_sql` or `nl_filter`.
    pub function: String,
    /// The user's words.
    pub question: String,
    /// The SQL: a query, or a condition for `nl_filter`.
    pub sql: String,
    /// Lake tables the SQL reads (for a query) or retrieval offered (for a condition).
    pub tables: Vec<String>,
    /// Failed attempts before the answer.
    pub attempts: Vec<Attempt>,
    /// Whether the answer came from the cache (no model call).
    pub cache_hit: bool,
    /// The model that answered.
    pub model: String,
}

/// One `nl_*` call to compile.
#[derive(Debug, Clone)]
pub struct Request {
    /// `nl_query`, `nl_sql` or `nl_filter`.
    pub function: String,
    /// The user's words.
    pub question: String,
    /// What to produce.
    pub target: Target,
}

/// The model-free repairs of a checked query (`Job::fit_to_question`).
enum Repair {
    Period,
    Join,
    Grouping,
    Values,
    Threshold,
    Order,
}

/// A successful answer of one candidate.
enum Answered {
    Query(Checked),
    Condition(Box<SqlExpr>),
}

impl Answered {
    fn sql(&self) -> String {
        match self {
            Answered::Query(c) => c.sql.clone(),
            Answered::Condition(e) => match e.as_ref() {
                SqlExpr::Nested(inner) => inner.to_string(),
                other => other.to_string(),
            },
        }
    }
}

/// Everything one question's candidates share.
struct Job<'a> {
    state: &'a SessionState,
    request: &'a Request,
    knowledge: &'a Knowledge,
    policy: &'a Policy,
    strategy: Box<dyn strategy::Strategy>,
    started: Instant,
}

/// The outcome of one candidate: its answer or the last problem, with every failed attempt.
struct Candidate {
    model: String,
    answer: std::result::Result<Answered, String>,
    attempts: Vec<Attempt>,
    retrieved: Retrieved,
    model_ms: f64,
    calls: u32,
}

/// Compiled SQL remembered in this process: key -> (when, SQL, model).
type Memo = Mutex<HashMap<String, (Instant, String, String)>>;

/// Questions that found no SQL recently: key -> (when, error).
fn failures() -> &'static Mutex<HashMap<String, (Instant, NlError)>> {
    static FAILURES: OnceLock<Mutex<HashMap<String, (Instant, NlError)>>> = OnceLock::new();
    FAILURES.get_or_init(Default::default)
}

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The question as the cache sees it: lower case, single spaces.
fn normalize(question: &str) -> String {
    question.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn models(options: &LlmOptions) -> Vec<String> {
    if options.nl_models.is_empty() {
        vec![options.model.clone()]
    } else {
        options.nl_models.split(',').map(str::to_string).collect()
    }
}

/// Compiles one `nl_*` call, with the session's model settings.
pub async fn compile(state: &SessionState, env: &NlEnv, request: Request) -> Result<Compiled> {
    let started = Instant::now();
    let options = LlmOptions::from_config(state.config().options());
    let allowed = knowledge::allowed_tables(state, &options.nl_tables).await?;
    let knowledge = knowledge::load(&allowed, env.metadata_dir.as_deref()).await?;
    let policy = Policy { tables: allowed, system: options.nl_system_tables };
    let target_key = match &request.target {
        Target::Query => "query".to_string(),
        Target::Filter { select_all, columns } => format!("{select_all}|{columns:?}"),
    };
    let key = cache::key(&[
        COMPILER_VERSION,
        &target_key,
        &normalize(&request.question),
        &knowledge.version,
        &options.backend.to_string(),
        &options.base_url,
        &models(&options).join(","),
        &options.nl_strategy,
        &options.nl_vote.to_string(),
        &options.nl_attempts.to_string(),
        &options.nl_max_tables.to_string(),
        &options.nl_tables,
        &options.nl_system_tables.to_string(),
    ]);
    let job = Job {
        state,
        request: &request,
        knowledge: &knowledge,
        policy: &policy,
        strategy: strategy::named(&options.nl_strategy),
        started,
    };

    // The cache: the SQL is checked again, so a changed policy applies.
    let remembered = {
        let mut memo = memo().lock().unwrap_or_else(|e| e.into_inner());
        memo.retain(|_, (at, _, _)| at.elapsed() < MEMO_TTL);
        memo.get(&key).map(|(_, sql, model)| (sql.clone(), model.clone()))
    };
    let disk = DiskCache::for_options(&options);
    // On disk: `{"sql": ..., "model": ...}`.
    let cached = remembered.or_else(|| match options.cache.then(|| disk.get(&key)).flatten() {
        Some(Answer::Text(Some(entry))) => {
            let v: serde_json::Value = serde_json::from_str(&entry).ok()?;
            Some((v["sql"].as_str()?.to_string(), v["model"].as_str().unwrap_or_default().to_string()))
        }
        _ => None,
    });
    if let Some((sql, model)) = cached
        && let Ok(answer) = job.check(&sql).await
    {
        let compiled = Compiled {
            function: request.function.clone(),
            question: request.question.clone(),
            sql: answer.sql(),
            tables: match &answer {
                Answered::Query(c) => c.tables.clone(),
                Answered::Condition(_) => vec![],
            },
            attempts: vec![],
            cache_hit: true,
            model,
        };
        job.record(&options, &compiled, "ok", 0.0, 0, &[]);
        return Ok(compiled);
    }

    {
        let mut failed = failures().lock().unwrap_or_else(|e| e.into_inner());
        failed.retain(|_, (at, _)| at.elapsed() < FAILURE_TTL);
        if let Some((_, error)) = failed.get(&key) {
            return Err(error.clone().into());
        }
    }

    let model_list = models(&options);
    let mut candidates: Vec<Candidate> = Vec::new();
    let winner: Option<usize> = if options.nl_vote > 1 && matches!(request.target, Target::Query) {
        for i in 0..options.nl_vote as usize {
            let model = &model_list[i % model_list.len()];
            // Beyond one candidate per model, candidates are sampled.
            let sample = (i >= model_list.len()).then_some(i as u32);
            candidates.push(job.candidate(&options, model, sample).await?);
        }
        job.vote(&candidates).await
    } else {
        let mut found = None;
        for model in &model_list {
            let c = job.candidate(&options, model, None).await?;
            let ok = c.answer.is_ok();
            candidates.push(c);
            if ok {
                found = Some(candidates.len() - 1);
                break;
            }
        }
        found
    };
    let model_ms: f64 = candidates.iter().map(|c| c.model_ms).sum();
    let calls: u32 = candidates.iter().map(|c| c.calls).sum();
    let all_attempts: Vec<Attempt> = candidates.iter().flat_map(|c| c.attempts.clone()).collect();
    let retrieved_tables: Vec<String> = candidates.first().map(|c| c.retrieved.tables.clone()).unwrap_or_default();
    match winner {
        Some(i) => {
            let c = &candidates[i];
            let answer = c.answer.as_ref().map_err(|e| DataFusionError::Internal(e.clone()))?;
            let sql = answer.sql();
            let compiled = Compiled {
                function: request.function.clone(),
                question: request.question.clone(),
                sql: sql.clone(),
                tables: match answer {
                    Answered::Query(q) => q.tables.clone(),
                    Answered::Condition(_) => c.retrieved.tables.clone(),
                },
                attempts: all_attempts,
                cache_hit: false,
                model: c.model.clone(),
            };
            memo()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), (Instant::now(), sql.clone(), compiled.model.clone()));
            if options.cache {
                let entry = serde_json::json!({"sql": sql, "model": compiled.model});
                disk.put(&key, &Answer::Text(Some(entry.to_string())));
            }
            job.record(&options, &compiled, "ok", model_ms, calls, &retrieved_tables);
            Ok(compiled)
        }
        None => {
            let last = candidates.last();
            let reason = last.and_then(|c| c.answer.as_ref().err().cloned()).unwrap_or_else(|| "no candidate".into());
            let last_sql = all_attempts.last().map(|a| a.sql.clone()).unwrap_or_default();
            let failed = Compiled {
                function: request.function.clone(),
                question: request.question.clone(),
                sql: last_sql.clone(),
                tables: vec![],
                attempts: all_attempts.clone(),
                cache_hit: false,
                model: model_list.join(","),
            };
            job.record(&options, &failed, "failed", model_ms, calls, &retrieved_tables);
            let error = NlError::NoValidSql {
                function: request.function.clone(),
                question: request.question.clone(),
                attempts: all_attempts.len(),
                last_sql: if last_sql.is_empty() { "(none)".to_string() } else { last_sql.replace('\n', " ") },
                reason,
            };
            failures().lock().unwrap_or_else(|e| e.into_inner()).insert(key, (Instant::now(), error.clone()));
            Err(error.into())
        }
    }
}

impl Job<'_> {
    /// Checks an answer against the target.
    async fn check(&self, text: &str) -> std::result::Result<Answered, Problem> {
        match &self.request.target {
            Target::Filter { select_all, .. } => check::check_condition(self.state, select_all, text, self.policy)
                .await
                .map(|e| Answered::Condition(Box::new(e))),
            Target::Query => check::check_query(self.state, text, self.policy).await.map(Answered::Query),
        }
    }

    /// Checks an answer; a query that fails to plan for a missing join, a
    /// misspelt table or another dialect's date-part function is fixed
    /// without the model where [`fix`] can (each fix is recorded as an
    /// attempt), and the fixed query checked again.
    async fn check_or_fix(&self, text: &str, attempts: &mut Vec<Attempt>) -> std::result::Result<Answered, Problem> {
        let first = match self.check(text).await {
            Ok(answer) => return Ok(answer),
            Err(problem) => problem,
        };
        if !matches!(self.request.target, Target::Query) || !self.strategy.repairs() {
            return Err(first);
        }
        let (mut sql, mut problem) = (text.to_string(), first.clone());
        let mut fixed = Vec::new();
        for _ in 0..MAX_FIXES {
            let Some(next) = fix::fix(&sql, &problem, self.knowledge, &self.request.question) else { break };
            fixed.push(Attempt { sql: sql.clone(), error: format!("{problem} (fixed without the model)") });
            match self.check(&next).await {
                Ok(answer) => {
                    attempts.extend(fixed);
                    return Ok(answer);
                }
                Err(p) => (sql, problem) = (next, p),
            }
        }
        Err(first)
    }

    /// Model-free repairs of a checked query, in this order, each kept when
    /// the repaired query checks and recorded as an attempt fixed without
    /// the model: a date range that is not the one period the question names
    /// gets that period ([`fix::date_ranges`]); figures grouped although the
    /// question asks for no grouping are not grouped
    /// ([`fix::needless_grouping`]); contradictory equalities on a column
    /// whose one listed value the question's words stand for get that value
    /// ([`coverage::settle`]); groups whose figure the question compares
    /// with a number get that comparison ([`fix::missing_threshold`]); rows
    /// the question asks in an order the query does not give are ordered so
    /// ([`fix::missing_order`]).
    async fn fit_to_question(&self, mut answer: Answered, attempts: &mut Vec<Attempt>) -> Answered {
        if !self.strategy.repairs() {
            return answer;
        }
        let question = &self.request.question;
        for repair in [Repair::Period, Repair::Join, Repair::Grouping, Repair::Values, Repair::Threshold, Repair::Order]
        {
            let Answered::Query(q) = &answer else { return answer };
            let fixed = match repair {
                Repair::Period => fix::date_ranges(&q.sql, question, self.knowledge)
                    .map(|sql| (sql, "its date range is not the period the question names".to_string())),
                Repair::Join => fix::needless_join(&q.sql, question, self.knowledge).map(|sql| {
                    (sql, "it joins a table the question does not name and reads nothing of but its keys".to_string())
                }),
                Repair::Grouping => fix::needless_grouping(&q.sql, question)
                    .map(|sql| (sql, "it groups figures the question does not ask to group".to_string())),
                Repair::Values => coverage::settle(question, &q.query, self.knowledge)
                    .map(|sql| (sql, coverage::gap(question, &q.query, &q.sql, self.knowledge).unwrap_or_default())),
                Repair::Threshold => fix::missing_threshold(&q.sql, question).map(|sql| {
                    (sql, "it does not compare the groups' figure with the number the question names".to_string())
                }),
                Repair::Order => fix::missing_order(&q.sql, question)
                    .map(|sql| (sql, "it does not order the rows as the question asks".to_string())),
            };
            let Some((sql, why)) = fixed else { continue };
            if let Ok(repaired) = self.check(&sql).await {
                attempts.push(Attempt { sql: q.sql.clone(), error: format!("{why} (fixed without the model)") });
                answer = repaired;
            }
        }
        answer
    }

    /// One candidate: retrieval, then attempts with repair until one passes.
    async fn candidate(&self, options: &LlmOptions, model: &str, sample: Option<u32>) -> Result<Candidate> {
        let mut options = options.clone();
        options.model = model.to_string();
        let mut retrieved = if self.strategy.retrieves() {
            retrieve::retrieve(self.knowledge, &self.request.question, &options, options.nl_max_tables).await?
        } else {
            Retrieved { tables: self.knowledge.tables.iter().map(|t| t.name.clone()).collect(), ..Default::default() }
        };
        let generator = hub::generator(&options).await.map_err(NlError::Model)?;
        let limiter = hub::limiter(generator.id(), options.concurrency);
        let attempts_allowed = if self.strategy.repairs() { options.nl_attempts } else { 1 };
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut model_ms = 0.0;
        let mut calls = 0;
        let mut last = String::new();
        let mut uncovered: Option<Answered> = None;
        for n in 0..attempts_allowed {
            let input = PromptInput {
                question: &self.request.question,
                target: &self.request.target,
                knowledge: self.knowledge,
                retrieved: &retrieved,
                attempts: &attempts,
            };
            let mut prompt = self.strategy.prompt(&input);
            // A model that repeats a failed answer is sampled instead.
            let repeated = attempts.len() >= 2 && attempts[attempts.len() - 1].sql == attempts[attempts.len() - 2].sql;
            prompt.sample = sample.map(|s| s * 31 + n).or(repeated.then_some(n));
            let completion = {
                let _permit = limiter.acquire().await.map_err(|e| DataFusionError::Execution(e.to_string()))?;
                generator.complete(&prompt).await
            };
            let mut call =
                ModelCall::now(&options.query_id, &self.request.function, generator.id(), generator.backend());
            call.rows = 1;
            let completion = match completion {
                Ok(c) => c,
                Err(e) => {
                    call.outcome = e.to_string();
                    trail::record(&options, &call);
                    return Err(DataFusionError::Execution(format!(
                        "{}('{}'): the model {} failed: {e}",
                        self.request.function,
                        self.request.question,
                        generator.id()
                    )));
                }
            };
            call.prompt_tokens = completion.usage.prompt_tokens;
            call.completion_tokens = completion.usage.completion_tokens;
            call.latency_ms = completion.usage.latency.as_secs_f64() * 1000.0;
            model_ms += call.latency_ms;
            calls += 1;
            let text = check::extract(&completion.text);
            match self.check_or_fix(&text, &mut attempts).await {
                Ok(answer) => {
                    let answer = self.fit_to_question(answer, &mut attempts).await;
                    // A query that checks but leaves part of the question
                    // out goes back with the gap while attempts remain; it
                    // stays the answer if no later one checks.
                    if n + 1 < attempts_allowed
                        && let Some(gap) = self.coverage_gap(&answer)
                    {
                        call.outcome = "retried".into();
                        trail::record(&options, &call);
                        let sql = match &answer {
                            Answered::Query(q) => q.sql.clone(),
                            Answered::Condition(_) => text,
                        };
                        attempts.push(Attempt { sql, error: format!("does not answer the question: {gap}") });
                        uncovered = Some(answer);
                        continue;
                    }
                    trail::record(&options, &call);
                    return Ok(Candidate {
                        model: generator.id().to_string(),
                        answer: Ok(answer),
                        attempts,
                        retrieved,
                        model_ms,
                        calls,
                    });
                }
                Err(problem) => {
                    call.outcome = "retried".into();
                    trail::record(&options, &call);
                    let (hint, more_tables) = repair::hint(&problem, self.knowledge, &text);
                    for t in more_tables {
                        if !retrieved.tables.contains(&t) {
                            retrieved.tables.push(t);
                        }
                    }
                    last = format!("{problem}");
                    let error = if hint.is_empty() { clip(&last, 400) } else { format!("{} {hint}", clip(&last, 300)) };
                    attempts.push(Attempt {
                        sql: if text.is_empty() { completion.text.trim().to_string() } else { text },
                        error,
                    });
                }
            }
        }
        let answer = match uncovered {
            Some(answer) => Ok(answer),
            None => Err(last),
        };
        Ok(Candidate { model: generator.id().to_string(), answer, attempts, retrieved, model_ms, calls })
    }

    /// What of the question a checked query leaves out ([`coverage`]), for
    /// strategies that repair.
    fn coverage_gap(&self, answer: &Answered) -> Option<String> {
        let Answered::Query(q) = answer else { return None };
        if !self.strategy.repairs() {
            return None;
        }
        coverage::gap(&self.request.question, &q.query, &q.sql, self.knowledge)
    }

    /// The candidate whose result most candidates share (the first on a tie).
    async fn vote(&self, candidates: &[Candidate]) -> Option<usize> {
        let mut prints: Vec<(usize, String)> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            if let Ok(Answered::Query(q)) = &c.answer
                && let Ok(print) = self.fingerprint(q).await
            {
                prints.push((i, print));
            }
        }
        let mut best: Option<(usize, usize)> = None;
        for (i, p) in &prints {
            let votes = prints.iter().filter(|(_, o)| o == p).count();
            if best.is_none_or(|(_, v)| votes > v) {
                best = Some((*i, votes));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The result of a query, order-insensitive, as a hash.
    async fn fingerprint(&self, q: &Checked) -> Result<String> {
        let plan = self
            .state
            .statement_to_plan(check::parse_one(&q.sql).map_err(|p| DataFusionError::Plan(p.to_string()))?)
            .await?;
        let batches = DataFrame::new(self.state.clone(), plan).limit(0, Some(VOTE_ROWS))?.collect().await?;
        let mut rows: Vec<String> = Vec::new();
        for batch in &batches {
            let columns: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| datafusion::arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default()))
                .collect::<std::result::Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                rows.push(columns.iter().map(|f| f.value(row).to_string()).collect::<Vec<_>>().join("\u{1f}"));
            }
        }
        rows.sort();
        let mut hasher = Sha256::new();
        for r in rows {
            hasher.update(r.as_bytes());
            hasher.update([0x1e]);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    fn record(
        &self,
        options: &LlmOptions,
        c: &Compiled,
        outcome: &str,
        model_ms: f64,
        calls: u32,
        retrieved: &[String],
    ) {
        let record = task::NlTask {
            time_ms: trail::now_ms(),
            query_id: options.query_id.clone(),
            function: c.function.clone(),
            question: c.question.clone(),
            model: c.model.clone(),
            strategy: self.strategy.name().to_string(),
            retrieved_tables: retrieved.join(","),
            attempts: serde_json::to_string(
                &c.attempts.iter().map(|a| serde_json::json!({"sql": a.sql, "error": a.error})).collect::<Vec<_>>(),
            )
            .unwrap_or_default(),
            sql: c.sql.clone(),
            outcome: outcome.to_string(),
            cache_hit: c.cache_hit,
            model_calls: calls as u64,
            model_ms,
            total_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            process: trail::process_name().to_string(),
        };
        task::record(options, &record);
    }
}

fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(n).collect::<String>())
    }
}

/// Repair hints: an error naming a column or table that does not exist gets
/// the real ones that look like it, with the join that reaches them.
pub mod repair {
    use super::check::{Cause, Problem};
    use super::knowledge::{Knowledge, stem};

    /// Edit distance, for near misses such as `orderdate` / `o_orderdate`.
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for j in 0..b.len() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(row[j + 1] + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }

    /// A hint for the model about its failed `sql`, and tables to add to its prompt.
    pub fn hint(problem: &Problem, k: &Knowledge, sql: &str) -> (String, Vec<String>) {
        let words: Vec<String> =
            sql.split(|c: char| !(c.is_alphanumeric() || c == '_')).map(str::to_ascii_lowercase).collect();
        let used: Vec<&str> =
            k.tables.iter().map(|t| t.name.as_str()).filter(|t| words.iter().any(|w| w == t)).collect();
        let Problem::Plan(unplanned) = problem else { return (String::new(), vec![]) };
        if unplanned.cause == Cause::DateMismatch {
            // A date compared with a number or text: name the real date columns.
            let dates: Vec<String> = k
                .tables
                .iter()
                .flat_map(|t| {
                    t.columns.iter().filter(|c| c.sql_type == "DATE").map(move |c| format!("{}.{}", t.name, c.name))
                })
                .collect();
            let tables = dates.iter().filter_map(|d| d.split('.').next().map(str::to_string)).collect();
            return (format!("Compare dates only with date columns: {}.", dates.join(", ")), tables);
        }
        let (is_column, name) = match &unplanned.cause {
            Cause::MissingColumn { name, .. } => (true, name.clone()),
            Cause::MissingTable(table) => (false, table.clone()),
            _ => return (String::new(), vec![]),
        };
        if is_column {
            let mut near: Vec<(usize, String, String)> = Vec::new();
            for t in &k.tables {
                for c in &t.columns {
                    let d = distance(stem(&name), stem(&c.name)).min(distance(&name, &c.name));
                    if d <= 2 || stem(&c.name).contains(stem(&name)) && stem(&name).len() >= 4 {
                        near.push((d, t.name.clone(), c.name.clone()));
                    }
                }
            }
            near.sort();
            near.truncate(3);
            if near.is_empty() {
                return (format!("There is no column {name}; use only the columns listed."), vec![]);
            }
            let mut tables = Vec::new();
            let mut parts = Vec::new();
            for (_, t, c) in &near {
                let join = used
                    .iter()
                    .filter(|r| **r != t.as_str())
                    .find_map(|r| k.joins.iter().find(|j| j.other(r) == Some(t.as_str())))
                    .map(|j| format!(" (join {t} ON {})", j.condition()))
                    .unwrap_or_default();
                parts.push(format!("{t}.{c}{join}"));
                tables.push(t.clone());
            }
            (format!("There is no column {name}. Did you mean: {}?", parts.join(", ")), tables)
        } else {
            let mut near: Vec<(usize, String)> =
                k.tables.iter().map(|t| (distance(&name, &t.name), t.name.clone())).filter(|(d, _)| *d <= 3).collect();
            near.sort();
            let names: Vec<String> = near.iter().map(|(_, n)| n.clone()).take(2).collect();
            if names.is_empty() {
                (format!("There is no table {name}; use only the tables listed."), vec![])
            } else {
                (format!("There is no table {name}. Did you mean: {}?", names.join(", ")), names)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::knowledge::tests::table;
        use super::super::knowledge::{Join, Knowledge};
        use super::*;

        #[test]
        fn a_missing_column_names_the_table_that_has_it() {
            let k = Knowledge {
                tables: vec![
                    table("lineitem", &["l_orderkey", "l_shipdate"]),
                    table("orders", &["o_orderkey", "o_orderdate"]),
                ],
                joins: vec![Join {
                    left: "lineitem".into(),
                    left_columns: vec!["l_orderkey".into()],
                    right: "orders".into(),
                    right_columns: vec!["o_orderkey".into()],
                }],
                examples: vec![],
                version: String::new(),
            };
            let problem = Problem::plan("No field named l_orderdate.");
            let (hint, tables) =
                hint(&problem, &k, "SELECT count(*) FROM lineitem WHERE l_orderdate > DATE '1995-01-01'");
            assert!(
                hint.contains("orders.o_orderdate (join orders ON lineitem.l_orderkey = orders.o_orderkey)"),
                "{hint}"
            );
            assert_eq!(tables, vec!["orders".to_string()]);
        }
    }
}
