//! Semi and anti joins moved below the inner joins they sit on.
//!
//! DataFusion plans `WHERE key IN (subquery)` and `EXISTS (...)` as a semi
//! join over the whole `FROM` clause: in TPC-H Q18 the `orders` rows are
//! joined with `customer` and all 60M `lineitem` rows first, and only then
//! kept when their key is among the subquery's 624. A semi (or anti) join
//! whose keys and condition use the columns of one input of an inner join
//! below it can just as well keep (or drop) the rows of that input: every row
//! of the inner join is made of one row of it, and is kept exactly when that
//! row is. So the semi join moves down, through projections, filters and
//! inner joins, to the input its columns come from.
//!
//! It moves through an inner join only when the planner estimates that input
//! to have no more rows than the join's output: a semi join filtering a large
//! table below a selective join would test more rows than above it.

use std::collections::HashMap;

use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr_rewriter::replace_col;
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan};

use super::estimate::Sizes;
use super::{Boxed, Follow, origin, replace_at};

/// `join`, a semi or anti join, moved into its kept side as far down as the
/// module's rules allow, or `None` when it stays where it is.
pub(super) fn move_down<'a>(sizes: &'a mut Sizes<'_>, join: Join) -> Boxed<'a, Option<LogicalPlan>> {
    Box::pin(async move { move_join_down(sizes, &join).await })
}

async fn move_join_down(sizes: &mut Sizes<'_>, join: &Join) -> Result<Option<LogicalPlan>> {
    let kept_side = match join.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti => 0,
        JoinType::RightSemi | JoinType::RightAnti => 1,
        _ => return Ok(None),
    };
    let kept = if kept_side == 0 { &join.left } else { &join.right };
    // The kept side's columns the join uses: its keys and its condition's.
    let mut used: Vec<Column> = vec![];
    let kept_exprs = join.on.iter().map(|(l, r)| if kept_side == 0 { l } else { r }).chain(join.filter.as_ref());
    for expr in kept_exprs {
        for column in expr.column_refs() {
            if kept.schema().has_column(column) && !used.contains(column) {
                used.push(column.clone());
            }
        }
    }
    if used.is_empty() {
        return Ok(None);
    }

    // Follow the columns down; the semi join can go below each inner join
    // they all come through from one input.
    let (mut node, mut columns, mut path) = (kept.as_ref(), used.clone(), vec![]);
    let mut point: Option<(Vec<usize>, Vec<Column>)> = None;
    let mut joins_crossed = 0;
    loop {
        let through = matches!(
            node,
            LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Filter(_) | LogicalPlan::Join(_)
        );
        let inner_join = matches!(node, LogicalPlan::Join(j) if j.join_type == JoinType::Inner);
        if !through || (matches!(node, LogicalPlan::Join(_)) && !inner_join) {
            break;
        }
        let Some(origins) = columns.iter().map(|c| origin(node, c, Follow::Drop)).collect::<Option<Vec<_>>>() else {
            break;
        };
        let input = origins[0].0;
        if origins.iter().any(|(i, _)| *i != input) {
            break;
        }
        let child = node.inputs()[input];
        if inner_join {
            let (Some(child_size), Some(join_size)) = (sizes.of(child).await, sizes.of(node).await) else { break };
            tracing::debug!(
                "semi join over an inner join: its input ~{} rows, the join's output ~{}",
                child_size.rows,
                join_size.rows
            );
            if child_size.rows > join_size.rows {
                break;
            }
        }
        path.push(input);
        columns = origins.into_iter().map(|(_, c)| c).collect();
        node = child;
        if inner_join {
            joins_crossed += 1;
            point = Some((path.clone(), columns.clone()));
        }
    }
    let Some((path, columns)) = point else { return Ok(None) };

    let renamed: HashMap<&Column, &Column> = used.iter().zip(&columns).collect();
    let rename = |expr: &Expr| replace_col(expr.clone(), &renamed);
    let on = join
        .on
        .iter()
        .map(|(l, r)| Ok(if kept_side == 0 { (rename(l)?, r.clone()) } else { (l.clone(), rename(r)?) }))
        .collect::<Result<Vec<_>>>()?;
    let filter = join.filter.as_ref().map(rename).transpose()?;
    let other = if kept_side == 0 { join.right.clone() } else { join.left.clone() };
    tracing::debug!("semi join {} moved below {joins_crossed} inner join(s)", join.join_type);
    let moved = replace_at(kept.as_ref().clone(), &path, |input| {
        let input = std::sync::Arc::new(input);
        let (left, right) = if kept_side == 0 { (input, other) } else { (other, input) };
        Join::try_new(
            left,
            right,
            on,
            filter,
            join.join_type,
            join.join_constraint,
            join.null_equality,
            join.null_aware,
        )
        .map(LogicalPlan::Join)
    })?;
    Ok(Some(moved))
}
