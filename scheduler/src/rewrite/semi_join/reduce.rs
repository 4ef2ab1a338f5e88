//! Join inputs reduced to the rows whose keys a small relation holds.
//!
//! In a join of a *target* side T with another side O on keys `t = o`, where a
//! T row that matches no O row never reaches the result (both sides of an
//! inner join; the subquery side of a semi or anti join; the outer side of a
//! left or right join), T may first drop every row whose `t` is not among the
//! values of `o`. Computing O costs as much as the join itself, so the keys
//! are taken from a *source*: O itself or a part of O that every value of `o`
//! is drawn from (followed down through projections, filters, joins, a join's
//! equal keys and group columns; the selected parts in TPC-H Q17, the two
//! nations in Q7). And the rows are dropped as early as possible: the semi
//! join is placed where `t` enters T, below the inner joins and the
//! aggregates (grouped by `t`) that T is made of.
//!
//! The answer is the same: the dropped rows, and every row made from them,
//! carry a `t` that no O row has, so they would have found no match; NULL
//! keys match nothing either way.
//!
//! The source is computed twice (once for the keys, once in O), and its keys
//! are broadcast to every task reading the target, so a reduction is made only
//! when, by the planner's estimates, the source is small enough to broadcast
//! (and at most [`MAX_SOURCE_ROWS`]),
//! the target has at least [`MIN_TARGET_RATIO`] times its rows (and at least
//! [`MIN_TARGET_ROWS`]), and the
//! source reads at most [`MAX_SOURCE_READ_SHARE`] of the target's rows. An
//! inner join whose other side is broadcast (estimated under Ballista's row and
//! byte limits) already filters the target where it enters the join, so there the target is reduced only below an aggregate
//! or where it is the smaller input of a join it is made of. The source must
//! also select: it filters its rows (a condition, a semi join, a
//! limit), or holds few keys against the range of the target's integer key
//! (at most half of it, by the Parquet statistics), since the keys of a whole
//! dimension table usually match every row of a fact table referencing it.
//! Never with a source calling a model or a volatile function, for a
//! null-aware anti join (`NOT IN`, where a NULL key in the subquery decides
//! every row), or for joins matching NULL with NULL.

use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, LogicalPlanBuilder};

use super::estimate::{Size, Sizes};
use super::{Boxed, Follow, equal_columns, node_at, origin, reads_a_table, replace_at, unrepeatable};

/// The target must be estimated at least this many times the source's rows:
/// below it, the source's keys may well match most of the target.
const MIN_TARGET_RATIO: usize = 10;

/// A target estimated under this many rows (one batch) is not reduced: its
/// reduction would cost a stage and save next to nothing.
const MIN_TARGET_ROWS: usize = 8192;

/// The most rows a source may be estimated at. Its keys are built into a
/// hash table in every task reading the target, and a source estimated this
/// large rarely selects a small share of the target: TPC-H Q21's `lineitem`
/// reduced by the 7.3M `orders` of status 'F' (estimated 3M), half of them,
/// ran 12% slower than unreduced, while every reduction that paid used a
/// source estimated at 600K rows or fewer.
const MAX_SOURCE_ROWS: usize = 1_000_000;

/// The rows the source reads may be at most this share of the target's rows:
/// computing it a second time must cost well under what it saves.
const MAX_SOURCE_READ_SHARE: f64 = 0.5;

/// Most bytes a key takes in the broadcast, for sizing it against Ballista's
/// byte limit (keys are usually integers; strings are counted generously).
const KEY_BYTES: usize = 16;

/// The qualifier of a source's keys inside a reducing semi join; an
/// `EXPLAIN` shows one per reduction.
pub(super) const KEYS_ALIAS: &str = "__lakelink_keys";

/// `join` with each input reduced that the module's rules allow, or `None`
/// when none is.
pub(super) fn reduce_inputs<'a>(sizes: &'a mut Sizes<'_>, mut join: Join) -> Boxed<'a, Option<LogicalPlan>> {
    Box::pin(async move {
        let mut reduced = false;
        for target_side in target_sides(&join) {
            if let Some(side) = reduce_side(sizes, &join, target_side).await? {
                if target_side == 0 {
                    join.left = side.into();
                } else {
                    join.right = side.into();
                }
                reduced = true;
            }
        }
        Ok(reduced.then_some(LogicalPlan::Join(join)))
    })
}

/// The sides of `join` (0: left, 1: right) whose rows count only when they
/// match the other side's.
fn target_sides(join: &Join) -> Vec<usize> {
    if join.null_equality != NullEquality::NullEqualsNothing || join.null_aware {
        return vec![];
    }
    match join.join_type {
        JoinType::Inner => vec![0, 1],
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::Left => vec![1],
        JoinType::RightSemi | JoinType::RightAnti | JoinType::Right => vec![0],
        _ => vec![],
    }
}

/// The reduction chosen for one side of a join.
struct Choice<'a> {
    /// Where the target is, from the side down.
    path: Vec<usize>,
    /// The key's column at the target.
    key: Column,
    source: &'a LogicalPlan,
    /// The key's column in the source.
    source_key: Column,
    size: Size,
}

/// Side `target_side` of `join` reduced by the smallest source its keys
/// allow, or `None` when no reduction fits.
async fn reduce_side(sizes: &mut Sizes<'_>, join: &Join, target_side: usize) -> Result<Option<LogicalPlan>> {
    let (target, other) = if target_side == 0 { (&join.left, &join.right) } else { (&join.right, &join.left) };
    let most_source_rows = sizes.broadcast_rows().min(sizes.broadcast_bytes() / KEY_BYTES).min(MAX_SOURCE_ROWS);
    // An inner join whose other side is broadcast filters the target itself,
    // where it enters the join: a reduction pays only where it cuts the
    // target below that, before an aggregate or as the smaller input of a
    // join it is made of.
    let join_filters_it = join.join_type == JoinType::Inner
        && sizes.of(other).await.is_some_and(|size| {
            size.rows <= sizes.broadcast_rows()
                && size.rows.saturating_mul(row_bytes(other.schema().as_arrow())) <= sizes.broadcast_bytes()
        });
    let mut best: Option<Choice> = None;
    for (left, right) in &join.on {
        let (target_key, other_key) = if target_side == 0 { (left, right) } else { (right, left) };
        let (Expr::Column(target_key), Expr::Column(other_key)) = (target_key, other_key) else { continue };
        let (path, key) = target_point(target, target_key);
        if join_filters_it && !cuts_below(sizes, target, &path).await {
            continue;
        }
        let target_node = node_at(target, &path);
        let Some(target_size) = sizes.of(target_node).await.filter(|size| size.rows >= MIN_TARGET_ROWS) else {
            continue;
        };
        let key_range = sizes.key_range(target_node, &key).await;
        for (source, source_key) in sources(other, other_key) {
            if unrepeatable(source) || !reads_a_table(source) || already_reduced(target_node, source) {
                continue;
            }
            let Some(size) = sizes.of(source).await else { continue };
            let selects = selects(source) || key_range.is_some_and(|range| size.rows as u64 <= range / 2);
            let fits = selects
                && size.rows <= most_source_rows
                && target_size.rows >= size.rows.saturating_mul(MIN_TARGET_RATIO)
                && size.read as f64 <= target_size.rows as f64 * MAX_SOURCE_READ_SHARE;
            tracing::debug!(
                "semi-join reduction of {target_key} (~{} rows at the target) by {source_key} (~{} rows, reading \
                 ~{}): {}",
                target_size.rows,
                size.rows,
                size.read,
                if fits { "fits" } else { "does not fit" }
            );
            if fits && best.as_ref().is_none_or(|b| (size.rows, size.read) < (b.size.rows, b.size.read)) {
                best = Some(Choice { path: path.clone(), key: key.clone(), source, source_key, size });
            }
        }
    }
    let Some(choice) = best else { return Ok(None) };
    tracing::debug!(
        "semi-join reduction: {} kept where {} is among {} (~{} rows)",
        target_node_name(target, &choice.path),
        choice.key,
        choice.source_key,
        choice.size.rows
    );
    let source = choice.source.clone();
    let reduced = replace_at(target.as_ref().clone(), &choice.path, |node| {
        semi_join(node, &choice.key, source, &choice.source_key)
    })?;
    Ok(Some(reduced))
}

/// Where rows of `side` may be dropped by `key`: the path to the input that
/// `key` enters `side` from below its last join or aggregate (or `side`
/// itself when it has none on the way), with the key's column there.
fn target_point(side: &LogicalPlan, key: &Column) -> (Vec<usize>, Column) {
    let mut best = (vec![], key.clone());
    let (mut node, mut column, mut path) = (side, key.clone(), vec![]);
    while let Some((input, input_column)) = origin(node, &column, Follow::Drop) {
        let junction =
            matches!(node, LogicalPlan::Join(_) | LogicalPlan::Aggregate(_)) && reducer_source(node).is_none();
        path.push(input);
        node = node.inputs()[input];
        column = input_column;
        if junction {
            best = (path.clone(), column.clone());
        }
    }
    best
}

/// The bytes a row of `schema` takes, roughly: fixed-width columns at their
/// width, others (strings, lists) at [`KEY_BYTES`] twice over.
fn row_bytes(schema: &datafusion::arrow::datatypes::Schema) -> usize {
    schema.fields().iter().map(|f| f.data_type().primitive_width().unwrap_or(2 * KEY_BYTES)).sum::<usize>().max(1)
}

/// Whether the target at `path` in `side` is, on the way up, the input of an
/// aggregate, or the smaller input of a join (so that fewer of its rows make
/// the join's output smaller), by the estimates.
async fn cuts_below(sizes: &mut Sizes<'_>, side: &LogicalPlan, path: &[usize]) -> bool {
    for depth in 0..path.len() {
        let node = node_at(side, &path[..depth]);
        match node {
            LogicalPlan::Aggregate(_) => return true,
            LogicalPlan::Join(_) if reducer_source(node).is_none() => {
                let inputs = node.inputs();
                let taken = path[depth];
                let (Some(this), Some(that)) = (sizes.of(inputs[taken]).await, sizes.of(inputs[1 - taken]).await)
                else {
                    continue;
                };
                if this.rows <= that.rows {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Parts of `side` that every value of `key` in `side`'s rows is drawn from,
/// each with the key's column there: `side` first.
fn sources<'a>(side: &'a LogicalPlan, key: &Column) -> Vec<(&'a LogicalPlan, Column)> {
    let mut found = vec![];
    let mut pending = vec![(side, key.clone())];
    while let Some((node, column)) = pending.pop() {
        let inputs = node.inputs();
        if let Some((input, input_column)) = origin(node, &column, Follow::Values) {
            pending.push((inputs[input], input_column));
        }
        for (input, input_column) in equal_columns(node, &column) {
            pending.push((inputs[input], input_column));
        }
        found.push((node, column));
    }
    found
}

/// `target` keeping only the rows whose `key` is among `source_key`'s values.
fn semi_join(target: LogicalPlan, key: &Column, source: LogicalPlan, source_key: &Column) -> Result<LogicalPlan> {
    let keys = LogicalPlanBuilder::from(source)
        .project(vec![Expr::Column(source_key.clone()).alias("k")])?
        .alias(KEYS_ALIAS)?
        .build()?;
    LogicalPlanBuilder::from(target)
        .join_with_expr_keys(
            keys,
            JoinType::LeftSemi,
            (vec![Expr::Column(key.clone())], vec![Expr::Column(Column::new(Some(KEYS_ALIAS), "k"))]),
            None,
        )?
        .build()
}

/// Whether `source` keeps only some of the rows it reads: a condition, a
/// semi join or a limit somewhere in it.
fn selects(source: &LogicalPlan) -> bool {
    source
        .exists(|node| {
            Ok(match node {
                LogicalPlan::Filter(_) | LogicalPlan::Limit(_) => true,
                LogicalPlan::TableScan(scan) => !scan.filters.is_empty() || scan.fetch.is_some(),
                LogicalPlan::Join(join) => matches!(join.join_type, JoinType::LeftSemi | JoinType::RightSemi),
                _ => false,
            })
        })
        .unwrap_or(false)
}

/// The source of a reducing semi join this module made, or `None` for any
/// other node.
fn reducer_source(node: &LogicalPlan) -> Option<&LogicalPlan> {
    let LogicalPlan::Join(join) = node else { return None };
    let LogicalPlan::SubqueryAlias(alias) = join.right.as_ref() else { return None };
    if join.join_type != JoinType::LeftSemi || alias.alias.table() != KEYS_ALIAS {
        return None;
    }
    let LogicalPlan::Projection(keys) = alias.input.as_ref() else { return None };
    Some(keys.input.as_ref())
}

/// Whether `target` is already reduced by `source` (a reduction chosen again
/// by another join over the same keys).
fn already_reduced(target: &LogicalPlan, source: &LogicalPlan) -> bool {
    let mut node = target;
    while let Some(reducer) = reducer_source(node) {
        if reducer == source {
            return true;
        }
        let LogicalPlan::Join(join) = node else { break };
        node = join.left.as_ref();
    }
    false
}

/// A short name of the node at `path` for the log: the table it scans, or its kind.
fn target_node_name(side: &LogicalPlan, path: &[usize]) -> String {
    match node_at(side, path) {
        LogicalPlan::TableScan(scan) => scan.table_name.to_string(),
        other => other.display().to_string(),
    }
}
