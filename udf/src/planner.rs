//! Planning rules for the `llm_*` functions, run by every planning session
//! (the Flight SQL front door and Ballista's scheduler):
//!
//! * A filter that mixes ordinary predicates with `llm_*` predicates becomes
//!   two filters, the ordinary one first: the model only sees rows that
//!   survive the cheap predicates (DataFusion evaluates an async function for
//!   every row of its input, so the order must be in the plan itself).
//! * Model calls inside aggregates (`GROUP BY llm_classify(...)`,
//!   `count(llm_embed(...))`) and sorts (`ORDER BY llm_similarity(...)`)
//!   are computed by a projection below them, where DataFusion runs async
//!   functions; the aggregate or sort then reads plain columns.
//! * Aggregates receive no session settings at run time, so each
//!   `llm_summarize` call is bound to the session's `lakelink.llm.*` options,
//!   which then travel to executors as the function's state.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr::{AggregateFunction, Sort as SortExpr};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Aggregate, AggregateUDF, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Sort};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use crate::functions::LlmSummarize;
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
            LogicalPlan::Filter(filter) => cheap_predicates_first(filter),
            LogicalPlan::Aggregate(aggregate) => {
                let bound = bind_options(aggregate, config)?;
                bound.transform_data(|plan| match plan {
                    LogicalPlan::Aggregate(aggregate) => compute_below_aggregate(aggregate),
                    other => Ok(Transformed::no(other)),
                })
            }
            LogicalPlan::Sort(sort) => compute_below_sort(sort),
            other => Ok(Transformed::no(other)),
        }
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

fn is_summarize(e: &Expr) -> bool {
    matches!(e, Expr::AggregateFunction(f) if is_summarize_fn(f))
}

fn is_summarize_fn(f: &AggregateFunction) -> bool {
    f.func.name() == "llm_summarize"
}
