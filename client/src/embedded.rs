//! Embedded mode: a scheduler and executors inside the `lakelink` process,
//! serving Flight SQL on a loopback port that the shell connects to, so the
//! shell behaves exactly as it does against a remote cluster.

use lakelink_scheduler::{RunningScheduler, SchedulerOptions};
use lakelink_udf::Extensions;

use crate::error::ClientError;

/// Starts a scheduler over `lake` and `executors` executors sharing the cores.
pub async fn start(lake: &str, executors: usize) -> Result<RunningScheduler, ClientError> {
    // A secret of its own: nothing outside this process joins the cluster.
    let mut options = SchedulerOptions::new(lake);
    options.bind_host = "127.0.0.1".into();
    options.port = 0;
    let options_secret = options.cluster_secret.clone();
    let scheduler = lakelink_scheduler::start(options).await.map_err(|e| ClientError::Embedded(e.to_string()))?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let executors = executors.max(1);
    let ext = Extensions::lakelink();
    for _ in 0..executors {
        lakelink_executor::start_in_process(
            scheduler.local_cluster_addr(),
            (cores / executors).max(1),
            &ext,
            &lakelink_scheduler::ClusterLink::plain(options_secret.clone()),
        )
        .await
        .map_err(|e| ClientError::Embedded(e.to_string()))?;
    }
    Ok(scheduler)
}
