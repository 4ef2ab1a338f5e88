//! Every change LakeLink makes to how a statement runs on the cluster,
//! behind one entry: [`Rewrites::for_cluster`](crate::rewrite::Rewrites::for_cluster).
//!
//! * [`lookup`](crate::rewrite::lookup): lookups decode other columns only for the rows that pass
//!   their filter; model calls under a `LIMIT` run in small batches;
//! * [`top_n`](crate::rewrite::top_n): top-N lookups over large tables in two passes;
//! * DataFusion's optimizer;
//! * [`semi_join`](crate::rewrite::semi_join): semi joins moved below inner joins, and join inputs
//!   reduced to the keys a small relation holds;
//! * [`settings`](crate::rewrite::settings): the planner settings LakeLink changes (join strategies,
//!   string types), applied to every session.

pub mod lookup;
pub mod semi_join;
pub mod settings;
pub mod top_n;

use datafusion::common::Result;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;

use crate::catalog::LakeSchema;
use crate::query::route::distributed_plan;

/// Which rewrites run, as the operator chose.
#[derive(Debug, Clone)]
pub struct Rewrites {
    /// Top-N lookups over tables of at least this many bytes on disk run in
    /// two passes (`u64::MAX`: never); see [`top_n`].
    pub top_n_narrowing_min_bytes: u64,
    /// Semi and anti joins of a small side against a large one are reduced
    /// first; see [`semi_join`].
    pub semi_join_reduction: bool,
}

impl Default for Rewrites {
    fn default() -> Self {
        Self { top_n_narrowing_min_bytes: top_n::TOP_N_NARROWING_MIN_BYTES, semi_join_reduction: true }
    }
}

/// A statement made ready to run.
pub enum Prepared {
    /// A distributed job: its session and optimized plan.
    Cluster(Box<SessionState>, LogicalPlan),
    /// A statement Ballista answers without a job of its own (catalog
    /// reads, `EXPLAIN ANALYZE`, an empty relation), to run here as it is.
    Here(DataFrame),
}

impl Rewrites {
    /// `df` rewritten and optimized for the cluster over `lake`, or handed
    /// back to run here.
    pub async fn for_cluster(&self, lake: &LakeSchema, df: DataFrame) -> Result<Prepared> {
        let df = lookup::late_materialization_for_lookups(lookup::small_batches_for_model_limits(df));
        let df = top_n::narrow_top_n(df, lake, self.top_n_narrowing_min_bytes).await;
        let (state, plan) = df.into_parts();
        let Some(mut optimized) = distributed_plan(&state, &plan)? else {
            return Ok(Prepared::Here(DataFrame::new(state, plan)));
        };
        if self.semi_join_reduction {
            optimized = semi_join::optimize(&state, optimized).await?;
        }
        Ok(Prepared::Cluster(Box::new(state), optimized))
    }
}
