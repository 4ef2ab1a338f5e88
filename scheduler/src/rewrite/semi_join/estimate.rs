//! Sizes of parts of a plan, as the physical planner estimates them (from the
//! Parquet files' row counts and column statistics), remembered per part.

use std::collections::HashMap;
use std::sync::Arc;

use ballista_core::config::BallistaConfig;
use datafusion::common::{Column, ScalarValue, Statistics};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

/// The estimated size of a part of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size {
    /// The rows it produces.
    pub rows: usize,
    /// The rows its scans read, together: what computing it costs.
    pub read: usize,
}

/// Sizes of the parts of one query's plan.
pub(super) struct Sizes<'a> {
    state: &'a SessionState,
    known: HashMap<LogicalPlan, Option<(Size, Arc<Statistics>)>>,
}

impl<'a> Sizes<'a> {
    pub(super) fn new(state: &'a SessionState) -> Self {
        Self { state, known: HashMap::new() }
    }

    /// The size of `plan`, or `None` when the planner cannot tell (or cannot
    /// plan it alone).
    pub(super) async fn of(&mut self, plan: &LogicalPlan) -> Option<Size> {
        self.estimate(plan).await.map(|(size, _)| size)
    }

    /// How many values the integer column `column` of `plan` can take
    /// (its largest minus its smallest, plus one), when the statistics say.
    pub(super) async fn key_range(&mut self, plan: &LogicalPlan, column: &Column) -> Option<u64> {
        let (_, stats) = self.estimate(plan).await?;
        let index = plan.schema().index_of_column(column).ok()?;
        let column = stats.column_statistics.get(index)?;
        let (min, max) = (integer(column.min_value.get_value()?)?, integer(column.max_value.get_value()?)?);
        u64::try_from(max.checked_sub(min)?).ok()?.checked_add(1)
    }

    async fn estimate(&mut self, plan: &LogicalPlan) -> Option<(Size, Arc<Statistics>)> {
        if let Some(known) = self.known.get(plan) {
            return known.clone();
        }
        // DataFusion's own planner: the session's (Ballista's) answers a job
        // whose size it does not know.
        let estimate = match DefaultPhysicalPlanner::default().create_physical_plan(plan, self.state).await {
            Ok(physical) => {
                let context = StatisticsContext::new();
                let stats = context.compute(physical.as_ref(), &StatisticsArgs::new()).ok();
                let rows = stats.as_ref().and_then(|s| s.num_rows.get_value().copied());
                match (rows, read(&context, physical.as_ref()), stats) {
                    (Some(rows), Some(read), Some(stats)) => Some((Size { rows, read }, stats)),
                    _ => None,
                }
            }
            Err(e) => {
                tracing::debug!("semi-join reduction: cannot size a part of the plan: {e}");
                None
            }
        };
        self.known.insert(plan.clone(), estimate.clone());
        estimate
    }

    /// The most rows a join side may have to be broadcast to every task
    /// (`ballista.optimizer.broadcast_join_threshold_rows`).
    pub(super) fn broadcast_rows(&self) -> usize {
        self.ballista().map(|c| c.broadcast_join_threshold_rows()).unwrap_or(0)
    }

    /// The most bytes a join side may hold to be broadcast
    /// (`ballista.optimizer.broadcast_join_threshold_bytes`).
    pub(super) fn broadcast_bytes(&self) -> usize {
        self.ballista().map(|c| c.broadcast_join_threshold_bytes()).unwrap_or(0)
    }

    fn ballista(&self) -> Option<&BallistaConfig> {
        self.state.config().options().extensions.get::<BallistaConfig>()
    }
}

/// An integer statistic as an `i128`.
fn integer(value: &ScalarValue) -> Option<i128> {
    Some(match value {
        ScalarValue::Int8(Some(v)) => *v as i128,
        ScalarValue::Int16(Some(v)) => *v as i128,
        ScalarValue::Int32(Some(v)) => *v as i128,
        ScalarValue::Int64(Some(v)) => *v as i128,
        ScalarValue::UInt8(Some(v)) => *v as i128,
        ScalarValue::UInt16(Some(v)) => *v as i128,
        ScalarValue::UInt32(Some(v)) => *v as i128,
        ScalarValue::UInt64(Some(v)) => *v as i128,
        _ => return None,
    })
}

/// The estimated output rows of `plan`, if known.
fn rows(stats: &StatisticsContext, plan: &dyn ExecutionPlan) -> Option<usize> {
    stats.compute(plan, &StatisticsArgs::new()).ok()?.num_rows.get_value().copied()
}

/// The rows `plan`'s leaves (its scans) produce together, if all are known.
fn read(stats: &StatisticsContext, plan: &dyn ExecutionPlan) -> Option<usize> {
    let children = plan.children();
    if children.is_empty() {
        return rows(stats, plan);
    }
    children.into_iter().try_fold(0usize, |sum, child| Some(sum.saturating_add(read(stats, child.as_ref())?)))
}
