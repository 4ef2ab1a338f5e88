//! Semi-join reduction: `EXISTS`, `NOT EXISTS` and `IN (subquery)` over a
//! large table, asked for the rows of a small one, without shuffling the
//! large table.
//!
//! DataFusion plans such a subquery as a semi (or anti) join that keeps the
//! rows of one side, K, for which the other side, P, has a match. Single-process
//! DataFusion builds a hash table of the small K and streams P past it,
//! marking the K rows that matched. A distributed plan cannot: each task sees
//! only its share of P, and no task can tell that a K row matched nowhere. So
//! Ballista shuffles both sides by the join key, P's millions of rows included
//! (TPC-H Q4 at SF 10: 38M `lineitem` rows, to keep 0.5M `orders` rows).
//!
//! [`reduce_semi_joins`] first keeps only the P rows whose key is among K's
//! keys: a second semi join, which keeps the rows of P, the large side, so it
//! is broadcast (K's keys go to every task and P is streamed past them where
//! it lies). The original join then runs over the few P rows that matched.
//! The answer is the same: a P row that matches some K row under the join's
//! whole condition has a key among K's keys, so it is kept. K is computed
//! twice, so the rewrite is made only where K is cheap against P.

use std::sync::Arc;

use ballista_core::config::BallistaConfig;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

/// P must be estimated at least this many times K's rows: below it, P is not
/// large enough for its shuffle to matter, and K's keys may well match most
/// of P.
const MIN_PROBE_RATIO: usize = 10;

/// The rows of the tables K reads, together, may be at most this share of
/// P's estimated rows: computing K a second time must cost well under the
/// shuffle of P it saves.
const MAX_RECOMPUTE_SHARE: f64 = 0.5;

/// The qualifier of K's keys inside the reducing join.
const KEYS_ALIAS: &str = "__lakelink_semi_join_keys";

/// `plan` (optimized) with its semi and anti joins of a small side against a
/// large one reduced as the module explains; each join's sides are sized by
/// planning them. A join that cannot be sized or rewritten is left as it is
/// (and the scheduler logs why).
pub(crate) async fn reduce_semi_joins(state: &SessionState, plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut joins = Vec::new();
    collect_joins(&plan, &mut joins);
    let mut reduce = Vec::with_capacity(joins.len());
    for join in joins {
        let worth = match Sides::of(join) {
            Some(sides) => worth_reducing(state, &sides).await.unwrap_or_else(|e| {
                tracing::warn!("semi join reduction skipped: cannot size the join's sides: {e}");
                false
            }),
            None => false,
        };
        reduce.push(worth);
    }
    if !reduce.contains(&true) {
        return Ok(plan);
    }
    // `transform_up` meets the joins in the order they were collected in.
    let mut reduce = reduce.into_iter();
    let reduced = plan.transform_up(|node| {
        let LogicalPlan::Join(join) = &node else { return Ok(Transformed::no(node)) };
        let Some(sides) = reduce.next().unwrap_or(false).then(|| Sides::of(join)).flatten() else {
            return Ok(Transformed::no(node));
        };
        match reduced_join(join, &sides) {
            Ok(reduced) => Ok(Transformed::yes(reduced)),
            Err(e) => {
                tracing::warn!("semi join reduction skipped: {e}");
                Ok(Transformed::no(node))
            }
        }
    })?;
    Ok(reduced.data)
}

/// Every join of `plan`, children before parents (the order `transform_up`
/// visits them in).
fn collect_joins<'a>(plan: &'a LogicalPlan, out: &mut Vec<&'a Join>) {
    for input in plan.inputs() {
        collect_joins(input, out);
    }
    if let LogicalPlan::Join(join) = plan {
        out.push(join);
    }
}

/// The two sides of a join the reduction can apply to: K, whose rows it
/// keeps, and P.
struct Sides<'a> {
    kept_is_left: bool,
    kept: &'a Arc<LogicalPlan>,
    probe: &'a Arc<LogicalPlan>,
    /// K's key columns, in the order of the join's `on`.
    keys: Vec<&'a Column>,
    /// P's key expressions, in the same order.
    probe_keys: Vec<&'a Expr>,
}

impl<'a> Sides<'a> {
    /// The sides of a semi or anti join on equal keys, K's keys plain
    /// columns, with SQL's `=` (NULL matches nothing) and not `NOT IN`'s
    /// null-aware form (where a NULL anywhere in P decides, so P's rows cannot
    /// be dropped); K must give the same rows when computed twice (no
    /// volatile function, no model call). `None` for any other join.
    fn of(join: &'a Join) -> Option<Self> {
        let kept_is_left = match join.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => true,
            JoinType::RightSemi | JoinType::RightAnti => false,
            _ => return None,
        };
        if join.on.is_empty() || join.null_aware || join.null_equality != NullEquality::NullEqualsNothing {
            return None;
        }
        let (kept, probe) = if kept_is_left { (&join.left, &join.right) } else { (&join.right, &join.left) };
        let mut keys = Vec::with_capacity(join.on.len());
        let mut probe_keys = Vec::with_capacity(join.on.len());
        for (left, right) in &join.on {
            let (key, probe_key) = if kept_is_left { (left, right) } else { (right, left) };
            let Expr::Column(key) = key else { return None };
            keys.push(key);
            probe_keys.push(probe_key);
        }
        if crate::query::has_volatile(kept) || lakelink_udf::planner::plan_calls_model(kept) {
            return None;
        }
        Some(Self { kept_is_left, kept, probe, keys, probe_keys })
    }
}

/// Whether K is small enough to broadcast, P at least [`MIN_PROBE_RATIO`]
/// times larger, and K's tables small against P (estimates from planning
/// each side as it would run).
async fn worth_reducing(state: &SessionState, sides: &Sides<'_>) -> Result<bool> {
    let broadcast_rows = state
        .config()
        .options()
        .extensions
        .get::<BallistaConfig>()
        .map(|c| c.broadcast_join_threshold_rows())
        .unwrap_or(0);
    // DataFusion's own planner: the session's (Ballista's) answers a job
    // whose size it does not know.
    let planner = DefaultPhysicalPlanner::default();
    let kept_plan = planner.create_physical_plan(sides.kept, state).await?;
    let probe_plan = planner.create_physical_plan(sides.probe, state).await?;
    let stats = StatisticsContext::new();
    let (Some(kept_rows), Some(probe_rows), Some(kept_input_rows)) =
        (rows(&stats, kept_plan.as_ref()), rows(&stats, probe_plan.as_ref()), leaf_rows(&stats, kept_plan.as_ref()))
    else {
        tracing::debug!("semi join reduction skipped: a side's size is unknown");
        return Ok(false);
    };
    let worth = kept_rows <= broadcast_rows
        && probe_rows >= kept_rows.saturating_mul(MIN_PROBE_RATIO)
        && (kept_input_rows as f64) <= probe_rows as f64 * MAX_RECOMPUTE_SHARE;
    tracing::debug!(
        "semi join reduction {}: kept side ~{kept_rows} rows (reading {kept_input_rows}), other side ~{probe_rows}",
        if worth { "applies" } else { "skipped" }
    );
    Ok(worth)
}

/// The estimated output rows of `plan`, if known.
fn rows(stats: &StatisticsContext, plan: &dyn ExecutionPlan) -> Option<usize> {
    stats.compute(plan, &StatisticsArgs::new()).ok()?.num_rows.get_value().copied()
}

/// The rows `plan`'s leaves (its scans) produce together, if all are known.
fn leaf_rows(stats: &StatisticsContext, plan: &dyn ExecutionPlan) -> Option<usize> {
    let children = plan.children();
    if children.is_empty() {
        return rows(stats, plan);
    }
    children.into_iter().try_fold(0usize, |sum, child| Some(sum.saturating_add(leaf_rows(stats, child.as_ref())?)))
}

/// `join` with P replaced by the P rows whose keys are among K's (K's key
/// columns projected as `k0`, `k1`, ... under [`KEYS_ALIAS`]).
fn reduced_join(join: &Join, sides: &Sides<'_>) -> Result<LogicalPlan> {
    let names: Vec<String> = (0..sides.keys.len()).map(|i| format!("k{i}")).collect();
    let projection = sides.keys.iter().zip(&names).map(|(key, name)| Expr::Column((*key).clone()).alias(name));
    let kept_keys =
        LogicalPlanBuilder::from(sides.kept.as_ref().clone()).project(projection)?.alias(KEYS_ALIAS)?.build()?;
    let key_columns: Vec<Expr> = names.iter().map(|name| Expr::Column(Column::new(Some(KEYS_ALIAS), name))).collect();
    let probe_keys: Vec<Expr> = sides.probe_keys.iter().map(|key| (*key).clone()).collect();
    let reduced_probe = LogicalPlanBuilder::from(sides.probe.as_ref().clone())
        .join_with_expr_keys(kept_keys, JoinType::LeftSemi, (probe_keys, key_columns), None)?
        .build()?;
    let mut join = join.clone();
    if sides.kept_is_left {
        join.right = Arc::new(reduced_probe);
    } else {
        join.left = Arc::new(reduced_probe);
    }
    Ok(LogicalPlan::Join(join))
}

#[cfg(test)]
mod tests {
    use ballista_core::extension::SessionConfigExt;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::dataframe::DataFrame;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// `k`: 5 rows, one with a NULL key and one whose key `p` lacks; `p`:
    /// 1,000 rows over keys 0-49, some NULL.
    async fn context() -> SessionContext {
        let ctx = SessionContext::new_with_config(SessionConfig::new_with_ballista());
        for sql in [
            "CREATE TABLE k AS SELECT * FROM (VALUES (1, 10), (2, 20), (NULL, 30), (77, 40), (3, 50)) AS v(a, b)",
            "CREATE TABLE p AS SELECT CASE WHEN v % 97 = 0 THEN NULL ELSE v % 50 END AS a, v AS c \
             FROM generate_series(1, 1000) AS t(v)",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    /// The statement's result as it runs and as it runs reduced, and
    /// whether it was reduced.
    async fn both_ways(ctx: &SessionContext, sql: &str) -> (String, String, bool) {
        let state = ctx.state();
        let plan = state.optimize(ctx.sql(sql).await.unwrap().logical_plan()).unwrap();
        let reduced = reduce_semi_joins(&state, plan.clone()).await.unwrap();
        let applied = format!("{}", reduced.display_indent()).contains(KEYS_ALIAS);
        let run = |plan| async {
            let batches = DataFrame::new(state.clone(), plan).collect().await.unwrap();
            pretty_format_batches(&batches).unwrap().to_string()
        };
        (run(plan).await, run(reduced).await, applied)
    }

    #[tokio::test]
    async fn small_sides_against_large_ones_are_reduced_with_the_same_answer() {
        let ctx = context().await;
        for (sql, rows) in [
            ("SELECT * FROM k WHERE EXISTS (SELECT 1 FROM p WHERE p.a = k.a) ORDER BY a", 3),
            ("SELECT * FROM k WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.a = k.a) ORDER BY a", 2),
            ("SELECT * FROM k WHERE a IN (SELECT a FROM p WHERE c > 40) ORDER BY a", 3),
            ("SELECT * FROM k WHERE EXISTS (SELECT 1 FROM p WHERE p.a = k.a AND p.c > k.b * 20) ORDER BY a", 2),
            ("SELECT b FROM k WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.a = k.a AND p.c < k.b) ORDER BY b", 2),
            // One kept column is the key of two pairs.
            ("SELECT * FROM k WHERE EXISTS (SELECT 1 FROM p WHERE p.a = k.a AND p.c = k.a) ORDER BY a", 3),
        ] {
            let (plain, reduced, applied) = both_ways(&ctx, sql).await;
            assert!(applied, "not reduced: {sql}");
            assert_eq!(plain, reduced, "{sql}");
            // The header, its two rules and the closing rule, then the rows.
            assert_eq!(plain.lines().count(), 4 + rows, "{sql}\n{plain}");
        }
    }

    #[tokio::test]
    async fn other_joins_are_left_as_they_are() {
        let ctx = context().await;
        for sql in [
            // The kept side is the large one.
            "SELECT * FROM p WHERE EXISTS (SELECT 1 FROM k WHERE k.a = p.a) ORDER BY a, c",
            // NOT IN: a NULL among p's keys empties the answer.
            "SELECT * FROM k WHERE a NOT IN (SELECT a FROM p) ORDER BY a",
            // The kept side would give other rows when computed again.
            "SELECT * FROM k WHERE b > random() * 100 AND EXISTS (SELECT 1 FROM p WHERE p.a = k.a) ORDER BY a",
            // An inner join keeps both sides' rows.
            "SELECT k.b, p.c FROM k JOIN p ON k.a = p.a ORDER BY 1, 2",
        ] {
            let (plain, reduced, applied) = both_ways(&ctx, sql).await;
            assert!(!applied, "reduced: {sql}");
            if !sql.contains("random") {
                assert_eq!(plain, reduced, "{sql}");
            }
        }
    }
}
