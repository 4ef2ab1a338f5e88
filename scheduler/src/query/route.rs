//! Where a statement runs: as a distributed job on the cluster, or here,
//! in the scheduler (catalog tables, `EXPLAIN ANALYZE`, empty relations).

use datafusion::common::Result;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{LogicalPlan, TableScan};

/// The optimized plan to submit as a job, or `None` for a statement Ballista
/// answers without a job of its own (catalog reads, `EXPLAIN ANALYZE`, an
/// empty relation).
pub(crate) fn distributed_plan(state: &SessionState, plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    if reads_only_catalog(plan) {
        return Ok(None);
    }
    let optimized = state.optimize(plan)?;
    Ok((!matches!(optimized, LogicalPlan::Analyze(_) | LogicalPlan::EmptyRelation(_))).then_some(optimized))
}

/// Whether every table the plan reads lives in this process
/// (`information_schema`, `system`).
pub(crate) fn reads_only_catalog(plan: &LogicalPlan) -> bool {
    let mut scans = 0;
    let mut catalog_scans = 0;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(TableScan { table_name, .. }) = node {
            scans += 1;
            if matches!(table_name.schema(), Some("information_schema") | Some(crate::system::SCHEMA)) {
                catalog_scans += 1;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans > 0 && scans == catalog_scans
}
