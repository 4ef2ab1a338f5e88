//! Result files read while their task is still writing them.
//!
//! A query's result stage (a stage whose output is not repartitioned) writes
//! each of its partitions as an Arrow IPC stream file, batch by batch. The
//! scheduler does not wait for the job to end before it reads them: as soon
//! as the task writing a partition has started, it asks that executor for the
//! file ([`ResultPartition::ticket`]), and the executor sends each message
//! the moment it is whole in the file ([`follow`]).
//!
//! A file's end-of-stream marker alone does not prove the partition whole:
//! Ballista's writer closes the stream the same way when the task's plan
//! fails. So the stage engine ([`crate::stage`]) records how each result
//! task ended (`task_started`, `task_ended`): a failed task ends a read
//! with the task's error, and a read that must prove the partition whole by
//! itself ([`Finish::TaskSucceeded`], a client's) ends only once the task has
//! succeeded. The scheduler's reads end at the marker ([`Finish::Marker`]:
//! a task writing several partitions would otherwise hold back the first
//! until the last is written); it checks each partition's rows against what
//! the job reports once it has ended.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::FlightData;
use arrow_flight::utils::{batches_to_flight_data, flight_data_to_arrow_batch};
use ballista_core::execution_plans::create_shuffle_path;
use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub use lakelink_protocol::follow::{FOLLOW_TICKET_PREFIX, MAX_RAW_MESSAGE, ResultPartition};
use lakelink_protocol::result::BoxedStream;

/// How long a reader waits for a file whose task this executor has not
/// started (or has forgotten), before it gives up. The scheduler asks once
/// the task has started, so the wait covers only that report crossing the
/// ask; only members of the cluster reach this port.
const UNKNOWN_TASK_WAIT: Duration = Duration::from_secs(10);

/// How long a task's outcome is remembered after it ended.
const OUTCOME_TTL: Duration = Duration::from_secs(600);

/// The longest pause between two looks at a file that is not growing.
const MAX_POLL: Duration = Duration::from_millis(10);

/// The size a batch over [`MAX_RAW_MESSAGE`] is sliced to.
const SLICE_BYTES: usize = 2 * 1024 * 1024;

/// Where the task writing `partition` writes it under `work_dir`.
pub fn partition_path(partition: &ResultPartition, work_dir: &str) -> Result<PathBuf, Status> {
    let job = ballista_core::JobId::new(partition.job_id.clone());
    create_shuffle_path(
        work_dir,
        &job,
        partition.stage_id,
        partition.partition_id,
        Some(partition.task_id as u64),
        false,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The entry of `partition`'s task in the outcomes of this executor's tasks.
pub fn task_key(partition: &ResultPartition, work_dir: &str) -> TaskKey {
    TaskKey {
        work_dir: work_dir.to_string(),
        job_id: partition.job_id.clone(),
        stage_id: partition.stage_id,
        task_id: partition.task_id,
    }
}

/// A result task of an executor: its work folder (executors in one process
/// have their own), job, stage and task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    /// The executor's work folder.
    pub work_dir: String,
    /// The job.
    pub job_id: String,
    /// The stage.
    pub stage_id: usize,
    /// The task.
    pub task_id: usize,
}

/// What a result task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskState {
    Running,
    Succeeded,
    Failed(String),
}

/// A result task's state and when it ended.
type Tasks = HashMap<TaskKey, (TaskState, Option<Instant>)>;

/// The result tasks of every executor in this process.
static TASKS: LazyLock<Mutex<Tasks>> = LazyLock::new(Mutex::default);

fn tasks() -> std::sync::MutexGuard<'static, Tasks> {
    TASKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records that a result task has started writing its partitions.
pub(crate) fn task_started(task: TaskKey) {
    let mut tasks = tasks();
    tasks.retain(|_, (_, ended)| ended.is_none_or(|at| at.elapsed() < OUTCOME_TTL));
    tasks.insert(task, (TaskState::Running, None));
}

/// Records how a result task ended.
pub(crate) fn task_ended(task: TaskKey, outcome: Result<(), String>) {
    let state = match outcome {
        Ok(()) => TaskState::Succeeded,
        Err(e) => TaskState::Failed(e),
    };
    tasks().insert(task, (state, Some(Instant::now())));
}

fn task_state(task: &TaskKey) -> Option<TaskState> {
    tasks().get(task).map(|(state, _)| state.clone())
}

/// When a read of a result file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// At the file's end-of-stream marker (unless its task has failed): the
    /// reader checks the result itself.
    Marker,
    /// At the marker, once the task writing the file has succeeded.
    TaskSucceeded,
}

/// Streams the messages of the result file at `path`, written by `task`, as
/// Flight data as soon as each is whole in the file: the file's schema
/// first, then its dictionary and batch messages. The stream ends at the
/// file's end-of-stream marker as `finish` says; it fails when the task
/// fails, when the file ends without the marker, or when this executor knows
/// nothing of the task for a minute.
pub fn follow(path: PathBuf, task: TaskKey, finish: Finish) -> BoxedStream<FlightData> {
    let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(4);
    tokio::task::spawn_blocking(move || {
        if let Err(status) = send_as_written(&path, &task, finish, &tx) {
            let _ = tx.blocking_send(Err(status));
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// What a look at an IPC stream file at an offset found.
pub(crate) enum Next {
    /// A message whose header is whole: the header, where its body starts,
    /// how long the body is, and whether it is a dictionary batch.
    Message { header: Vec<u8>, body_at: u64, body_len: u64, dictionary: bool },
    /// The end-of-stream marker.
    End,
    /// Not yet written whole.
    Partial,
}

fn send_as_written(
    path: &Path,
    task: &TaskKey,
    finish: Finish,
    tx: &mpsc::Sender<Result<FlightData, Status>>,
) -> Result<(), Status> {
    let failed =
        |e: &dyn std::fmt::Display| Status::internal(format!("cannot read result file {}: {e}", path.display()));
    let mut wait = Waiting::new();
    let file = loop {
        match File::open(path) {
            Ok(file) => break file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => wait.pause(task, "no result file yet", path)?,
            Err(e) => return Err(failed(&e)),
        }
    };
    let mut offset = 0u64;
    let mut wait = Waiting::new();
    let mut schema: Option<SchemaRef> = None;
    loop {
        match next_header(&file, offset).map_err(|e| failed(&e))? {
            Next::Message { header, body_at, body_len, .. } => {
                let mut body = vec![0u8; body_len as usize];
                if read_at_most(&file, &mut body, body_at).map_err(|e| failed(&e))? < body.len() {
                    wait.pause(task, "the file stopped growing", path)?;
                    continue;
                }
                offset = body_at + body_len;
                wait = Waiting::new();
                let data =
                    FlightData { data_header: Bytes::from(header), data_body: Bytes::from(body), ..Default::default() };
                let schema = match &schema {
                    Some(schema) => schema,
                    None => schema.insert(Arc::new(Schema::try_from(&data).map_err(|e| failed(&e))?)),
                };
                let pieces = if data.data_header.len() + data.data_body.len() > MAX_RAW_MESSAGE {
                    slices(&data, schema).map_err(|e| failed(&e))?
                } else {
                    vec![data]
                };
                for data in pieces {
                    if tx.blocking_send(Ok(data)).is_err() {
                        return Ok(()); // the reader went away
                    }
                }
            }
            Next::End => loop {
                // The writer closes the stream when its plan fails, too.
                match task_state(task) {
                    Some(TaskState::Failed(e)) => return Err(task_failed(path, &e)),
                    Some(TaskState::Running) if finish == Finish::TaskSucceeded => {
                        wait.pause(task, "the file is complete but its task is running", path)?
                    }
                    _ => return Ok(()),
                }
            },
            Next::Partial => wait.pause(task, "the file stopped growing", path)?,
        }
    }
}

/// A batch message over [`MAX_RAW_MESSAGE`] as messages of slices of its rows.
fn slices(data: &FlightData, schema: &SchemaRef) -> Result<Vec<FlightData>, ArrowError> {
    if schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Dictionary(..))) {
        return Err(ArrowError::IpcError(format!(
            "a batch of {} bytes with dictionary columns is too large to send",
            data.data_body.len()
        )));
    }
    let batch = flight_data_to_arrow_batch(data, schema.clone(), &HashMap::new())?;
    let rows = batch.num_rows().max(1);
    let per_slice = (rows * SLICE_BYTES / data.data_body.len().max(1)).clamp(1, rows);
    let pieces = (0..batch.num_rows()).step_by(per_slice).map(|at| batch.slice(at, per_slice.min(rows - at))).collect();
    // The schema message first: the reader has it already.
    Ok(batches_to_flight_data(schema, pieces)?.into_iter().skip(1).collect())
}

fn task_failed(path: &Path, error: &str) -> Status {
    Status::aborted(format!("the task writing result file {} failed: {error}", path.display()))
}

/// Pauses between looks at a file, growing from 1 ms to [`MAX_POLL`].
struct Waiting {
    pause: Duration,
    unknown_since: Option<Instant>,
    last_look: bool,
}

impl Waiting {
    fn new() -> Self {
        Self { pause: Duration::from_millis(1), unknown_since: None, last_look: false }
    }

    /// How long to wait for the file to grow while `task` runs; an error
    /// (naming `why`) once it has failed, once it has succeeded and one more
    /// look found nothing new (everything it wrote was in the file when it
    /// ended), or when this executor has not known the task for
    /// [`UNKNOWN_TASK_WAIT`].
    fn next(&mut self, task: &TaskKey, why: &str, path: &Path) -> Result<Duration, Status> {
        match task_state(task) {
            Some(TaskState::Running) => self.unknown_since = None,
            Some(TaskState::Failed(e)) => return Err(task_failed(path, &e)),
            Some(TaskState::Succeeded) if std::mem::replace(&mut self.last_look, true) => {
                return Err(Status::internal(format!(
                    "result file {} ended early: {why}, and its task has ended",
                    path.display()
                )));
            }
            Some(TaskState::Succeeded) => return Ok(Duration::ZERO),
            None => {
                let since = *self.unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNKNOWN_TASK_WAIT {
                    return Err(Status::not_found(format!(
                        "result file {}: {why}, and no task of this executor writes it",
                        path.display()
                    )));
                }
            }
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_POLL);
        Ok(pause)
    }

    /// [`Waiting::next`], slept in this thread.
    fn pause(&mut self, task: &TaskKey, why: &str, path: &Path) -> Result<(), Status> {
        std::thread::sleep(self.next(task, why, path)?);
        Ok(())
    }
}

/// Waits until the file at `path`, which `task` writes, exists (the task has
/// started writing it); an error when the task fails first, or ends or is
/// unknown to this executor without writing it.
pub async fn wait_for_file(path: &Path, task: &TaskKey) -> Result<(), Status> {
    let mut wait = Waiting::new();
    while !path.exists() {
        tokio::time::sleep(wait.next(task, "no result file", path)?).await;
    }
    Ok(())
}

/// The header of the message of the IPC stream `file` at `offset`, if it is
/// whole (the body may not be yet).
pub(crate) fn next_header(file: &File, offset: u64) -> std::io::Result<Next> {
    let mut prefix = [0u8; 8];
    let read = read_at_most(file, &mut prefix, offset)?;
    if read < 4 {
        return Ok(Next::Partial);
    }
    // A stream message is prefixed by 0xFFFFFFFF and its header's length
    // (older writers: the length alone); a length of 0 ends the stream.
    let (length, header_at) = if prefix[..4] == [0xff; 4] {
        if read < 8 {
            return Ok(Next::Partial);
        }
        (i32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes")), offset + 8)
    } else {
        (i32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")), offset + 4)
    };
    if length <= 0 {
        return Ok(Next::End);
    }
    let mut header = vec![0u8; length as usize];
    if read_at_most(file, &mut header, header_at)? < header.len() {
        return Ok(Next::Partial);
    }
    let message = root_as_message(&header).map_err(|e| std::io::Error::other(format!("not an IPC message: {e}")))?;
    let body_len = message.bodyLength().max(0) as u64;
    let dictionary = message.header_type() == MessageHeader::DictionaryBatch;
    Ok(Next::Message { body_at: header_at + header.len() as u64, body_len, dictionary, header })
}

/// Reads into `buf` from `offset` until it is full or the file ends; how
/// many bytes were read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::Field;
    use datafusion::arrow::ipc::writer::StreamWriter;
    use futures::TryStreamExt;

    use super::*;

    /// A whole result file of two batches, and a task of its own.
    fn written(name: &str) -> (tempfile::TempDir, PathBuf, TaskKey) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.arrow");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..10))]).unwrap();
        let mut writer = StreamWriter::try_new(File::create(&path).unwrap(), &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let task = TaskKey { work_dir: dir.path().display().to_string(), job_id: name.into(), stage_id: 1, task_id: 0 };
        (dir, path, task)
    }

    #[tokio::test]
    async fn a_read_to_the_marker_ends_there_while_its_task_still_runs() {
        let (_dir, path, task) = written("marker");
        task_started(task.clone());
        let data: Vec<FlightData> = follow(path, task, Finish::Marker).try_collect().await.unwrap();
        assert_eq!(data.len(), 3, "the schema and two batches");
    }

    #[tokio::test]
    async fn a_read_waiting_for_its_task_ends_when_the_task_succeeds() {
        let (_dir, path, task) = written("succeeds");
        task_started(task.clone());
        let mut read = follow(path, task.clone(), Finish::TaskSucceeded);
        let mut got = vec![];
        for _ in 0..3 {
            got.push(read.try_next().await.unwrap().unwrap());
        }
        let pending = tokio::time::timeout(Duration::from_millis(100), read.try_next()).await;
        assert!(pending.is_err(), "the read ended while its task was running");
        task_ended(task, Ok(()));
        assert!(read.try_next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_whole_file_of_a_failed_task_fails_the_read_with_the_tasks_error() {
        let (_dir, path, task) = written("fails");
        task_started(task.clone());
        task_ended(task.clone(), Err("disk full".into()));
        for finish in [Finish::Marker, Finish::TaskSucceeded] {
            let err = follow(path.clone(), task.clone(), finish).try_collect::<Vec<_>>().await.unwrap_err();
            assert!(err.message().contains("disk full"), "{}", err.message());
        }
    }
}
