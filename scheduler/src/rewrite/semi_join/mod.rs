//! Semi-join reduction: joins made cheaper by semi joins that run first.
//!
//! Single-process DataFusion hands a hash join's build side to the scan of
//! its probe side while the query runs (dynamic filters), so a large table
//! joined with a few selected rows is read past those rows' keys. A
//! distributed plan cannot do that: the two sides run as separate stages,
//! and Ballista turns dynamic filters off. So the scheduler writes the same
//! effect into the plan before submitting the job, as two rewrites of the
//! optimized logical plan:
//!
//! * `pushdown`: a semi or anti join (`EXISTS`, `IN (subquery)`) over
//!   the output of inner joins is moved down to the join input that holds its
//!   keys, so it filters that input before the joins instead of their larger
//!   output (TPC-H Q18: the 15M `orders` rows are cut to 624 before they are
//!   joined with 60M `lineitem` rows).
//! * `reduce`: a join input whose rows count only when they match the other
//!   side (both inputs of an inner join, the subquery side of a semi or anti
//!   join, the outer side of a left or right join) first keeps only the rows
//!   whose key is among the keys of a small relation that the other side's
//!   key is drawn from: a broadcast semi join placed as deep in the input as
//!   the key can be followed (below the joins and aggregates the input is
//!   made of). TPC-H Q17's average per part is computed over the `lineitem`
//!   rows of the 2,000 selected parts instead of all 60M rows.
//!
//! Both keep the answer: they only drop rows that could never reach the
//! result. Both are decided by the planner's estimates (`estimate`), never
//! by running anything, and a rewrite that cannot be sized is not made.

use std::future::Future;
use std::pin::Pin;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Distinct, Expr, Join, JoinType, LogicalPlan};

mod estimate;
mod pushdown;
mod reduce;

use estimate::Sizes;

/// `plan` (optimized) with its semi joins moved down and its join inputs
/// reduced, as the module explains.
pub(crate) async fn optimize(state: &SessionState, plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut sizes = Sizes::new(state);
    let plan = each_join(&mut sizes, plan, pushdown::move_down).await?.data;
    Ok(each_join(&mut sizes, plan, reduce::reduce_inputs).await?.data)
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A rewrite of one join: its replacement, or `None` to keep it.
type JoinRewrite = for<'a, 'b> fn(&'a mut Sizes<'b>, Join) -> Boxed<'a, Option<LogicalPlan>>;

/// `plan` with `rewrite` applied to each of its joins, innermost first (so
/// a join is rewritten over its inputs' rewrites).
fn each_join<'a, 'b: 'a>(
    sizes: &'a mut Sizes<'b>,
    plan: LogicalPlan,
    rewrite: JoinRewrite,
) -> Boxed<'a, Transformed<LogicalPlan>> {
    Box::pin(async move {
        let mut inputs = Vec::with_capacity(plan.inputs().len());
        let mut changed = false;
        for input in plan.inputs().into_iter().cloned().collect::<Vec<_>>() {
            let input = each_join(sizes, input, rewrite).await?;
            changed |= input.transformed;
            inputs.push(input.data);
        }
        let plan = if changed {
            let mut inputs = inputs.into_iter();
            plan.map_children(|_| Ok(Transformed::yes(inputs.next().expect("one per child"))))?.data
        } else {
            plan
        };
        if let LogicalPlan::Join(join) = &plan
            && let Some(rewritten) = rewrite(sizes, join.clone()).await?
        {
            return Ok(Transformed::yes(rewritten));
        }
        Ok(Transformed::new_transformed(plan, changed))
    })
}

/// How the rows of a plan's output are used by the rewrite following a column
/// down into the plan's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Rows of the input may be dropped: every output row made from a dropped
    /// input row carries the same value in the column, so the output rows
    /// with that value go and no others change (a target of a reduction, the
    /// kept side of a semi join moving down).
    Drop,
    /// The column's values are drawn from the input: every value in the output
    /// is also in the input (or is NULL, which matches nothing); the input may
    /// hold more (a source of keys).
    Values,
}

/// The input (its index) and the input's column that `column` of `node`
/// carries unchanged, when `follow` allows going through `node` to it.
fn origin(node: &LogicalPlan, column: &Column, follow: Follow) -> Option<(usize, Column)> {
    let same = |input: &LogicalPlan| input.schema().has_column(column).then(|| (0, column.clone()));
    match node {
        LogicalPlan::Projection(projection) => {
            let i = projection.schema.index_of_column(column).ok()?;
            match projection.expr[i].clone().unalias() {
                Expr::Column(c) => Some((0, c)),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(alias) => {
            let i = alias.schema.index_of_column(column).ok()?;
            Some((0, Column::from(alias.input.schema().qualified_field(i))))
        }
        LogicalPlan::Filter(filter) => same(&filter.input),
        LogicalPlan::Repartition(repartition) => same(&repartition.input),
        LogicalPlan::Distinct(Distinct::All(input)) => same(input),
        // A limit keeps some rows and not others: dropping rows below it
        // would change which.
        LogicalPlan::Sort(sort) if sort.fetch.is_none() || follow == Follow::Values => same(&sort.input),
        LogicalPlan::Limit(limit) if follow == Follow::Values => same(&limit.input),
        // A window function sees the rows of its frame: dropping some changes
        // the others' values.
        LogicalPlan::Window(window) if follow == Follow::Values => same(&window.input),
        LogicalPlan::Aggregate(aggregate) => {
            // A group is dropped whole, or kept whole, when its rows are
            // dropped by a group column.
            if aggregate.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                return None;
            }
            let i = aggregate.schema.index_of_column(column).ok()?;
            match aggregate.group_expr.get(i)?.clone().unalias() {
                Expr::Column(c) => Some((0, c)),
                _ => None,
            }
        }
        LogicalPlan::Join(join) => {
            let side = if join.left.schema().has_column(column) {
                0
            } else if join.right.schema().has_column(column) {
                1
            } else {
                return None;
            };
            // Through a join, rows may be dropped on the side every output row
            // comes from one row of: both sides of an inner join, the kept
            // side of a semi or anti join, the preserved side of an outer join.
            let passes = match follow {
                Follow::Values => !matches!(join.join_type, JoinType::LeftMark | JoinType::RightMark),
                Follow::Drop => match join.join_type {
                    JoinType::Inner => true,
                    JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => side == 0,
                    JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => side == 1,
                    _ => false,
                },
            };
            passes.then(|| (side, column.clone()))
        }
        _ => None,
    }
}

/// Columns of `node`'s inputs equal to `column` of `node` in every output
/// row, through the join's equal keys (inner and semi joins, where a row is
/// output only when its keys equal the other side's): more places the
/// column's values are drawn from.
fn equal_columns(node: &LogicalPlan, column: &Column) -> Vec<(usize, Column)> {
    let LogicalPlan::Join(join) = node else { return vec![] };
    if !matches!(join.join_type, JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi)
        || join.null_equality != NullEquality::NullEqualsNothing
    {
        return vec![];
    }
    let mut equal = vec![];
    for (left, right) in &join.on {
        if let (Expr::Column(l), Expr::Column(r)) = (left, right) {
            if l == column {
                equal.push((1, r.clone()));
            } else if r == column {
                equal.push((0, l.clone()));
            }
        }
    }
    equal
}

/// The node at `path` (child indices from `plan` down).
fn node_at<'a>(plan: &'a LogicalPlan, path: &[usize]) -> &'a LogicalPlan {
    path.iter().fold(plan, |node, &i| node.inputs()[i])
}

/// `plan` with the node at `path` replaced by `replace(node)`. The
/// replacement must have the node's schema, so nothing above it changes.
fn replace_at(
    plan: LogicalPlan,
    path: &[usize],
    replace: impl FnOnce(LogicalPlan) -> Result<LogicalPlan>,
) -> Result<LogicalPlan> {
    let Some((&first, rest)) = path.split_first() else { return replace(plan) };
    let mut replace = Some(replace);
    let mut index = 0;
    plan.map_children(|child| {
        let this = index;
        index += 1;
        if this == first {
            let replace = replace.take().expect("one child has the index");
            Ok(Transformed::yes(replace_at(child, rest, replace)?))
        } else {
            Ok(Transformed::no(child))
        }
    })
    .map(|t| t.data)
}

/// Whether computing `plan` twice could give other rows, or costs model
/// calls: a volatile function or a model call anywhere in it.
fn unrepeatable(plan: &LogicalPlan) -> bool {
    super::top_n::has_volatile(plan) || lakelink_udf::planner::plan_calls_model(plan)
}

/// Whether `plan` reads a table (a relation made of values alone, or an
/// empty one, is left to DataFusion).
fn reads_a_table(plan: &LogicalPlan) -> bool {
    plan.exists(|node| Ok(matches!(node, LogicalPlan::TableScan(_)))).unwrap_or(false)
}

#[cfg(test)]
mod tests;
