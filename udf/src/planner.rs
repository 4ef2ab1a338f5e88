//! Planning rules for the `llm_*` functions, run by every planning session
//! (the Flight SQL front door and Ballista's scheduler):
//!
//! * A filter that mixes ordinary predicates with `llm_*` predicates becomes
//!   two filters, the ordinary one first: the model only sees rows that
//!   survive the cheap predicates (DataFusion evaluates an async function for
//!   every row of its input, so the order must be in the plan itself).
//! * Model calls inside aggregates (`GROUP BY llm_classify(...)`,
//!   `count(llm_embed(...))`), window functions (`OVER (ORDER BY
//!   llm_similarity(...))`) and sorts (`ORDER BY llm_similarity(...)`)
//!   are computed by a projection below them, where DataFusion runs async
//!   functions; the aggregate or sort then reads plain columns.
//! * A semantic join (an inner join on `llm_match(left, right, condition)`)
//!   never asks the model about every pair: the join without that
//!   condition is computed, each pair scored by the cosine similarity of
//!   the two texts' embeddings, each left value keeps the
//!   `lakelink.llm.match_candidates` most similar right values (blocking),
//!   and the model picks the one of them the condition holds for, in one
//!   request per left value (`llm_pick`: the join as a classification).
//!   With `match_candidates = 0` the model checks every pair instead.
//!   Model calls in a join's `ON` run in a filter above the join, where
//!   DataFusion runs async functions.
//! * A semantic top-k (`ORDER BY llm_rank(text, criterion) LIMIT k`) first
//!   keeps the `k * lakelink.llm.rank_pool` rows whose text is most similar
//!   to the criterion by embedding (`0`: every row); the model scores those.
//! * Aggregates receive no session settings at run time, so each
//!   `llm_summarize` call is bound to the session's `lakelink.llm.*` options,
//!   which then travel to executors as the function's state.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, Result, plan_err};
use datafusion::functions_aggregate::array_agg::array_agg_udaf;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, Sort as SortExpr, WindowFunction};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    Aggregate, AggregateUDF, Expr, ExprFunctionExt, Filter, Join, JoinType, LogicalPlan, LogicalPlanBuilder, Sort,
    Window, WindowFunctionDefinition, col, lit,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use crate::functions::{LlmPick, LlmSimilarity, LlmSummarize, Semantic};
use lakelink_model::config::LlmOptions;

/// Whether this node (not its children) is a scalar model call.
fn is_model_scalar(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name().starts_with("llm_"))
}

/// Whether an expression contains a scalar model call.
fn has_model_scalar(expr: &Expr) -> bool {
    expr.exists(|e| Ok(is_model_scalar(e))).unwrap_or(false)
}

/// Whether an expression calls a model (scalar or aggregate).
pub fn calls_model(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(is_model_scalar(e) || matches!(e, Expr::AggregateFunction(f) if f.func.name().starts_with("llm_")))
    })
    .unwrap_or(false)
}

/// Whether any expression of the plan (subqueries included) calls a model.
pub fn plan_calls_model(plan: &LogicalPlan) -> bool {
    plan.exists(|node| Ok(node.expressions().iter().any(calls_model))).unwrap_or(false)
}

/// The optimizer rule described in the module documentation.
#[derive(Debug, Default)]
pub struct LlmPlanning;

impl OptimizerRule for LlmPlanning {
    fn name(&self) -> &str {
        "lakelink_llm_planning"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        match plan {
            LogicalPlan::Join(join) => model_calls_above_join(join, config),
            LogicalPlan::Filter(filter) => match semantic_join_in_filter(filter, config)? {
                Ok(joined) => Ok(Transformed::yes(joined)),
                Err(filter) => cheap_predicates_first(filter),
            },
            LogicalPlan::Aggregate(aggregate) => {
                let bound = bind_options(aggregate, config)?;
                bound.transform_data(|plan| match plan {
                    LogicalPlan::Aggregate(aggregate) => compute_below_aggregate(aggregate),
                    other => Ok(Transformed::no(other)),
                })
            }
            LogicalPlan::Window(window) => compute_below_window(window),
            LogicalPlan::Sort(sort) => rank_pool_first(sort, config)?.transform_data(compute_below_sort),
            other => Ok(Transformed::no(other)),
        }
    }
}

/// `llm_similarity(a, b)`.
fn similarity(a: Expr, b: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(Semantic::udf(LlmSimilarity)), vec![a, b]))
}

/// The left and right text of an `llm_match` call whose first argument
/// reads only `left`'s columns and whose second reads only `right`'s (or
/// the other way round: then they are returned swapped).
fn match_sides(e: &Expr, left: &DFSchema, right: &DFSchema) -> Option<(Expr, Expr)> {
    let Expr::ScalarFunction(f) = e else { return None };
    if f.func.name() != "llm_match" || f.args.len() != 3 {
        return None;
    }
    let reads = |e: &Expr, schema: &DFSchema| {
        let columns = e.column_refs();
        !columns.is_empty() && columns.iter().all(|c| schema.has_column(c))
    };
    let (a, b) = (&f.args[0], &f.args[1]);
    if reads(a, left) && reads(b, right) {
        Some((a.clone(), b.clone()))
    } else if reads(a, right) && reads(b, left) {
        Some((b.clone(), a.clone()))
    } else {
        None
    }
}

/// An inner join with model calls in its `ON`: the calls move to a filter
/// above it (where they can run), a semantic join when one is `llm_match`.
fn model_calls_above_join(join: Join, config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
    let Some(on) = join.filter.clone().filter(calls_model) else {
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    };
    if join.join_type != JoinType::Inner {
        return plan_err!(
            "model calls (llm_*) in the ON of a {} join are not supported: use an inner join, \
             or compute the call in a subquery or the WHERE clause",
            join.join_type
        );
    }
    let (model, cheap): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(on).into_iter().partition(calls_model);
    let join = LogicalPlan::Join(Join { filter: conjunction(cheap), ..join });
    let filter = Filter::try_new(conjunction(model).expect("a model call"), Arc::new(join))?;
    match semantic_join_in_filter(filter, config)? {
        Ok(joined) => Ok(Transformed::yes(joined)),
        Err(filter) => Ok(Transformed::yes(LogicalPlan::Filter(filter))),
    }
}

/// A filter with `llm_match(left, right, condition)` right above an inner
/// join of the two sides becomes a semantic join (see the module
/// documentation); any other filter comes back unchanged.
fn semantic_join_in_filter(
    filter: Filter,
    config: &dyn OptimizerConfig,
) -> Result<std::result::Result<LogicalPlan, Filter>> {
    let candidates = LlmOptions::from_config(&config.options()).match_candidates;
    let LogicalPlan::Join(join) = filter.input.as_ref() else { return Ok(Err(filter)) };
    if candidates == 0 || join.join_type != JoinType::Inner {
        return Ok(Err(filter));
    }
    let mut conjuncts = split_conjunction_owned(filter.predicate.clone());
    let Some((at, (left, right))) = conjuncts
        .iter()
        .enumerate()
        .find_map(|(i, e)| match_sides(e, join.left.schema(), join.right.schema()).map(|sides| (i, sides)))
    else {
        return Ok(Err(filter));
    };
    let Expr::ScalarFunction(call) = conjuncts.remove(at) else { unreachable!("match_sides found a call") };
    let condition = call.args[2].clone();
    let output: Vec<Expr> = join.schema.columns().into_iter().map(Expr::Column).collect();
    // Each pair's similarity is computed by a projection of its own (where
    // async functions run); each left value's pairs are numbered from the
    // most similar (ties to the smaller right text, so plans repeat), and
    // the model picks among each left value's candidates in one request.
    let mut scored = output.clone();
    scored.push(similarity(left.clone(), right.clone()).alias("__llm_similarity"));
    let number = row_number()
        .partition_by(vec![left.clone()])
        .order_by(vec![col("__llm_similarity").sort(false, true), right.clone().sort(true, true)])
        .build()?
        .alias("__llm_candidate");
    let gather = Expr::WindowFunction(Box::new(WindowFunction::new(
        WindowFunctionDefinition::AggregateUDF(array_agg_udaf()),
        vec![right.clone()],
    )))
    .partition_by(vec![left.clone()])
    .build()?
    .alias("__llm_candidates");
    let pick = Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(Semantic::udf(LlmPick)),
        vec![left, col("__llm_candidates"), condition],
    ));
    let mut picked = output.clone();
    picked.push(pick.alias("__llm_pick"));
    let mut plan = LogicalPlanBuilder::from(filter.input.as_ref().clone())
        .project(scored)?
        .window(vec![number])?
        .filter(col("__llm_candidate").lt_eq(lit(candidates as u64)))?
        .window(vec![gather])?
        .project(picked)?
        .filter(right.eq(col("__llm_pick")))?
        .project(output)?;
    if let Some(rest) = conjunction(conjuncts) {
        plan = plan.filter(rest)?;
    }
    Ok(Ok(plan.build()?))
}

/// `ORDER BY llm_rank(text, criterion) LIMIT k` (directly, or through a
/// column of the projection below): the sort's input becomes the `k *
/// rank_pool` rows most similar to the criterion.
fn rank_pool_first(sort: Sort, config: &dyn OptimizerConfig) -> Result<Transformed<Sort>> {
    let pool = LlmOptions::from_config(&config.options()).rank_pool;
    let (Some(k), Some(first), true) = (sort.fetch, sort.expr.first(), pool > 0) else {
        return Ok(Transformed::no(sort));
    };
    let rank_args = |e: &Expr| match e {
        Expr::ScalarFunction(f) if f.func.name() == "llm_rank" && f.args.len() == 2 => Some(f.args.clone()),
        _ => None,
    };
    let (keep, asc) = (k.saturating_mul(pool), first.asc);
    let pooled = |input: Arc<LogicalPlan>, args: Vec<Expr>| -> Result<Arc<LogicalPlan>> {
        let by = SortExpr { expr: similarity(args[0].clone(), args[1].clone()), asc, nulls_first: false };
        Ok(Arc::new(compute_below_sort(Sort { expr: vec![by], input, fetch: Some(keep) })?.data))
    };
    if let Some(args) = rank_args(&first.expr) {
        let input = pooled(sort.input, args)?;
        return Ok(Transformed::yes(Sort { input, ..sort }));
    }
    // ORDER BY an alias of llm_rank(...) computed by the projection below.
    if let (Expr::Column(c), LogicalPlan::Projection(projection)) = (&first.expr, sort.input.as_ref()) {
        let defined = projection.expr.iter().zip(projection.schema.columns()).find(|(_, out)| out == c);
        let args = defined.and_then(|(e, _)| rank_args(&e.clone().unalias_nested().data));
        if let Some(args) = args.filter(|args| !pooled_already(&projection.input, args)) {
            let mut projection = projection.clone();
            projection.input = pooled(projection.input, args)?;
            let input = Arc::new(LogicalPlan::Projection(projection));
            return Ok(Transformed::yes(Sort { input, ..sort }));
        }
    }
    Ok(Transformed::no(sort))
}

/// Whether `plan` (under its projections) already keeps only the rows
/// most similar to a criterion: a sort with a limit by `llm_similarity(args)`.
fn pooled_already(plan: &LogicalPlan, args: &[Expr]) -> bool {
    match plan {
        LogicalPlan::Projection(p) => pooled_already(&p.input, args),
        LogicalPlan::Sort(Sort { fetch: Some(_), input, .. }) => input.expressions().iter().any(|e| {
            e.exists(|e| {
                Ok(matches!(e, Expr::ScalarFunction(f) if f.func.name() == "llm_similarity" && f.args == args))
            })
            .unwrap_or(false)
        }),
        _ => false,
    }
}

fn cheap_predicates_first(filter: Filter) -> Result<Transformed<LogicalPlan>> {
    let (model, cheap): (Vec<Expr>, Vec<Expr>) =
        split_conjunction_owned(filter.predicate.clone()).into_iter().partition(calls_model);
    let (Some(model), Some(cheap)) = (conjunction(model), conjunction(cheap)) else {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    };
    let lower = Filter::try_new(cheap, filter.input)?;
    let upper = Filter::try_new(model, Arc::new(LogicalPlan::Filter(lower)))?;
    Ok(Transformed::yes(LogicalPlan::Filter(upper)))
}

fn bind_options(aggregate: Aggregate, config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
    if !aggregate.aggr_expr.iter().any(|e| e.exists(|e| Ok(is_summarize(e))).unwrap_or(false)) {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    }
    let options = LlmOptions::from_config(&config.options());
    let mut changed = false;
    let aggr_expr = aggregate
        .aggr_expr
        .iter()
        .cloned()
        .map(|e| {
            e.transform(|e| match e {
                Expr::AggregateFunction(f) if is_summarize_fn(&f) => {
                    let inner: &dyn std::any::Any = f.func.inner().as_ref();
                    let current = inner.downcast_ref::<LlmSummarize>().map(|s| s.options());
                    if current == Some(&options) {
                        return Ok(Transformed::no(Expr::AggregateFunction(f)));
                    }
                    if f.params.distinct {
                        return Err(crate::FunctionError::DistinctSummary.into());
                    }
                    changed = true;
                    let func = Arc::new(AggregateUDF::new_from_impl(LlmSummarize::with_options(options.clone())));
                    Ok(Transformed::yes(Expr::AggregateFunction(AggregateFunction { func, params: f.params })))
                }
                other => Ok(Transformed::no(other)),
            })
            .map(|t| t.data)
        })
        .collect::<Result<Vec<_>>>()?;
    if !changed {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    }
    let rebuilt = Aggregate::try_new(aggregate.input, aggregate.group_expr, aggr_expr)?;
    Ok(Transformed::yes(LogicalPlan::Aggregate(rebuilt)))
}

/// Replaces every model call in `exprs` with a column `__llm_N`, returning
/// the rewritten expressions and the calls to compute below.
/// Model calls moved into a projection, each with its column name.
type Calls = Vec<(Expr, String)>;

fn extract_calls(exprs: Vec<Expr>) -> Result<(Vec<Expr>, Calls)> {
    let mut calls: Calls = Vec::new();
    let rewritten = exprs
        .into_iter()
        .map(|e| {
            e.transform_down(|e| {
                if !is_model_scalar(&e) {
                    return Ok(Transformed::no(e));
                }
                let name = match calls.iter().find(|(c, _)| c == &e) {
                    Some((_, n)) => n.clone(),
                    None => {
                        let n = format!("__llm_{}", calls.len());
                        calls.push((e, n.clone()));
                        n
                    }
                };
                Ok(Transformed::new(Expr::Column(Column::from_name(name)), true, TreeNodeRecursion::Jump))
            })
            .map(|t| t.data)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((rewritten, calls))
}

/// `input` with the model calls appended as columns.
fn with_calls(input: Arc<LogicalPlan>, calls: Calls) -> Result<LogicalPlan> {
    let mut columns: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
    columns.extend(calls.into_iter().map(|(e, n)| e.alias(n)));
    LogicalPlanBuilder::from(input).project(columns)?.build()
}

/// Keeps each rewritten expression's original output name.
fn keep_names(rewritten: Vec<Expr>, original: &[Expr]) -> Result<Vec<Expr>> {
    rewritten
        .into_iter()
        .zip(original)
        .map(|(new, old)| {
            if &new == old {
                return Ok(new);
            }
            let (qualifier, name) = old.qualified_name();
            Ok(match new {
                Expr::Alias(_) => new,
                other => other.alias_qualified(qualifier, name),
            })
        })
        .collect()
}

fn compute_below_aggregate(aggregate: Aggregate) -> Result<Transformed<LogicalPlan>> {
    if !aggregate.group_expr.iter().chain(&aggregate.aggr_expr).any(has_model_scalar) {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    }
    let group_len = aggregate.group_expr.len();
    let mut all = aggregate.group_expr.clone();
    all.extend(aggregate.aggr_expr.iter().cloned());
    let (rewritten, calls) = extract_calls(all.clone())?;
    let rewritten = keep_names(rewritten, &all)?;
    let input = with_calls(aggregate.input, calls)?;
    let (group, aggr) = rewritten.split_at(group_len);
    let rebuilt = Aggregate::try_new(Arc::new(input), group.to_vec(), aggr.to_vec())?;
    Ok(Transformed::yes(LogicalPlan::Aggregate(rebuilt)))
}

fn compute_below_sort(sort: Sort) -> Result<Transformed<LogicalPlan>> {
    if !sort.expr.iter().any(|s| has_model_scalar(&s.expr)) {
        return Ok(Transformed::no(LogicalPlan::Sort(sort)));
    }
    let output: Vec<Expr> = sort.input.schema().columns().into_iter().map(Expr::Column).collect();
    let (rewritten, calls) = extract_calls(sort.expr.iter().map(|s| s.expr.clone()).collect())?;
    let input = with_calls(sort.input, calls)?;
    let sort_exprs: Vec<SortExpr> = sort
        .expr
        .iter()
        .zip(rewritten)
        .map(|(s, e)| SortExpr { expr: e, asc: s.asc, nulls_first: s.nulls_first })
        .collect();
    let sorted = LogicalPlan::Sort(Sort { expr: sort_exprs, input: Arc::new(input), fetch: sort.fetch });
    Ok(Transformed::yes(LogicalPlanBuilder::from(sorted).project(output)?.build()?))
}

/// Model calls inside window functions (`row_number() OVER (ORDER BY
/// llm_similarity(...))`) are computed by a projection below the window.
fn compute_below_window(window: Window) -> Result<Transformed<LogicalPlan>> {
    if !window.window_expr.iter().any(has_model_scalar) {
        return Ok(Transformed::no(LogicalPlan::Window(window)));
    }
    let output: Vec<Expr> = window.schema.columns().into_iter().map(Expr::Column).collect();
    let (rewritten, calls) = extract_calls(window.window_expr.clone())?;
    let rewritten = keep_names(rewritten, &window.window_expr)?;
    let input = with_calls(window.input, calls)?;
    let plan = LogicalPlanBuilder::from(input).window(rewritten)?.project(output)?.build()?;
    Ok(Transformed::yes(plan))
}

fn is_summarize(e: &Expr) -> bool {
    matches!(e, Expr::AggregateFunction(f) if is_summarize_fn(f))
}

fn is_summarize_fn(f: &AggregateFunction) -> bool {
    f.func.name() == "llm_summarize"
}
