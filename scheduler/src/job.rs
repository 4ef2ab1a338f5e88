//! A distributed query's job, followed while it runs.
//!
//! The scheduler does not wait for a job to end before its result is read: a
//! watcher looks at the job's execution graph and learns, for each partition
//! of the result stage (the stage whose output is the query's result), which
//! executor's task is writing it. The result is then read from that
//! executor while the task writes it (`lakelink_protocol::follow`), so the
//! first rows reach the client while the job still runs, and the transfer of
//! a large result overlaps its computation.
//!
//! Finding the result stage: with Ballista's adaptive planner (the default)
//! it is the stage its root is given once every other stage is done, which
//! the root's description names (`is_final=true, ..., stage_id=N`); with the
//! static planner it is the stage no other stage reads. A job whose result
//! stage cannot be told is read once it has ended, from the locations the
//! job's end reports.

use std::time::Duration;

use async_trait::async_trait;
use ballista_core::JobId;
use ballista_core::serde::protobuf::{JobStatus, job_status, task_status};
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::state::execution_graph::ExecutionGraph;
use ballista_scheduler::state::execution_stage::ExecutionStage;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::displayable;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use lakelink_protocol::follow::ResultPartition;
use lakelink_protocol::members;
use tokio::sync::{mpsc, watch};

/// The Ballista scheduler in this process, as the query engine's cluster,
/// reaching executors as `link` says.
#[derive(Clone)]
pub struct BallistaJobs {
    /// The scheduler.
    pub server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    /// How the scheduler reaches executors (secret, CA).
    pub link: lakelink_protocol::cluster::ClusterLink,
}

impl BallistaJobs {
    /// The data ports (host, port) of the executors registered now.
    async fn executors(&self) -> Vec<(String, u16)> {
        let executors = self.server.state.executor_manager.get_executors_state().await.unwrap_or_default();
        executors.into_iter().map(|(meta, _, _)| (meta.host.clone(), meta.port)).collect()
    }
}

#[async_trait]
impl crate::query::Cluster for BallistaJobs {
    async fn submit(&self, name: &str, state: &SessionState, plan: &LogicalPlan) -> Result<RunningJob> {
        let scheduler = &self.server;
        let ballista = |e: ballista_core::error::BallistaError| e.into_datafusion();
        let ctx = scheduler
            .state
            .session_manager
            .create_or_update_session(state.session_id(), state.config())
            .await
            .map_err(ballista)?;
        let (subscriber, statuses) = mpsc::channel::<JobStatus>(16);
        let job_id = scheduler.submit_job(name, ctx, plan, Some(subscriber)).await.map_err(ballista)?;
        Ok(follow(scheduler.clone(), job_id, statuses))
    }

    fn cancel(&self, name: &str) {
        let (jobs, name) = (self.clone(), name.to_string());
        // Bare on purpose: cancelling is fire and forget: it must finish even if the caller is gone.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let scheduler = &jobs.server;
            let all = scheduler.state.task_manager.get_all_jobs().await.unwrap_or_default();
            for job in all.into_iter().filter(|j| j.job_name == name) {
                if let Err(e) = scheduler.cancel_job(job.job_id.clone()).await {
                    tracing::warn!("cannot cancel job {}: {e}", job.job_id);
                }
            }
            // Tasks already running finish; their model calls stop now, on
            // every host.
            let executors = jobs.executors().await;
            crate::members::ask_all(&executors, &jobs.link, members::CANCEL_ACTION, name.into_bytes()).await;
        });
    }

    async fn task_slots(&self) -> usize {
        let executors = self.server.state.executor_manager.get_executors_state().await.unwrap_or_default();
        executors.iter().map(|(meta, _, _)| meta.specification.vcores as usize).sum()
    }

    async fn trails(&self, scan: &lakelink_model::trail::Scan) -> Vec<members::TrailChunk> {
        let Ok(body) = serde_json::to_vec(scan) else { return vec![] };
        let executors = self.executors().await;
        crate::members::ask_all(&executors, &self.link, members::TRAIL_ACTION, body)
            .await
            .into_iter()
            .flatten()
            .filter_map(|answer| serde_json::from_slice(&answer).ok())
            .collect()
    }
}

/// The longest pause between two looks at a running job's graph.
const MAX_POLL: Duration = Duration::from_millis(20);

/// Where one partition of a job's result is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The executor writing it: its host and data (Arrow Flight) port.
    pub host: String,
    /// See `host`.
    pub port: u16,
    /// The partition and the task writing it.
    pub partition: ResultPartition,
    /// Its rows, once the job has ended and reported them.
    pub rows: Option<u64>,
}

/// What is known of a job's result.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Where each partition of the result is written, where known; `None`
    /// until the result stage (and so its partition count) is known.
    located: Option<Vec<Option<Located>>>,
    /// How the job ended: its error message when it failed.
    ended: Option<Result<(), String>>,
}

/// A query's job while it runs. Dropped before the job has ended (a client
/// that went away), it runs `abandon`, which cancels the query; unless
/// [`RunningJob::detach`]ed.
pub struct RunningJob {
    job_id: String,
    progress: watch::Receiver<Progress>,
    abandon: Option<Box<dyn FnOnce() + Send>>,
}

impl RunningJob {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.job_id
    }

    /// Runs `abandon` if this is dropped before the job has ended.
    pub fn on_abandon(&mut self, abandon: impl FnOnce() + Send + 'static) {
        self.abandon = Some(Box::new(abandon));
    }

    /// Where partition `n` of the result is written, once its task has been
    /// placed (or the job has ended); `None` when the result has fewer
    /// partitions. The job's error when it fails first.
    pub async fn partition(&mut self, n: usize) -> Result<Option<Located>> {
        let lost = self.lost();
        let progress = self
            .progress
            .wait_for(|p| p.located.as_ref().is_some_and(|l| l.get(n).is_none_or(Option::is_some)) || p.ended.is_some())
            .await
            .map_err(|_| lost)?;
        if let Some(Some(located)) = progress.located.as_ref().and_then(|l| l.get(n)) {
            return Ok(Some(located.clone()));
        }
        match &progress.ended {
            Some(Err(e)) => Err(DataFusionError::Execution(e.clone())),
            _ => Ok(None),
        }
    }

    /// Where each partition of the result lies, with its rows, as the job
    /// reported when it ended; empty before.
    pub fn reported(&self) -> Vec<Option<Located>> {
        let progress = self.progress.borrow();
        if progress.ended.is_some() { progress.located.clone().unwrap_or_default() } else { vec![] }
    }

    /// Waits for the job to end; its error when it failed.
    pub async fn ended(&mut self) -> Result<()> {
        let lost = self.lost();
        let progress = self.progress.wait_for(|p| p.ended.is_some()).await.map_err(|_| lost)?;
        match progress.ended.clone().expect("waited for") {
            Ok(()) => Ok(()),
            Err(e) => Err(DataFusionError::Execution(e)),
        }
    }

    /// Lets the job run to its end when this is dropped (its partitions were
    /// handed to the client to read from the executors).
    pub fn detach(mut self) {
        self.abandon = None;
    }

    fn lost(&self) -> DataFusionError {
        DataFusionError::Execution(format!("Job {} ended without saying how", self.job_id))
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        let ended = self.progress.borrow().ended.is_some();
        if let Some(abandon) = self.abandon.take()
            && !ended
        {
            abandon();
        }
    }
}

/// Follows the job `job_id`, whose statuses arrive on `statuses`, as a
/// [`RunningJob`]. Once the job has ended and the handle is dropped (its
/// result read, or its client gone), the job's files are removed from the
/// executors (a large result would otherwise fill their disks until
/// Ballista's clean-up minutes later).
pub(crate) fn follow(
    scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    job_id: JobId,
    statuses: mpsc::Receiver<JobStatus>,
) -> RunningJob {
    let (tx, rx) = watch::channel(Progress::default());
    let running = RunningJob { job_id: job_id.to_string(), progress: rx, abandon: None };
    // Bare on purpose: the watcher follows the job to its end, then removes its files.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        watch_job(&scheduler, &job_id, statuses, &tx).await;
        tx.closed().await;
        scheduler.state.executor_manager.clean_up_job_data(job_id);
    });
    running
}

/// Updates `tx` with what the graph and the statuses of the job tell, until
/// the job ends.
async fn watch_job(
    scheduler: &SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    job_id: &JobId,
    mut statuses: mpsc::Receiver<JobStatus>,
    tx: &watch::Sender<Progress>,
) {
    let mut pause = Duration::from_millis(1);
    loop {
        tokio::select! {
            status = statuses.recv() => match status.and_then(|s| s.status) {
                Some(job_status::Status::Successful(job)) => {
                    let located = job
                        .partition_location
                        .iter()
                        .map(|l| {
                            let (executor, id) = (l.executor_meta.as_ref()?, l.partition_id.as_ref()?);
                            Some(Located {
                                host: executor.host.clone(),
                                port: executor.port as u16,
                                partition: ResultPartition {
                                    job_id: id.job_id.clone(),
                                    stage_id: id.stage_id as usize,
                                    partition_id: id.partition_id as usize,
                                    task_id: l.file_id.unwrap_or_default() as usize,
                                },
                                rows: l.partition_stats.as_ref().and_then(|s| u64::try_from(s.num_rows).ok()),
                            })
                        })
                        .collect::<Vec<_>>();
                    tx.send_modify(|p| {
                        p.located = Some(located);
                        p.ended = Some(Ok(()));
                    });
                    return;
                }
                Some(job_status::Status::Failed(failed)) => {
                    tx.send_modify(|p| p.ended = Some(Err(format!("Job {job_id} failed: {}", failed.error))));
                    return;
                }
                Some(_) => {}
                None => {
                    tx.send_modify(|p| p.ended = Some(Err(format!("Job {job_id} ended without saying how"))));
                    return;
                }
            },
            _ = tokio::time::sleep(pause) => {
                if let Some(located) = result_stage(scheduler, job_id).await {
                    tx.send_if_modified(|p| {
                        let changed = p.located.as_ref() != Some(&located);
                        p.located = Some(located);
                        changed
                    });
                }
                pause = (pause * 2).min(MAX_POLL);
            }
        }
    }
}

/// Where each partition of the job's running result stage is being written,
/// as far as its tasks have been placed; `None` while the result stage is not
/// running (or cannot be told).
async fn result_stage(
    scheduler: &SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    job_id: &JobId,
) -> Option<Vec<Option<Located>>> {
    let jobs = scheduler.state.task_manager.get_running_job_cache();
    let graph = jobs.get(job_id)?.execution_graph.clone();
    let placed: Vec<Option<(String, ResultPartition)>> = {
        let graph = graph.read().await;
        let stage_id = result_stage_id(graph.as_ref())?;
        let ExecutionStage::Running(stage) = graph.stages().get(&stage_id)? else { return None };
        let mut placed = vec![None; stage.partitions];
        // Later tasks (retries) take the place of earlier ones.
        for task in &stage.task_infos {
            let executor = match &task.task_status {
                task_status::Status::Running(running) => Some(running.executor_id.clone()),
                task_status::Status::Successful(done) => Some(done.executor_id.clone()),
                _ => None,
            };
            for &partition_id in &task.global_input_partition_ids {
                if let Some(slot) = placed.get_mut(partition_id) {
                    *slot = executor.clone().map(|executor| {
                        let partition = ResultPartition {
                            job_id: job_id.to_string(),
                            stage_id,
                            partition_id,
                            task_id: task.task_id,
                        };
                        (executor, partition)
                    });
                }
            }
        }
        placed
    };
    let mut located = Vec::with_capacity(placed.len());
    for slot in placed {
        located.push(match slot {
            Some((executor, partition)) => {
                let meta = scheduler.state.executor_manager.get_executor_metadata(&executor).await.ok()?;
                Some(Located { host: meta.host, port: meta.port, partition, rows: None })
            }
            None => None,
        });
    }
    Some(located)
}

/// The id of `graph`'s result stage, when it can be told (see the module
/// documentation).
fn result_stage_id(graph: &dyn ExecutionGraph) -> Option<usize> {
    let root = graph.physical_plan();
    if root.name() == "AdaptiveDatafusionExec" {
        return adaptive_result_stage(&displayable(root.as_ref()).one_line().to_string());
    }
    let mut result = graph.stages().iter().filter(|(_, stage)| stage.output_links().is_empty()).map(|(id, _)| *id);
    let id = result.next()?;
    result.next().is_none().then_some(id)
}

/// The result stage's id in the description of an adaptive plan's root, once
/// the planner has made it.
fn adaptive_result_stage(root: &str) -> Option<usize> {
    if !root.contains("is_final=true") {
        return None;
    }
    let digits = root.split("stage_id=").nth(1)?;
    digits.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_adaptive_result_stage_is_read_from_the_roots_description() {
        let made = "AdaptiveDatafusionExec: is_final=true, plan_id=0, stage_id=5, stage_resolved=false";
        assert_eq!(adaptive_result_stage(made), Some(5));
        let pending = "AdaptiveDatafusionExec: is_final=false, plan_id=0, stage_id=pending, stage_resolved=false";
        assert_eq!(adaptive_result_stage(pending), None);
    }

    #[tokio::test]
    async fn partitions_are_answered_as_they_are_placed_and_the_error_once_failed() {
        let (tx, rx) = watch::channel(Progress::default());
        let mut job = RunningJob { job_id: "j".into(), progress: rx, abandon: None };
        let at = |n| Located {
            host: "h".into(),
            port: 1,
            partition: ResultPartition { job_id: "j".into(), stage_id: 3, partition_id: n, task_id: n },
            rows: None,
        };
        tx.send_modify(|p| p.located = Some(vec![Some(at(0)), None]));
        assert_eq!(job.partition(0).await.unwrap(), Some(at(0)));
        assert_eq!(job.partition(2).await.unwrap(), None);
        tx.send_modify(|p| p.ended = Some(Err("Job j failed: boom".into())));
        assert!(job.partition(1).await.unwrap_err().to_string().contains("boom"));
        assert!(job.ended().await.is_err());
    }

    #[tokio::test]
    async fn an_abandoned_job_is_cancelled_and_an_ended_or_detached_one_is_not() {
        let cancelled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let job = |ended: bool| {
            let (tx, rx) = watch::channel(Progress::default());
            if ended {
                tx.send_modify(|p| p.ended = Some(Ok(())));
            }
            let mut job = RunningJob { job_id: "j".into(), progress: rx, abandon: None };
            let cancelled = cancelled.clone();
            job.on_abandon(move || {
                cancelled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            (job, tx)
        };
        drop(job(false));
        assert_eq!(cancelled.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(job(true));
        job(false).0.detach();
        assert_eq!(cancelled.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
