//! The models of this process: one client per configuration, shared by
//! every query, with one request limiter per model. The local backend's
//! models are clients of the host's model process ([`crate::process`])
//! unless `model_process` is off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;

use crate::config::{Backend, LlmOptions};
use crate::local::{LocalEmbedder, LocalGenerator};
use crate::model::{Embedder, Generator, ModelError};
use crate::openai::OpenAi;
use crate::process::client::{ModelProcess, ProcessEmbedder, ProcessGenerator};

#[derive(Default)]
struct Hub {
    generators: HashMap<String, Arc<dyn Generator>>,
    embedders: HashMap<String, Arc<dyn Embedder>>,
    limiters: HashMap<(String, usize), Arc<Semaphore>>,
}

fn hub() -> &'static Mutex<Hub> {
    static HUB: OnceLock<Mutex<Hub>> = OnceLock::new();
    HUB.get_or_init(Default::default)
}

/// Everything that makes two configurations load different clients.
fn generator_key(o: &LlmOptions) -> String {
    match o.backend {
        Backend::Local => format!("local|{}|{}|{}|{}", o.model_path().display(), o.threads, o.model_process, o.cache),
        Backend::OpenAi => {
            format!("openai|{}|{}|{}|{}|{}", o.base_url, o.model, o.api_key_env, o.timeout_ms, o.retries)
        }
    }
}

fn embedder_key(o: &LlmOptions) -> String {
    match o.backend {
        Backend::Local => {
            format!("local|{}|{}|{}|{}", o.embedder_path().display(), o.threads, o.model_process, o.cache)
        }
        Backend::OpenAi => {
            format!("openai|{}|{}|{}|{}|{}", o.base_url, o.embedding_model, o.api_key_env, o.timeout_ms, o.retries)
        }
    }
}

/// Loads under the hub's lock on a blocking thread (a local model takes a
/// second or two), so a model is never loaded twice.
async fn load<T: ?Sized + Send + Sync + 'static>(
    key: String,
    pick: fn(&mut Hub) -> &mut HashMap<String, Arc<T>>,
    make: impl FnOnce() -> Result<Arc<T>, ModelError> + Send + 'static,
) -> Result<Arc<T>, ModelError> {
    if let Some(found) = pick(&mut hub().lock().unwrap_or_else(|e| e.into_inner())).get(&key) {
        return Ok(found.clone());
    }
    tokio::task::spawn_blocking(move || {
        let mut hub = hub().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = pick(&mut hub).get(&key) {
            return Ok(found.clone());
        }
        let made = make()?;
        pick(&mut hub).insert(key, made.clone());
        Ok(made)
    })
    .await
    .map_err(|e| ModelError::Setup(format!("loading the model failed: {e}")))?
}

/// The generative model `options` name.
pub async fn generator(options: &LlmOptions) -> Result<Arc<dyn Generator>, ModelError> {
    let o = options.clone();
    load(
        generator_key(options),
        |h| &mut h.generators,
        move || {
            Ok(match o.backend {
                Backend::Local if o.model_process => {
                    Arc::new(ProcessGenerator::new(ModelProcess::for_threads(o.threads)?, &o.model_path(), o.cache))
                        as Arc<dyn Generator>
                }
                Backend::Local => Arc::new(LocalGenerator::load(&o.model_path(), o.threads)?),
                Backend::OpenAi => Arc::new(OpenAi::generator(&o)?),
            })
        },
    )
    .await
}

/// The embedder `options` name.
pub async fn embedder(options: &LlmOptions) -> Result<Arc<dyn Embedder>, ModelError> {
    let o = options.clone();
    load(
        embedder_key(options),
        |h| &mut h.embedders,
        move || {
            Ok(match o.backend {
                Backend::Local if o.model_process => {
                    Arc::new(ProcessEmbedder::new(ModelProcess::for_threads(o.threads)?, &o.embedder_path(), o.cache))
                        as Arc<dyn Embedder>
                }
                Backend::Local => Arc::new(LocalEmbedder::load(&o.embedder_path())?),
                Backend::OpenAi => Arc::new(OpenAi::embedder(&o)?),
            })
        },
    )
    .await
}

/// The limiter of requests in flight to the model `id`.
pub fn limiter(id: &str, concurrency: usize) -> Arc<Semaphore> {
    let mut hub = hub().lock().unwrap_or_else(|e| e.into_inner());
    hub.limiters.entry((id.to_string(), concurrency)).or_insert_with(|| Arc::new(Semaphore::new(concurrency))).clone()
}
