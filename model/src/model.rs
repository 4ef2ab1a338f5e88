//! The model traits: a generative model answers a chat prompt, an embedder
//! turns texts into vectors. Both report what each call cost.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Tokens and time one model call took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub completion_tokens: u64,
    /// Wall time of the call.
    pub latency: Duration,
}

/// The temperature of sampled answers (`Prompt::sample`).
pub const SAMPLE_TEMPERATURE: f32 = 0.7;

/// A chat prompt: fixed instructions (the same for every call of a
/// function, so runtimes can keep them cached) and the call's own text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Instructions, identical across calls of one function and argument set.
    pub system: String,
    /// The rows of this call, fenced as data.
    pub user: String,
    /// The largest answer, in tokens.
    pub max_tokens: u32,
    /// `None`: greedy decoding (temperature 0, the default). `Some(seed)`:
    /// sample at temperature 0.7 with this seed, for a different candidate.
    pub sample: Option<u32>,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// What the call cost.
    pub usage: Usage,
    /// Which runtime computed it, and whether for this call alone.
    pub served: Served,
}

/// Where an answer was computed: the host's model process (`host:pid` of
/// its worker) for the local backend, nothing for an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// The model process that computed the answer (`host:pid`); empty when
    /// the model ran elsewhere (an endpoint) or in this process.
    pub by: String,
    /// Whether the answer was computed for an identical request of another
    /// caller (in flight at the same time, or answered moments before): this
    /// call cost the model nothing.
    pub shared: bool,
}

/// How likely each allowed answer is as the model's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// One probability per allowed answer, in order, summing to 1.
    pub probabilities: Vec<f64>,
    /// The probability the model gives the allowed answers together before
    /// normalizing (near 1: it would have answered one of them; near 0: it
    /// wanted to say something else).
    pub mass: f64,
    /// What the call cost.
    pub usage: Usage,
    /// Which runtime computed it.
    pub served: Served,
}

impl Choice {
    /// The most probable answer's index and probability.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.probabilities.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Vectors for a list of texts, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input text.
    pub vectors: Vec<Vec<f32>>,
    /// What the call cost.
    pub usage: Usage,
    /// Which runtime computed them.
    pub served: Served,
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ModelError {
    /// The model or its files are not usable (missing, corrupt, misconfigured).
    #[error("{0}")]
    Setup(String),
    /// The endpoint could not be reached or answered with an error after retries.
    #[error("{0}")]
    Endpoint(String),
    /// No answer within the configured time.
    #[error("{0}")]
    Timeout(String),
    /// The answer arrived but is not what the protocol promises.
    #[error("{0}")]
    Protocol(String),
    /// The host's model process failed while answering (a native fault, an
    /// out-of-memory kill, a hang); it has been restarted.
    #[error("{0}")]
    Process(String),
    /// The model cannot do what was asked (such as report probabilities).
    #[error("{0}")]
    Unsupported(String),
}

/// A generative model.
#[async_trait]
pub trait Generator: Send + Sync + std::fmt::Debug {
    /// A stable name for caches and the trail, such as `local:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`.
    fn id(&self) -> &str;
    /// `local` or `openai`.
    fn backend(&self) -> &'static str;
    /// Answers one prompt: greedily (temperature 0) unless the prompt asks for a sample.
    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ModelError>;
    /// The probability of each allowed answer (each given by its spellings,
    /// such as `yes`, `Yes`) as the reply to `prompt`. Runtimes that cannot
    /// tell fail with [`ModelError::Unsupported`]; callers then read a text answer.
    async fn choose(&self, prompt: &Prompt, answers: &[Vec<String>]) -> Result<Choice, ModelError> {
        let _ = (prompt, answers);
        Err(ModelError::Unsupported(format!("{} does not report answer probabilities", self.id())))
    }
}

/// A text embedder.
#[async_trait]
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// A stable name for caches and the trail.
    fn id(&self) -> &str;
    /// `local` or `openai`.
    fn backend(&self) -> &'static str;
    /// Embeds texts; every vector is L2-normalised.
    async fn embed(&self, texts: &[String]) -> Result<Embeddings, ModelError>;
}

/// Scales a vector to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
