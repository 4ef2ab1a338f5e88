//! The `openai` backend: any OpenAI-compatible chat-completions and
//! embeddings endpoint (OpenAI, llama.cpp's server, vLLM, Ollama, ...).
//!
//! One request is bounded by `timeout_ms` in all, retries included; 429,
//! 5xx and connection errors are retried with exponential backoff. The API
//! key is read from the environment variable `api_key_env` of this process
//! and never leaves it except in the request's `Authorization` header.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::config::LlmOptions;
use super::model::{Choice, Completion, Embedder, Embeddings, Generator, ModelError, Prompt, Served, Usage, normalize};

/// A client of one endpoint and model.
#[derive(Debug)]
pub struct OpenAi {
    id: String,
    base_url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    retries: u32,
    http: reqwest::Client,
    /// Set once the endpoint answered without usable log-probabilities.
    no_logprobs: std::sync::atomic::AtomicBool,
}

impl OpenAi {
    /// A client for the generative model of `options`.
    pub fn generator(options: &LlmOptions) -> Result<Self, ModelError> {
        Self::new(options, &options.model, "model")
    }

    /// A client for the embedding model of `options`.
    pub fn embedder(options: &LlmOptions) -> Result<Self, ModelError> {
        Self::new(options, &options.embedding_model, "embedding_model")
    }

    fn new(options: &LlmOptions, model: &str, key: &str) -> Result<Self, ModelError> {
        if model.is_empty() {
            return Err(ModelError::Setup(format!(
                "the openai backend needs a model name: SET lakelink.llm.{key} = '<model>' (or LAKELINK_LLM_{} in the environment)",
                key.to_ascii_uppercase()
            )));
        }
        // The key goes only to the endpoint this process is configured for: a
        // session that points base_url elsewhere gets no key.
        let configured = &super::config::process_defaults().base_url;
        let api_key = if &options.base_url == configured {
            std::env::var(&options.api_key_env).ok().filter(|k| !k.is_empty())
        } else {
            None
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(options.timeout_ms.min(10_000)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ModelError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            id: format!("openai:{model}@{}", options.base_url),
            base_url: options.base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key,
            timeout: Duration::from_millis(options.timeout_ms),
            retries: options.retries,
            http,
            no_logprobs: Default::default(),
        })
    }

    /// POSTs `body` to `path`, retrying transient failures within the time limit.
    async fn post(&self, path: &str, body: &Value) -> Result<(Value, Duration), ModelError> {
        let url = format!("{}/{path}", self.base_url);
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out(&url));
            }
            let mut request = self.http.post(&url).json(body).timeout(left);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let text = response.text().await.map_err(|e| self.transport(&url, e))?;
                        let value: Value = serde_json::from_str(&text).map_err(|e| {
                            ModelError::Protocol(format!("{url} answered with something that is not JSON: {e}"))
                        })?;
                        return Ok((value, start.elapsed()));
                    }
                    let text = response.text().await.unwrap_or_default();
                    let error = ModelError::Endpoint(format!("{url} answered HTTP {status}: {}", truncate(&text, 300)));
                    // Only 429 and 5xx are worth retrying; otherwise the request itself is wrong.
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        return Err(error);
                    }
                    error
                }
                Err(e) if e.is_timeout() => return Err(self.timed_out(&url)),
                Err(e) => self.transport(&url, e),
            };
            attempt += 1;
            let backoff = Duration::from_millis(100u64 << (attempt - 1).min(6));
            if attempt > self.retries || backoff >= deadline.saturating_duration_since(Instant::now()) {
                return Err(failure);
            }
            tracing::debug!("retrying {url} in {backoff:?} (attempt {attempt})");
            tokio::time::sleep(backoff).await;
        }
    }

    fn timed_out(&self, url: &str) -> ModelError {
        ModelError::Timeout(format!(
            "{url} gave no answer within {} ms (lakelink.llm.timeout_ms)",
            self.timeout.as_millis()
        ))
    }

    fn transport(&self, url: &str, e: reqwest::Error) -> ModelError {
        let mut source: &dyn std::error::Error = &e;
        let mut text = e.to_string();
        while let Some(next) = source.source() {
            text = format!("{text}: {next}");
            source = next;
        }
        ModelError::Endpoint(format!("cannot reach {url}: {text}"))
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn usage(value: &Value, latency: Duration) -> Usage {
    let n = |k: &str| value.get("usage").and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Usage { prompt_tokens: n("prompt_tokens"), completion_tokens: n("completion_tokens"), latency }
}

#[async_trait]
impl Generator for OpenAi {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, prompt: &Prompt) -> Result<Completion, ModelError> {
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": 0,
            "max_tokens": prompt.max_tokens,
        });
        if let Some(seed) = prompt.sample {
            body["temperature"] = json!(super::model::SAMPLE_TEMPERATURE);
            body["seed"] = json!(seed);
        }
        let (value, latency) = self.post("chat/completions", &body).await?;
        let text = value
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ModelError::Protocol(format!(
                    "{}/chat/completions answered without choices[0].message.content: {}",
                    self.base_url,
                    truncate(&value.to_string(), 200)
                ))
            })?
            .to_string();
        Ok(Completion { text, usage: usage(&value, latency), served: Served::default() })
    }

    /// Reads the probabilities of the reply's first token (`logprobs`, top
    /// 20): each candidate token counts for the one answer whose spelling
    /// starts with it (or that it starts with); a token that fits several
    /// answers counts for none. An endpoint without log-probabilities, or
    /// whose candidates fit no answer, is reported as unsupported (once:
    /// later calls do not ask again).
    async fn choose(&self, prompt: &Prompt, answers: &[Vec<String>]) -> Result<Choice, ModelError> {
        let unsupported = || ModelError::Unsupported(format!("{} reports no usable answer probabilities", self.id));
        if self.no_logprobs.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(unsupported());
        }
        let body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": true,
            "top_logprobs": 20,
        });
        let (value, latency) = self.post("chat/completions", &body).await?;
        let candidates = value.pointer("/choices/0/logprobs/content/0/top_logprobs").and_then(Value::as_array);
        let mut totals = vec![0.0f64; answers.len()];
        for candidate in candidates.into_iter().flatten() {
            let (Some(token), Some(logprob)) =
                (candidate.get("token").and_then(Value::as_str), candidate.get("logprob").and_then(Value::as_f64))
            else {
                continue;
            };
            let token = token.trim().to_lowercase();
            if token.is_empty() {
                continue;
            }
            let fits: Vec<usize> = answers
                .iter()
                .enumerate()
                .filter(|(_, forms)| {
                    forms.iter().any(|f| {
                        let f = f.to_lowercase();
                        f.starts_with(&token) || token.starts_with(&f)
                    })
                })
                .map(|(i, _)| i)
                .collect();
            if let [only] = fits[..] {
                totals[only] += logprob.exp();
            }
        }
        let mass: f64 = totals.iter().sum();
        if mass <= 0.0 {
            self.no_logprobs.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(unsupported());
        }
        Ok(Choice {
            probabilities: totals.iter().map(|t| t / mass).collect(),
            mass,
            usage: usage(&value, latency),
            served: Served::default(),
        })
    }
}

#[async_trait]
impl Embedder for OpenAi {
    fn id(&self) -> &str {
        &self.id
    }

    fn backend(&self) -> &'static str {
        "openai"
    }

    async fn embed(&self, texts: &[String]) -> Result<Embeddings, ModelError> {
        let body = json!({"model": self.model, "input": texts});
        let (value, latency) = self.post("embeddings", &body).await?;
        let bad = |why: &str| ModelError::Protocol(format!("{}/embeddings answered {why}", self.base_url));
        let data = value.get("data").and_then(Value::as_array).ok_or_else(|| bad("without a data list"))?;
        if data.len() != texts.len() {
            return Err(bad(&format!("{} vectors for {} inputs", data.len(), texts.len())));
        }
        let mut vectors = vec![Vec::new(); texts.len()];
        for (i, item) in data.iter().enumerate() {
            let index = item.get("index").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(i);
            let slot = vectors.get_mut(index).ok_or_else(|| bad(&format!("index {index} out of range")))?;
            let mut v: Vec<f32> = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("an item without an embedding"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("an embedding with a value that is not a number"))?;
            normalize(&mut v);
            *slot = v;
        }
        Ok(Embeddings { vectors, usage: usage(&value, latency), served: Served::default() })
    }
}
