//! What the query engine needs of the cluster: submit a job, cancel one,
//! count task slots, read the executors' model-call trails. The scheduler's Ballista server provides it
//! ([`crate::job::BallistaJobs`]); tests can provide their own.

use async_trait::async_trait;
use datafusion::common::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;

use crate::job::RunningJob;

/// The cluster the query engine submits jobs to.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Submits `plan` (optimized) as a distributed job named `name` under
    /// the session `state` (its id and configuration travel with the job),
    /// and answers the running job, whose result is read while it runs.
    async fn submit(&self, name: &str, state: &SessionState, plan: &LogicalPlan) -> Result<RunningJob>;

    /// Cancels the jobs named `name` (the engine names each job after its query).
    fn cancel(&self, name: &str);

    /// The task slots of the executors registered now.
    async fn task_slots(&self) -> usize;

    /// The model-call trail of every executor's host that `scan` asks for
    /// (`lakelink_protocol::members`); unreachable executors are left out.
    async fn trails(&self, _scan: &lakelink_model::trail::Scan) -> Vec<lakelink_protocol::members::TrailChunk> {
        vec![]
    }
}
