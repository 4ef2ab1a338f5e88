//! The clients' side: [`ModelProcess`] reaches the host's model process
//! (starting it when none runs), and [`ProcessGenerator`] /
//! [`ProcessEmbedder`] are the local backend's models as the rest of
//! LakeLink sees them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, Answer, Call, FromServer, PROTOCOL_VERSION, Status, ToServer};
use crate::local::Timing;
use crate::model::{Choice, Completion, Embedder, Embeddings, Generator, ModelError, Prompt, Served, Usage};

/// How long a new model process may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the model process stays up with no client.
pub const IDLE_EXIT: Duration = Duration::from_secs(120);

/// One connection to the supervisor, shared by every call of this process.
struct Connection {
    out: mpsc::UnboundedSender<ToServer>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<FromServer>>>>,
    next: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Connection {
    async fn open(stream: UnixStream) -> Result<Arc<Self>, ModelError> {
        let (mut reader, mut writer) = stream.into_split();
        let hello = ToServer::Hello { version: PROTOCOL_VERSION, client: super::this_process() };
        wire::write_frame(&mut writer, &hello).await.map_err(|e| gone(&e.to_string()))?;
        let (out, mut outgoing) = mpsc::unbounded_channel::<ToServer>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<FromServer>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        // Bare on purpose: the writer ends when the connection's channel closes.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if wire::write_frame(&mut writer, &message).await.is_err() {
                    break;
                }
            }
        });
        let (p, c) = (pending.clone(), closed.clone());
        // Bare on purpose: the reader ends when the connection closes.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            loop {
                let message = match wire::read_frame::<_, FromServer>(&mut reader).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("model process connection: {e}");
                        break;
                    }
                };
                let id = match &message {
                    FromServer::Done { id, .. } | FromServer::Status { id, .. } => *id,
                    FromServer::Refused { reason } => {
                        tracing::warn!("the model process refused this client: {reason}");
                        break;
                    }
                };
                if let Some(waiter) = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                    waiter.send(message).ok();
                }
            }
            // Every call still waiting fails now (its sender drops).
            c.store(true, Ordering::Relaxed);
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(Arc::new(Self { out, pending, next: AtomicU64::new(1), closed }))
    }

    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }
}

fn gone(detail: &str) -> ModelError {
    ModelError::Process(format!(
        "the local model process closed its connection ({detail}); it is started again on the next call"
    ))
}

/// Sends a cancel for a call whose caller stopped waiting.
struct Waiting<'a> {
    connection: &'a Connection,
    id: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.connection.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
            self.connection.out.send(ToServer::Cancel { id: self.id }).ok();
        }
    }
}

/// The host's model process for one thread count, as this process reaches it.
#[derive(Debug)]
pub struct ModelProcess {
    socket: PathBuf,
    binary: PathBuf,
    threads: usize,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("open", &self.is_open()).finish()
    }
}

impl ModelProcess {
    /// The model process of this host for `threads` threads (one value per
    /// socket in this process).
    pub fn for_threads(threads: usize) -> Result<Arc<Self>, ModelError> {
        let binary = super::model_binary()?;
        let socket = super::socket_path(&super::runtime_dir()?, &binary, threads);
        static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<ModelProcess>>>> = OnceLock::new();
        let mut all = ALL.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        Ok(all
            .entry(socket.clone())
            .or_insert_with(|| Arc::new(Self { socket, binary, threads, connection: tokio::sync::Mutex::new(None) }))
            .clone())
    }

    /// The socket this process's calls go to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connection(&self) -> Result<Arc<Connection>, ModelError> {
        let mut current = self.connection.lock().await;
        if let Some(c) = current.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let stream = match UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(_) => self.start().await?,
        };
        let c = Connection::open(stream).await?;
        *current = Some(c.clone());
        Ok(c)
    }

    /// Starts the model process unless another process of the host just
    /// did (a lock file orders them), and connects to it.
    async fn start(&self) -> Result<UnixStream, ModelError> {
        let (socket, binary, threads) = (self.socket.clone(), self.binary.clone(), self.threads);
        let started = tokio::task::spawn_blocking(move || start_blocking(&socket, &binary, threads))
            .await
            .map_err(|e| ModelError::Setup(format!("starting the model process failed: {e}")))?;
        started?;
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ModelError::Setup(format!("cannot reach the model process at {}: {e}", self.socket.display())))
    }

    /// Computes `call` in the model process; with `reuse`, a recent identical
    /// answer may be returned. Dropping the future cancels the call.
    pub async fn call(&self, call: Call, reuse: bool) -> Result<(Answer, Served), ModelError> {
        let connection = self.connection().await?;
        let id = connection.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        connection.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let mut waiting = Waiting { connection: &connection, id, done: false };
        if connection.out.send(ToServer::Call { id, call, reuse }).is_err() {
            return Err(gone("it could not be written to"));
        }
        let reply = rx.await;
        waiting.done = true;
        match reply {
            Ok(FromServer::Done { outcome, served_by, shared, .. }) => {
                outcome.map(|answer| (answer, Served { by: served_by, shared }))
            }
            Ok(_) => Err(ModelError::Protocol("the model process answered a call with something else".into())),
            Err(_) => Err(gone("the process or its connection ended")),
        }
    }

    /// What the model process has done since it started.
    pub async fn status(&self) -> Result<Status, ModelError> {
        let connection = self.connection().await?;
        let id = connection.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        connection.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        connection.out.send(ToServer::Status { id }).map_err(|_| gone("it could not be written to"))?;
        match rx.await {
            Ok(FromServer::Status { status, .. }) => Ok(status),
            Ok(_) => {
                Err(ModelError::Protocol("the model process answered a status request with something else".into()))
            }
            Err(_) => Err(gone("the process or its connection ended")),
        }
    }
}

fn start_blocking(socket: &Path, binary: &Path, threads: usize) -> Result<(), ModelError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| ModelError::Setup(format!("model process: {what}: {e}"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(socket.with_extension("lock"))
        .map_err(|e| setup("cannot open its lock file", &e))?;
    lock.lock().map_err(|e| setup("cannot take its lock file", &e))?;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Ok(());
    }
    let log_path = socket.with_extension("log");
    // A log grown past 16 MiB starts over.
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 16 << 20) {
        let _ = std::fs::remove_file(&log_path);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| setup("cannot open its log", &e))?;
    let log2 = log.try_clone().map_err(|e| setup("cannot open its log", &e))?;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(binary)
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--idle-exit")
        .arg(IDLE_EXIT.as_secs().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C meant for the shell does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| setup(&format!("cannot run {}", binary.display()), &e))?;
    tracing::info!("started the model process {} (pid {}), log {}", socket.display(), child.id(), log_path.display());
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            // Reaped when it exits, so it never lingers as a zombie.
            std::thread::spawn(move || child.wait());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ModelError::Setup(format!(
                "the model process ended at start ({}); see {}",
                super::describe_exit(status),
                log_path.display()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(ModelError::Setup(format!(
                "the model process did not listen within {} s; see {}",
                START_DEADLINE.as_secs(),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn latency(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// A GGUF model computed by the host's model process.
#[derive(Debug)]
pub struct ProcessGenerator {
    id: String,
    path: PathBuf,
    reuse: bool,
    process: Arc<ModelProcess>,
}

impl ProcessGenerator {
    /// The model at `path` (a GGUF file) in `process`; `reuse` lets recent
    /// identical answers serve (the caller's answer cache is on).
    pub fn new(process: Arc<ModelProcess>, path: &Path, reuse: bool) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self { id: format!("local:{name}"), path: path.to_path_buf(), reuse, process }
    }
}

impl ProcessGenerator {
    /// Answers `prompt` and says how the worker spent its time (prefill,
    /// decode, cached prefix) and how long the whole call took here.
    pub async fn generate(&self, prompt: &Prompt) -> Result<(Completion, Timing, Duration), ModelError> {
        let started = Instant::now();
        let call = Call::Complete { model: self.path.to_string_lossy().into_owned(), prompt: prompt.clone() };
        match self.process.call(call, self.reuse).await? {
            (
                Answer::Completion {
                    text,
                    prompt_tokens,
                    completion_tokens,
                    latency_ms,
                    cached_tokens,
                    prefill_ms,
                    decode_ms,
                },
                served,
            ) => {
                let timing = Timing {
                    prefill_tokens: prompt_tokens.saturating_sub(cached_tokens) as usize,
                    prefill: latency(prefill_ms),
                    decode_tokens: completion_tokens as usize,
                    decode: latency(decode_ms),
                    cached_tokens: cached_tokens as usize,
                };
                let usage = Usage { prompt_tokens, completion_tokens, latency: latency(latency_ms) };
                Ok((Completion { text, usage, served }, timing, started.elapsed()))
            }
            _ => Err(ModelError::Protocol("the model process answered a completion with embeddings".into())),
        }
    }
}

#[async_trait]
impl Generator for ProcessGenerator {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ModelError> {
        Ok(self.generate(prompt).await?.0)
    }

    async fn choose(&self, prompt: &Prompt, answers: &[Vec<String>]) -> Result<Choice, ModelError> {
        let call = Call::Choose {
            model: self.path.to_string_lossy().into_owned(),
            prompt: prompt.clone(),
            answers: answers.to_vec(),
        };
        match self.process.call(call, self.reuse).await? {
            (Answer::Choice { probabilities, mass, prompt_tokens, latency_ms }, served) => Ok(Choice {
                probabilities,
                mass,
                usage: Usage { prompt_tokens, completion_tokens: 1, latency: latency(latency_ms) },
                served,
            }),
            _ => Err(ModelError::Protocol("the model process answered a choice with something else".into())),
        }
    }
}

/// A sentence embedder computed by the host's model process.
#[derive(Debug)]
pub struct ProcessEmbedder {
    id: String,
    path: PathBuf,
    reuse: bool,
    process: Arc<ModelProcess>,
}

impl ProcessEmbedder {
    /// The embedder in folder `path` in `process`.
    pub fn new(process: Arc<ModelProcess>, path: &Path, reuse: bool) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self { id: format!("local:{name}"), path: path.to_path_buf(), reuse, process }
    }
}

#[async_trait]
impl Embedder for ProcessEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    async fn embed(&self, texts: &[String]) -> Result<Embeddings, ModelError> {
        let call = Call::Embed { model: self.path.to_string_lossy().into_owned(), texts: texts.to_vec() };
        match self.process.call(call, self.reuse).await? {
            (Answer::Embeddings { vectors, tokens, latency_ms }, served) => Ok(Embeddings {
                vectors,
                usage: Usage { prompt_tokens: tokens, completion_tokens: 0, latency: latency(latency_ms) },
                served,
            }),
            _ => Err(ModelError::Protocol("the model process answered embeddings with a completion".into())),
        }
    }
}
