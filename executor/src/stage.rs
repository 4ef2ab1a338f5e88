//! How the executor runs a query stage: Ballista's engine, except that a
//! stage whose output is not repartitioned writes it without compression,
//! and says when its tasks end (so its files can be read while they are
//! written, see [`crate::follow`]).
//!
//! Such a stage (Ballista's passthrough `ShuffleWriterExec`) holds a query's
//! result, or the input of a final merge: each file is read once, whole, and
//! sent on (the result's messages go to the scheduler exactly as they lie in
//! the file, see [`crate::flight`]). Compressing it cost the executors 40-60%
//! of their CPU on a large result (TPC-H SF 10 `SELECT * FROM orders`, CPU s
//! per executor: 4.0 with LZ4 and 1.5 without in one pair of runs, 2.6 and
//! 1.4-1.7 in another). Repartitioned (hash) shuffles, which are read
//! piecewise by many tasks and are usually the largest files, keep the
//! configured codec (`ballista.shuffle.compression.codec`).

use std::fmt;
use std::sync::Arc;

use ballista_core::JobId;
use ballista_core::config::BALLISTA_SHUFFLE_COMPRESSION_CODEC;
use ballista_core::execution_plans::ShuffleWriterExec;
use ballista_core::serde::protobuf::{RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport};
use ballista_executor::execution_engine::{DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::prelude::SessionConfig;

use crate::follow::{self, TaskKey};

/// See the module documentation.
#[derive(Default)]
pub struct StageEngine {
    inner: DefaultExecutionEngine,
}

impl ExecutionEngine for StageEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let unpartitioned = plan.downcast_ref::<ShuffleWriterExec>().is_some();
        let task = TaskKey { work_dir: work_dir.to_string(), job_id: job_id.to_string(), stage_id, task_id };
        let stage = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        if !unpartitioned {
            return Ok(stage);
        }
        follow::task_started(task.clone());
        Ok(Arc::new(ResultStage { stage, task }))
    }
}

/// A stage whose output is not repartitioned: written without compression,
/// whatever the session's codec, and its end recorded for readers following
/// its files.
#[derive(Debug)]
struct ResultStage {
    stage: Arc<dyn QueryStageExecutor>,
    task: TaskKey,
}

impl fmt::Display for ResultStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (written uncompressed)", self.stage)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for ResultStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        // Ballista aborts a cancelled task by dropping this future: the
        // guard records that end too.
        let mut ended = EndOnDrop(Some(self.task.clone()));
        let written = match without_compression(&context) {
            Ok(context) => self.stage.execute_query_stage(task_id, Arc::new(context)).await,
            Err(e) => Err(e),
        };
        if let Some(task) = ended.0.take() {
            follow::task_ended(task, written.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        written
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.stage.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.stage.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> Result<Vec<WindowStateReport>> {
        self.stage.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.stage.collect_column_stats()
    }
}

/// Records a result task as ended by cancellation unless it ended otherwise.
struct EndOnDrop(Option<TaskKey>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            follow::task_ended(task, Err("the task was cancelled".into()));
        }
    }
}

/// `context` with the shuffle codec set to none.
fn without_compression(context: &TaskContext) -> Result<TaskContext> {
    let mut config = context.session_config().clone();
    config.options_mut().set(BALLISTA_SHUFFLE_COMPRESSION_CODEC, "none")?;
    Ok(TaskContext::new(
        context.task_id(),
        context.session_id(),
        config,
        context.scalar_functions().clone(),
        context.higher_order_functions().clone(),
        context.aggregate_functions().clone(),
        context.window_functions().clone(),
        context.runtime_env(),
    ))
}

#[cfg(test)]
mod tests {
    use ballista_core::extension::SessionConfigExt;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::ipc::root_as_message;
    use datafusion::datasource::memory::MemorySourceConfig;

    use super::*;

    fn zstd_context() -> Arc<TaskContext> {
        let mut config = SessionConfig::new_with_ballista();
        config.options_mut().set(BALLISTA_SHUFFLE_COMPRESSION_CODEC, "zstd").unwrap();
        config.options_mut().set("datafusion.execution.batch_size", "1234").unwrap();
        Arc::new(TaskContext::default().with_session_config(config).with_task_id("t".into()))
    }

    #[test]
    fn the_copy_keeps_everything_but_the_codec() {
        let context = zstd_context();
        let copy = without_compression(&context).unwrap();
        assert_eq!(copy.session_config().ballista_config().shuffle_compression_codec().unwrap(), None);
        assert_eq!(copy.session_config().batch_size(), 1234);
        assert_eq!(copy.task_id(), Some("t".into()));
        assert_eq!(copy.session_id(), context.session_id());
    }

    /// Whether each record batch message of the IPC stream file says its
    /// body is compressed.
    fn batches_compressed(file: &[u8]) -> Vec<bool> {
        let mut at = 0;
        let mut compressed = Vec::new();
        while at + 8 <= file.len() {
            let len = i32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap());
            if len <= 0 {
                break;
            }
            let header = root_as_message(&file[at + 8..at + 8 + len as usize]).unwrap();
            if let Some(batch) = header.header_as_record_batch() {
                compressed.push(batch.compression().is_some());
            }
            at += 8 + len as usize + header.bodyLength() as usize;
        }
        compressed
    }

    /// Runs a passthrough stage over 10,000 rows under a zstd session with
    /// `engine` and says, for each batch written, whether it is compressed.
    async fn write_stage(engine: &dyn ExecutionEngine) -> Vec<bool> {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..10_000))]).unwrap();
        let source = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
        let work = tempfile::tempdir().unwrap();
        let work_dir = work.path().to_str().unwrap();
        let writer = ShuffleWriterExec::try_new(JobId::new("job"), 1, source, work_dir.into()).unwrap();
        let context = zstd_context();
        let stage = engine
            .create_query_stage_exec(
                JobId::new("job"),
                1,
                0,
                vec![0],
                Arc::new(writer),
                work_dir,
                context.session_config(),
            )
            .unwrap();
        let written = stage.execute_query_stage(0, context).await.unwrap();
        assert_eq!(written.iter().map(|p| p.num_rows).sum::<u64>(), 10_000);
        let path =
            ballista_core::execution_plans::create_shuffle_path(work_dir, &JobId::new("job"), 1, 0, Some(0), false)
                .unwrap();
        batches_compressed(&std::fs::read(path).unwrap())
    }

    #[tokio::test]
    async fn an_unpartitioned_stage_is_written_uncompressed_whatever_the_codec() {
        let ballista = write_stage(&DefaultExecutionEngine::new()).await;
        assert!(!ballista.is_empty() && ballista.iter().all(|c| *c), "Ballista's engine compresses: {ballista:?}");
        let ours = write_stage(&StageEngine::default()).await;
        assert!(!ours.is_empty() && ours.iter().all(|c| !*c), "{ours:?}");
    }
}
