//! The `local` backend: a GGUF generative model run by llama.cpp on this
//! machine's CPU, and a BERT-style sentence embedder (all-MiniLM-L6-v2 by
//! default) run by candle. Nothing leaves the machine.
//!
//! The generative model runs on one worker thread that owns the llama.cpp
//! context. It keeps the tokens of the last prompt in the KV cache and only
//! computes what differs, so the fixed instructions that open every prompt
//! of a function are computed once, not per call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::config::{DEFAULT_EMBEDDER_DIR, DEFAULT_EMBEDDER_SHA256, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256};
use super::model::{
    Choice, Completion, Embedder, Embeddings, Generator, ModelError, Prompt, SAMPLE_TEMPERATURE, Served, Usage,
    normalize,
};

const FETCH_HINT: &str = "run scripts/fetch-models.sh to fetch the default models";
/// Tokens of context of the local model.
const CONTEXT_TOKENS: u32 = 4096;
/// Tokens decoded per llama.cpp batch while reading a prompt.
const PREFILL_BATCH: usize = 512;

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Checks that a model file exists and, for the default models, that its
/// sha256 is the published one.
fn check_file(path: &Path, default_name: &str, sha256: &str, what: &str) -> Result<(), ModelError> {
    if !path.exists() {
        return Err(ModelError::Setup(format!(
            "{what} {} not found: {FETCH_HINT}, or name another file with lakelink.llm.{}",
            path.display(),
            if what.contains("embed") { "embedding_model" } else { "model" }
        )));
    }
    let is_default = path.file_name().and_then(|n| n.to_str()) == Some(default_name)
        || path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()) == Some(default_name);
    if is_default {
        let actual =
            sha256_file(path).map_err(|e| ModelError::Setup(format!("cannot read {}: {e}", path.display())))?;
        if actual != sha256 {
            return Err(ModelError::Setup(format!(
                "{what} {} is corrupt (sha256 {actual}, expected {sha256}): delete it and {FETCH_HINT}",
                path.display()
            )));
        }
    }
    Ok(())
}

fn backend() -> Result<&'static LlamaBackend, ModelError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let enabled = std::env::var_os("LAKELINK_LLAMA_LOGS").is_some();
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(enabled));
            let kernels = crate::cpu::load_kernels()?;
            tracing::info!(kernels = %kernels.name, path = %kernels.path.display(), "llama.cpp CPU kernels loaded");
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ModelError::Setup(format!("cannot start llama.cpp: {e}")))
}

/// How long the two phases of one local generation took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Prompt tokens computed (the cached prefix excluded).
    pub prefill_tokens: usize,
    /// Time spent on them.
    pub prefill: Duration,
    /// Tokens generated.
    pub decode_tokens: usize,
    /// Time spent generating them.
    pub decode: Duration,
    /// Prompt tokens served from the cached prefix.
    pub cached_tokens: usize,
}

/// What a job computes after reading its prompt.
enum Work {
    /// An answer, token by token.
    Generate(oneshot::Sender<Result<(Completion, Timing), ModelError>>),
    /// The probability of each allowed answer (each given by its spellings).
    Choose(Vec<Vec<String>>, oneshot::Sender<Result<(Choice, Timing), ModelError>>),
}

struct Job {
    prompt: Prompt,
    /// Start from an empty cache (benchmarks measure a cold prompt).
    fresh: bool,
    cancel: Arc<AtomicBool>,
    work: Work,
}

/// A GGUF model on the CPU.
#[derive(Debug)]
pub struct LocalGenerator {
    id: String,
    jobs: mpsc::Sender<Job>,
}

/// Sets the flag when the waiting side goes away (query cancelled, timed out).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl LocalGenerator {
    /// Loads the GGUF file at `path` and starts its worker thread.
    pub fn load(path: &Path, threads: usize) -> Result<Self, ModelError> {
        check_file(path, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, "local model file")?;
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
            ModelError::Setup(format!("cannot load {} as a GGUF model: {e}; {FETCH_HINT}", path.display()))
        })?;
        // The model lives as long as the process: every context borrows it.
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|e| ModelError::Setup(format!("{}: no usable chat template: {e}", path.display())))?;
        let threads = threads.max(1) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(CONTEXT_TOKENS))
            .with_n_batch(PREFILL_BATCH as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| ModelError::Setup(format!("cannot create a llama.cpp context: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        std::thread::Builder::new()
            .name(format!("lakelink-model-{name}"))
            .spawn(move || Worker { model, ctx, template, cached: Vec::new() }.run(rx))
            .map_err(|e| ModelError::Setup(format!("cannot start the model thread: {e}")))?;
        Ok(Self { id: format!("local:{name}"), jobs: tx })
    }

    /// Runs one prompt and reports the two phases' timings; `fresh` computes
    /// the whole prompt (no cached prefix).
    pub async fn generate(&self, prompt: &Prompt, fresh: bool) -> Result<(Completion, Timing), ModelError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancel.clone());
        self.generate_until(prompt, fresh, cancel).await
    }

    /// [`Self::generate`], stopped at the next token once `cancel` is set
    /// (the call then fails as cancelled).
    pub async fn generate_until(
        &self,
        prompt: &Prompt,
        fresh: bool,
        cancel: Arc<AtomicBool>,
    ) -> Result<(Completion, Timing), ModelError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { prompt: prompt.clone(), fresh, cancel, work: Work::Generate(reply) };
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The probability of each of `answers` (each given by its spellings) as
    /// the reply to `prompt`, stopped once `cancel` is set.
    pub async fn choose_until(
        &self,
        prompt: &Prompt,
        answers: &[Vec<String>],
        cancel: Arc<AtomicBool>,
    ) -> Result<(Choice, Timing), ModelError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { prompt: prompt.clone(), fresh: false, cancel, work: Work::Choose(answers.to_vec(), reply) };
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ModelError {
    ModelError::Setup("the local model thread stopped".into())
}

#[async_trait]
impl Generator for LocalGenerator {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ModelError> {
        Ok(self.generate(prompt, false).await?.0)
    }

    async fn choose(&self, prompt: &Prompt, answers: &[Vec<String>]) -> Result<Choice, ModelError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancel.clone());
        Ok(self.choose_until(prompt, answers, cancel).await?.0)
    }
}

struct Worker {
    model: &'static LlamaModel,
    ctx: LlamaContext<'static>,
    template: LlamaChatTemplate,
    /// Tokens whose keys and values are in the context's cache, in order.
    cached: Vec<LlamaToken>,
}

impl Worker {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            if job.cancel.load(Ordering::Relaxed) {
                continue;
            }
            let failed = match job.work {
                Work::Generate(reply) => {
                    let result = self.generate(&job.prompt, job.fresh, &job.cancel);
                    let failed = result.is_err();
                    let _ = reply.send(result);
                    failed
                }
                Work::Choose(answers, reply) => {
                    let result = self.choose(&job.prompt, &answers, &job.cancel);
                    let failed = result.is_err();
                    let _ = reply.send(result);
                    failed
                }
            };
            if failed {
                // Leave no half-written state behind.
                self.ctx.clear_kv_cache();
                self.cached.clear();
            }
        }
    }

    fn chat_text(&self, prompt: &Prompt) -> Result<String, ModelError> {
        let messages = [("system", &prompt.system), ("user", &prompt.user)]
            .into_iter()
            .map(|(role, text)| LlamaChatMessage::new(role.into(), text.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Protocol(format!("the prompt cannot be sent to the local model: {e}")))?;
        self.model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|e| ModelError::Protocol(format!("cannot apply the model's chat template: {e}")))
    }

    /// Reads the prompt into the KV cache, reusing the prefix it shares with
    /// the previous prompt; the logits of its last token are then at the
    /// returned batch index.
    fn prefill(
        &mut self,
        prompt: &Prompt,
        answer_tokens: u32,
        fresh: bool,
        cancel: &AtomicBool,
    ) -> Result<(usize, i32, Timing), ModelError> {
        let start = Instant::now();
        let text = self.chat_text(prompt)?;
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(text.as_bytes(), true, true);
        let limit = CONTEXT_TOKENS as usize - answer_tokens as usize;
        if tokens.len() > limit {
            return Err(ModelError::Protocol(format!(
                "the prompt is {} tokens, more than the local model's {limit} (context {CONTEXT_TOKENS} minus {answer_tokens} for the answer)",
                tokens.len(),
            )));
        }
        if fresh {
            self.ctx.clear_kv_cache();
            self.cached.clear();
        }
        // Reuse the cached prefix; at least the last prompt token is computed
        // again so that its logits are available.
        let mut common = self.cached.iter().zip(&tokens).take_while(|(a, b)| a == b).count();
        common = common.min(tokens.len() - 1);
        let _ = self.ctx.clear_kv_cache_seq(Some(0), Some(common as u32), None);
        self.cached.truncate(common);

        let mut timing = Timing { cached_tokens: common, ..Timing::default() };
        let mut batch = LlamaBatch::new(PREFILL_BATCH, 1);
        let rest = &tokens[common..];
        for (chunk_index, chunk) in rest.chunks(PREFILL_BATCH).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(ModelError::Timeout("cancelled".into()));
            }
            batch.clear();
            let base = common + chunk_index * PREFILL_BATCH;
            for (i, token) in chunk.iter().enumerate() {
                let pos = base + i;
                batch.add(*token, pos as i32, &[0], pos == tokens.len() - 1).map_err(batch_error)?;
            }
            self.ctx.decode(&mut batch).map_err(decode_error)?;
            self.cached.extend_from_slice(chunk);
        }
        timing.prefill_tokens = rest.len();
        timing.prefill = start.elapsed();
        Ok((tokens.len(), batch.n_tokens() - 1, timing))
    }

    fn generate(
        &mut self,
        prompt: &Prompt,
        fresh: bool,
        cancel: &AtomicBool,
    ) -> Result<(Completion, Timing), ModelError> {
        let start = Instant::now();
        let (prompt_tokens, mut last_index, mut timing) = self.prefill(prompt, prompt.max_tokens, fresh, cancel)?;
        let vocab = self.model.vocab();
        let mut batch = LlamaBatch::new(PREFILL_BATCH, 1);
        let decode_start = Instant::now();
        let mut sampler = match prompt.sample {
            None => LlamaSampler::greedy(),
            Some(seed) => LlamaSampler::chain_simple([
                LlamaSampler::top_k(40),
                LlamaSampler::temp(SAMPLE_TEMPERATURE),
                LlamaSampler::dist(seed),
            ]),
        };
        let mut answer = Vec::<u8>::new();
        for _ in 0..prompt.max_tokens {
            if cancel.load(Ordering::Relaxed) {
                return Err(ModelError::Timeout("cancelled".into()));
            }
            let token = sampler.sample(&self.ctx, last_index);
            sampler.accept(token);
            if vocab.is_eog(token) {
                break;
            }
            answer.extend(vocab.token_to_piece(token, false, None));
            timing.decode_tokens += 1;
            batch.clear();
            let pos = self.cached.len();
            batch.add(token, pos as i32, &[0], true).map_err(batch_error)?;
            self.ctx.decode(&mut batch).map_err(decode_error)?;
            self.cached.push(token);
            last_index = 0;
        }
        timing.decode = decode_start.elapsed();
        let usage = Usage {
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: timing.decode_tokens as u64,
            latency: start.elapsed(),
        };
        Ok((
            Completion { text: String::from_utf8_lossy(&answer).into_owned(), usage, served: Served::default() },
            timing,
        ))
    }

    /// The probability of each answer as the reply: the sum over its
    /// spellings of the probability of their tokens, one after the other,
    /// right after the prompt; normalized over the answers.
    fn choose(
        &mut self,
        prompt: &Prompt,
        answers: &[Vec<String>],
        cancel: &AtomicBool,
    ) -> Result<(Choice, Timing), ModelError> {
        let start = Instant::now();
        let vocab = self.model.vocab();
        let spellings: Vec<Vec<Vec<LlamaToken>>> = answers
            .iter()
            .map(|forms| {
                forms.iter().map(|f| vocab.tokenize(f.as_bytes(), false, false)).filter(|t| !t.is_empty()).collect()
            })
            .collect();
        let longest = spellings.iter().flatten().map(Vec::len).max().unwrap_or(1);
        let (prompt_tokens, last_index, mut timing) = self.prefill(prompt, longest as u32, false, cancel)?;
        let decode_start = Instant::now();
        // Every spelling's first token, read before any spelling is decoded.
        let firsts: Vec<Vec<f64>> = {
            let next = Next::of(self.ctx.get_logits_ith(last_index));
            spellings.iter().map(|forms| forms.iter().map(|t| next.log_prob(t[0])).collect()).collect()
        };
        let base = self.cached.len();
        let mut batch = LlamaBatch::new(longest.max(1), 1);
        let mut scored = 0usize;
        let mut totals = Vec::with_capacity(answers.len());
        for (forms, firsts) in spellings.iter().zip(&firsts) {
            let mut total = 0.0f64;
            for (tokens, first) in forms.iter().zip(firsts) {
                if cancel.load(Ordering::Relaxed) {
                    return Err(ModelError::Timeout("cancelled".into()));
                }
                let mut logp = *first;
                if tokens.len() > 1 {
                    batch.clear();
                    for (i, t) in tokens[..tokens.len() - 1].iter().enumerate() {
                        batch.add(*t, (base + i) as i32, &[0], true).map_err(batch_error)?;
                    }
                    self.ctx.decode(&mut batch).map_err(decode_error)?;
                    for (i, next) in tokens[1..].iter().enumerate() {
                        logp += Next::of(self.ctx.get_logits_ith(i as i32)).log_prob(*next);
                    }
                    scored += tokens.len() - 1;
                    // The prompt stays cached; the spelling's tokens go.
                    let _ = self.ctx.clear_kv_cache_seq(Some(0), Some(base as u32), None);
                }
                total += logp.exp();
            }
            totals.push(total);
        }
        timing.decode_tokens = scored;
        timing.decode = decode_start.elapsed();
        let mass: f64 = totals.iter().sum();
        let probabilities =
            totals.iter().map(|t| if mass > 0.0 { t / mass } else { 1.0 / totals.len().max(1) as f64 }).collect();
        let usage = Usage { prompt_tokens: prompt_tokens as u64, completion_tokens: 1, latency: start.elapsed() };
        Ok((Choice { probabilities, mass, usage, served: Served::default() }, timing))
    }
}

/// The distribution of the next token, from its logits.
struct Next<'a> {
    logits: &'a [f32],
    log_sum: f64,
}

impl<'a> Next<'a> {
    fn of(logits: &'a [f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
        Self { logits, log_sum: f64::from(max) + sum.ln() }
    }

    /// The log-probability of `token`.
    fn log_prob(&self, token: LlamaToken) -> f64 {
        self.logits.get(token.0 as usize).map_or(f64::NEG_INFINITY, |l| f64::from(*l) - self.log_sum)
    }
}

fn batch_error(e: llama_cpp_2::llama_batch::BatchAddError) -> ModelError {
    ModelError::Protocol(format!("llama.cpp batch: {e}"))
}

fn decode_error(e: llama_cpp_2::DecodeError) -> ModelError {
    ModelError::Protocol(format!("llama.cpp decode failed: {e}"))
}

/// A BERT-style sentence embedder (mean pooling, unit length) on the CPU.
pub struct LocalEmbedder {
    id: String,
    model: Arc<Mutex<(BertModel, tokenizers::Tokenizer)>>,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder").field("id", &self.id).finish()
    }
}

/// Longest input of the embedder, in tokens; longer texts are truncated.
const EMBED_MAX_TOKENS: usize = 256;

impl LocalEmbedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let weights = file("model.safetensors");
        check_file(&weights, DEFAULT_EMBEDDER_DIR, DEFAULT_EMBEDDER_SHA256, "local embedding model")?;
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            ModelError::Setup(format!("cannot load the embedder in {}: {what}: {e}", dir.display()))
        };
        let config: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(file("config.json")).map_err(|e| setup("config.json", &e))?)
                .map_err(|e| setup("config.json", &e))?;
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(file("tokenizer.json")).map_err(|e| setup("tokenizer.json", &e))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: EMBED_MAX_TOKENS, ..Default::default() }))
            .map_err(|e| setup("tokenizer.json", &e))?;
        tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
        let bytes = std::fs::read(&weights).map_err(|e| setup("model.safetensors", &e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(|e| setup("model.safetensors", &e))?;
        let model = BertModel::load(vb, &config).map_err(|e| setup("model.safetensors", &e))?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { id: format!("local:{name}"), model: Arc::new(Mutex::new((model, tokenizer))) })
    }

    fn embed_blocking(model: &(BertModel, tokenizers::Tokenizer), texts: &[String]) -> Result<Embeddings, ModelError> {
        let start = Instant::now();
        let (bert, tokenizer) = model;
        let fail = |e: &dyn std::fmt::Display| ModelError::Protocol(format!("local embedder failed: {e}"));
        let encodings = tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| fail(&e))?;
        let ids: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &Device::Cpu))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(&e))?;
        let masks: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &Device::Cpu))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(&e))?;
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::stack(&ids, 0)?;
            let mask = Tensor::stack(&masks, 0)?;
            let types = ids.zeros_like()?;
            let hidden = bert.forward(&ids, &types, Some(&mask))?;
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            summed.broadcast_div(&counts)?.to_vec2::<f32>()
        };
        let mut vectors = run().map_err(|e| fail(&e))?;
        vectors.iter_mut().for_each(|v| normalize(v));
        let tokens: usize = encodings.iter().map(|e| e.get_attention_mask().iter().filter(|m| **m == 1).count()).sum();
        Ok(Embeddings {
            vectors,
            usage: Usage { prompt_tokens: tokens as u64, completion_tokens: 0, latency: start.elapsed() },
            served: Served::default(),
        })
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    async fn embed(&self, texts: &[String]) -> Result<Embeddings, ModelError> {
        let model = self.model.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || {
            let model = model.lock().map_err(|_| ModelError::Setup("the local embedder failed earlier".into()))?;
            Self::embed_blocking(&model, &texts)
        })
        .await
        .map_err(|e| ModelError::Setup(format!("the local embedder stopped: {e}")))?
    }
}
