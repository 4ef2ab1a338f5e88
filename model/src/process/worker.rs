//! The worker: the only process that runs model code. It connects back to
//! its supervisor, loads each model on its first call, and answers calls as
//! they come (the generator computes one prompt at a time and keeps the
//! last prompt in its KV cache; the embedder runs beside it).
//!
//! It ends when the supervisor closes the connection or dies, even if a
//! model call is stuck in native code: a watchdog thread follows the parent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::wire::{self, Answer, Call, FromWorker, Outcome, ToWorker};
use crate::local::{LocalEmbedder, LocalGenerator};
use crate::model::{Embedder, ModelError};

/// The environment variable carrying the secret the worker presents.
pub const TOKEN_ENV: &str = "LAKELINK_MODEL_WORKER_TOKEN";

/// Loaded models, by path; each loads once, on a blocking thread.
#[derive(Default)]
struct Models {
    generators: Mutex<HashMap<PathBuf, Arc<LocalGenerator>>>,
    embedders: Mutex<HashMap<PathBuf, Arc<LocalEmbedder>>>,
    loading: tokio::sync::Mutex<()>,
    threads: usize,
}

impl Models {
    async fn generator(&self, path: &Path) -> Result<Arc<LocalGenerator>, ModelError> {
        if let Some(g) = self.generators.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(g.clone());
        }
        let _one_at_a_time = self.loading.lock().await;
        if let Some(g) = self.generators.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(g.clone());
        }
        let (p, threads) = (path.to_path_buf(), self.threads);
        let loaded = tokio::task::spawn_blocking(move || LocalGenerator::load(&p, threads))
            .await
            .map_err(|e| ModelError::Setup(format!("loading the model failed: {e}")))??;
        let loaded = Arc::new(loaded);
        self.generators.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf(), loaded.clone());
        tracing::info!("loaded {}", path.display());
        Ok(loaded)
    }

    async fn embedder(&self, path: &Path) -> Result<Arc<LocalEmbedder>, ModelError> {
        if let Some(e) = self.embedders.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(e.clone());
        }
        let _one_at_a_time = self.loading.lock().await;
        if let Some(e) = self.embedders.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(e.clone());
        }
        let p = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || LocalEmbedder::load(&p))
            .await
            .map_err(|e| ModelError::Setup(format!("loading the embedder failed: {e}")))??;
        let loaded = Arc::new(loaded);
        self.embedders.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf(), loaded.clone());
        tracing::info!("loaded {}", path.display());
        Ok(loaded)
    }

    async fn run(&self, call: Call, cancel: Arc<AtomicBool>) -> Outcome {
        match call {
            Call::Complete { model, prompt } => {
                let generator = self.generator(Path::new(&model)).await?;
                let (c, timing) = generator.generate_until(&prompt, false, cancel).await?;
                Ok(Answer::Completion {
                    text: c.text,
                    prompt_tokens: c.usage.prompt_tokens,
                    completion_tokens: c.usage.completion_tokens,
                    latency_ms: c.usage.latency.as_secs_f64() * 1000.0,
                    cached_tokens: timing.cached_tokens as u64,
                    prefill_ms: timing.prefill.as_secs_f64() * 1000.0,
                    decode_ms: timing.decode.as_secs_f64() * 1000.0,
                })
            }
            Call::Choose { model, prompt, answers } => {
                let generator = self.generator(Path::new(&model)).await?;
                let (c, _) = generator.choose_until(&prompt, &answers, cancel).await?;
                Ok(Answer::Choice {
                    probabilities: c.probabilities,
                    mass: c.mass,
                    prompt_tokens: c.usage.prompt_tokens,
                    latency_ms: c.usage.latency.as_secs_f64() * 1000.0,
                })
            }
            Call::Embed { model, texts } => {
                let e = self.embedder(Path::new(&model)).await?.embed(&texts).await?;
                Ok(Answer::Embeddings {
                    vectors: e.vectors,
                    tokens: e.usage.prompt_tokens,
                    latency_ms: e.usage.latency.as_secs_f64() * 1000.0,
                })
            }
        }
    }
}

/// Ends this process once its parent (the supervisor) is gone, whatever
/// the other threads are doing.
fn follow_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::Builder::new()
        .name("lakelink-model-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if std::os::unix::process::parent_id() != parent {
                    tracing::warn!("the model supervisor is gone; the worker exits");
                    std::process::exit(3);
                }
            }
        })
        .expect("a thread starts");
}

/// Asks the kernel to end this process first when memory runs out, so an
/// oversized model never takes an executor with it.
fn volunteer_for_oom() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", b"1000") {
        tracing::debug!("cannot raise the worker's OOM score: {e}");
    }
}

/// Runs the worker for the supervisor listening at `socket`.
pub async fn run(socket: &Path, threads: usize) -> std::io::Result<()> {
    follow_parent();
    volunteer_for_oom();
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let stream = UnixStream::connect(socket).await?;
    let (mut reader, mut writer) = stream.into_split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<FromWorker>();
    // Chosen before any model loads, so that the supervisor reports them.
    let kernels = crate::cpu::load_kernels().map(|k| k.name).unwrap_or_else(|e| format!("none: {e}"));
    out.send(FromWorker::Hello { pid: std::process::id(), token, kernels }).ok();
    // Bare on purpose: the writer ends when the supervisor's channel closes.
    #[allow(clippy::disallowed_methods)]
    let sender = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if wire::write_frame(&mut writer, &message).await.is_err() {
                break;
            }
        }
    });

    let models = Arc::new(Models { threads: threads.max(1), ..Models::default() });
    // Every call is answered, a cancelled one too (once it has stopped): the
    // supervisor takes a call that never ends for a hung worker.
    let running: Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>> = Arc::default();
    while let Some(message) = wire::read_frame::<_, ToWorker>(&mut reader).await? {
        match message {
            ToWorker::Call { id, call } => {
                let cancel = Arc::new(AtomicBool::new(false));
                running.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
                let (models, out, running) = (models.clone(), out.clone(), running.clone());
                // Bare on purpose: a call ends by itself or at its cancel flag, and always answers.
                #[allow(clippy::disallowed_methods)]
                tokio::spawn(async move {
                    let outcome = models.run(call, cancel).await;
                    running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    out.send(FromWorker::Done { id, outcome }).ok();
                });
            }
            ToWorker::Cancel { id } => {
                // The model thread stops at the next token (or skips the
                // call if it has not started).
                if let Some(cancel) = running.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    drop(out);
    sender.abort();
    Ok(())
}
