//! Settings for the kind of query at hand, changed before it is planned
//! for the cluster: lookups decode other columns only for the rows that
//! pass their filter, and model calls under a `LIMIT` stop soon after
//! enough rows are produced.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::LogicalPlan;

use super::top_n::limit_rows;

/// A query that calls a model under a `LIMIT n` runs with batches of about
/// `n` rows, so model calls stop soon after enough rows are produced
/// (every batch's distinct values are sent to the model at once).
pub(crate) fn small_batches_for_model_limits(df: DataFrame) -> DataFrame {
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
pub(crate) fn late_materialization_for_lookups(df: DataFrame) -> DataFrame {
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
pub(crate) fn is_lookup(plan: &LogicalPlan) -> bool {
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
