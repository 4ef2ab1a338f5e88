//! Model settings: process defaults (config file and environment) and the
//! session options `lakelink.llm.*` that travel with every query.
//!
//! The scheduler builds each session from its own process defaults and the
//! client's `SET lakelink.llm.<key> = <value>` statements; Ballista sends the
//! resulting key/value pairs with every task, so executors run a query with
//! the scheduler's settings. Secrets never travel: `api_key_env` names an
//! environment variable that each process reads for itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A GGUF model on this machine's CPU (llama.cpp) and a local sentence embedder.
    Local,
    /// Any OpenAI-compatible chat-completions and embeddings endpoint.
    OpenAi,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::OpenAi => "openai",
        })
    }
}

/// What a function returns for rows whose model answer could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail the query with the reason (the default).
    Fail,
    /// Return NULL for those rows and go on.
    Null,
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::Fail => "fail",
            OnError::Null => "null",
        })
    }
}

/// The file name of the default generative model in the models folder.
pub const DEFAULT_MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// The sha256 of [`DEFAULT_MODEL_FILE`].
pub const DEFAULT_MODEL_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
/// The folder name of the default embedder in the models folder.
pub const DEFAULT_EMBEDDER_DIR: &str = "all-minilm-l6-v2";
/// The sha256 of the default embedder's `model.safetensors`.
pub const DEFAULT_EMBEDDER_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// The model settings of a session: `lakelink.llm.<key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmOptions {
    /// `local` (default) or `openai`.
    pub backend: Backend,
    /// Generative model: a GGUF file (absolute, or relative to `models_dir`)
    /// for `local`, a model name for `openai`. Empty: the default model.
    pub model: String,
    /// Embedding model: a folder with `model.safetensors`, `config.json` and
    /// `tokenizer.json` for `local`, a model name for `openai`. Empty: the default.
    pub embedding_model: String,
    /// The OpenAI-compatible base URL, such as `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// The environment variable holding the API key (read by each process).
    pub api_key_env: String,
    /// Where the default local models live (filled by `scripts/fetch-models.sh`).
    pub models_dir: String,
    /// Time limit of one model request, in milliseconds.
    pub timeout_ms: u64,
    /// Retries of a request that failed with 429, 5xx or a connection error.
    pub retries: u32,
    /// Model requests in flight at once, per process.
    pub concurrency: usize,
    /// Rows sent in one request, for functions that allow several; 0 (the
    /// default) picks 1 for the local backend, whose prompt cache makes
    /// single rows the fastest and most accurate, and 8 for `openai`.
    pub batch_size: usize,
    /// The largest answer of one request, in tokens.
    pub max_output_tokens: u32,
    /// `fail` (default) or `null`: what an unusable answer does.
    pub on_error: OnError,
    /// Budget: model requests one query may make (per process).
    pub max_calls: u64,
    /// Budget: prompt plus completion tokens one query may spend (per process).
    pub max_tokens: u64,
    /// Whether answers are cached on disk across queries.
    pub cache: bool,
    /// The answer cache folder.
    pub cache_dir: String,
    /// The folder where every process appends its model-call trail.
    pub trail_dir: String,
    /// Threads of the local model.
    pub threads: usize,
    /// Whether the local models run in the host's model process (the
    /// default) or inside this process (a native fault in a model then ends
    /// this process; for measurements and debugging only).
    pub model_process: bool,
    /// Dimensions of `llm_embed`'s vectors (384 for the default embedder).
    pub embedding_dim: usize,
    /// Whether client sessions may point `base_url` at another endpoint
    /// (off by default: the scheduler's executors would send requests, with
    /// row data, wherever a client says).
    pub allow_session_endpoints: bool,
    /// Set by the scheduler for each query; names the query in the trail and
    /// scopes dedupe and budgets.
    pub query_id: String,
    /// NL compiler: attempts per question (the first plus repairs).
    pub nl_attempts: u32,
    /// NL compiler: `pipeline` (retrieval, hints, repair; the default) or
    /// `plain` (the whole schema, one attempt).
    pub nl_strategy: String,
    /// NL compiler ensemble: models tried in order until one succeeds
    /// (comma-separated; empty: `model` alone).
    pub nl_models: String,
    /// NL compiler: candidates voted by their results (1: no vote).
    pub nl_vote: u32,
    /// NL compiler: most tables put in one prompt.
    pub nl_max_tables: usize,
    /// NL compiler: tables generated SQL may read (comma-separated; empty: every lake table).
    pub nl_tables: String,
    /// NL compiler: whether generated SQL may read `system` and `information_schema` tables.
    pub nl_system_tables: bool,
}

/// The keys a user may set, with their descriptions.
pub const KEYS: &[(&str, &str)] = &[
    ("backend", "Where the model runs: local (GGUF on this CPU) or openai (an OpenAI-compatible endpoint)"),
    ("model", "Generative model: a GGUF file for local, a model name for openai; empty for the default"),
    ("embedding_model", "Embedding model: a folder for local, a model name for openai; empty for the default"),
    ("base_url", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1"),
    ("api_key_env", "Environment variable holding the API key (never sent to other processes)"),
    ("models_dir", "Folder of the default local models"),
    ("timeout_ms", "Time limit of one model request in milliseconds"),
    ("retries", "Retries of a request failing with 429, 5xx or a connection error"),
    ("concurrency", "Model requests in flight at once, per process"),
    ("batch_size", "Rows sent in one request where the function allows several; 0: 1 for local, 8 for openai"),
    ("max_output_tokens", "Largest answer of one request, in tokens"),
    ("on_error", "What an unusable model answer does: fail (the query fails) or null"),
    ("max_calls", "Budget: model requests one query may make, per process"),
    ("max_tokens", "Budget: tokens one query may spend, per process"),
    ("cache", "Cache answers on disk across queries: true or false"),
    ("cache_dir", "Answer cache folder"),
    ("trail_dir", "Folder of the model-call trail read by system.model_calls"),
    ("threads", "CPU threads of the local model"),
    (
        "model_process",
        "Run the local models in the host's model process (true) or in each process (false; a fault there ends the process)",
    ),
    ("embedding_dim", "Dimensions of llm_embed vectors"),
    ("allow_session_endpoints", "Whether sessions may SET base_url: true or false"),
    ("query_id", "Set by the scheduler for each query"),
    ("nl_attempts", "NL compiler: attempts per question, the first plus repairs"),
    ("nl_strategy", "NL compiler: pipeline (retrieval, hints, repair) or plain (whole schema, one attempt)"),
    ("nl_models", "NL compiler: models tried in order until one succeeds, comma-separated; empty: model"),
    ("nl_vote", "NL compiler: candidates voted by their results; 1: no vote"),
    ("nl_max_tables", "NL compiler: most tables in one prompt"),
    ("nl_tables", "NL compiler: tables generated SQL may read, comma-separated; empty: every lake table"),
    ("nl_system_tables", "NL compiler: whether generated SQL may read system and information_schema: true or false"),
];

fn home_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAKELINK_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("lakelink")
}

impl Default for LlmOptions {
    fn default() -> Self {
        let cache = home_cache();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8);
        Self {
            backend: Backend::Local,
            model: String::new(),
            embedding_model: String::new(),
            base_url: "http://127.0.0.1:8080/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            models_dir: cache.join("models").display().to_string(),
            timeout_ms: 60_000,
            retries: 3,
            concurrency: 8,
            batch_size: 0,
            max_output_tokens: 256,
            on_error: OnError::Fail,
            max_calls: 10_000,
            max_tokens: 5_000_000,
            cache: true,
            cache_dir: cache.join("llm-cache").display().to_string(),
            trail_dir: cache.join("trail").display().to_string(),
            threads,
            model_process: true,
            embedding_dim: 384,
            allow_session_endpoints: false,
            query_id: String::new(),
            nl_attempts: 3,
            nl_strategy: "pipeline".into(),
            nl_models: String::new(),
            nl_vote: 1,
            nl_max_tables: 5,
            nl_tables: String::new(),
            nl_system_tables: false,
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T> {
    value.trim().parse::<T>().map_err(|_| invalid(key, value, what))
}

fn invalid(key: &str, value: &str, what: &str) -> DataFusionError {
    DataFusionError::Configuration(format!("lakelink.llm.{key} = '{value}' is not valid: expected {what}"))
}

fn positive(key: &str, value: &str) -> Result<u64> {
    match parse::<u64>(key, value, "a positive whole number")? {
        0 => Err(invalid(key, value, "a positive whole number")),
        n => Ok(n),
    }
}

impl LlmOptions {
    /// Sets one key (without the `lakelink.llm.` prefix), checking the value.
    pub fn set_key(&mut self, key: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match key {
            "backend" => {
                self.backend = match v.to_ascii_lowercase().as_str() {
                    "local" => Backend::Local,
                    "openai" => Backend::OpenAi,
                    _ => return Err(invalid(key, value, "'local' or 'openai'")),
                }
            }
            "model" => self.model = v.to_string(),
            "embedding_model" => self.embedding_model = v.to_string(),
            "base_url" => {
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(invalid(key, value, "an http:// or https:// URL"));
                }
                self.base_url = v.trim_end_matches('/').to_string()
            }
            "api_key_env" => self.api_key_env = v.to_string(),
            "models_dir" => self.models_dir = v.to_string(),
            "timeout_ms" => self.timeout_ms = positive(key, value)?,
            "retries" => self.retries = parse(key, value, "a whole number")?,
            "concurrency" => self.concurrency = positive(key, value)? as usize,
            "batch_size" => self.batch_size = parse::<usize>(key, value, "a whole number (0: automatic)")?.min(64),
            "max_output_tokens" => self.max_output_tokens = positive(key, value)?.min(32_768) as u32,
            "on_error" => {
                self.on_error = match v.to_ascii_lowercase().as_str() {
                    "fail" => OnError::Fail,
                    "null" => OnError::Null,
                    _ => return Err(invalid(key, value, "'fail' or 'null'")),
                }
            }
            "max_calls" => self.max_calls = positive(key, value)?,
            "max_tokens" => self.max_tokens = positive(key, value)?,
            "cache" => self.cache = parse(key, &v.to_ascii_lowercase(), "true or false")?,
            "cache_dir" => self.cache_dir = v.to_string(),
            "trail_dir" => self.trail_dir = v.to_string(),
            "threads" => self.threads = positive(key, value)?.min(256) as usize,
            "model_process" => self.model_process = parse(key, &v.to_ascii_lowercase(), "true or false")?,
            "embedding_dim" => self.embedding_dim = positive(key, value)?.min(65_536) as usize,
            "allow_session_endpoints" => {
                self.allow_session_endpoints = parse(key, &v.to_ascii_lowercase(), "true or false")?
            }
            "query_id" => self.query_id = v.to_string(),
            "nl_attempts" => self.nl_attempts = positive(key, value)?.min(10) as u32,
            "nl_strategy" => {
                self.nl_strategy = match v.to_ascii_lowercase().as_str() {
                    s @ ("pipeline" | "plain") => s.to_string(),
                    _ => return Err(invalid(key, value, "'pipeline' or 'plain'")),
                }
            }
            "nl_models" => {
                let models: Vec<&str> = v.split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
                self.nl_models = models.join(",")
            }
            "nl_vote" => self.nl_vote = positive(key, value)?.min(9) as u32,
            "nl_max_tables" => self.nl_max_tables = positive(key, value)?.min(64) as usize,
            "nl_tables" => {
                let tables: Vec<String> =
                    v.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect();
                self.nl_tables = tables.join(",")
            }
            "nl_system_tables" => self.nl_system_tables = parse(key, &v.to_ascii_lowercase(), "true or false")?,
            _ => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(DataFusionError::Configuration(format!(
                    "unknown setting lakelink.llm.{key}; known settings: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The value of one key as text.
    pub fn get_key(&self, key: &str) -> Option<String> {
        Some(match key {
            "backend" => self.backend.to_string(),
            "model" => self.model.clone(),
            "embedding_model" => self.embedding_model.clone(),
            "base_url" => self.base_url.clone(),
            "api_key_env" => self.api_key_env.clone(),
            "models_dir" => self.models_dir.clone(),
            "timeout_ms" => self.timeout_ms.to_string(),
            "retries" => self.retries.to_string(),
            "concurrency" => self.concurrency.to_string(),
            "batch_size" => self.batch_size.to_string(),
            "max_output_tokens" => self.max_output_tokens.to_string(),
            "on_error" => self.on_error.to_string(),
            "max_calls" => self.max_calls.to_string(),
            "max_tokens" => self.max_tokens.to_string(),
            "cache" => self.cache.to_string(),
            "cache_dir" => self.cache_dir.clone(),
            "trail_dir" => self.trail_dir.clone(),
            "threads" => self.threads.to_string(),
            "model_process" => self.model_process.to_string(),
            "embedding_dim" => self.embedding_dim.to_string(),
            "allow_session_endpoints" => self.allow_session_endpoints.to_string(),
            "query_id" => self.query_id.clone(),
            "nl_attempts" => self.nl_attempts.to_string(),
            "nl_strategy" => self.nl_strategy.clone(),
            "nl_models" => self.nl_models.clone(),
            "nl_vote" => self.nl_vote.to_string(),
            "nl_max_tables" => self.nl_max_tables.to_string(),
            "nl_tables" => self.nl_tables.clone(),
            "nl_system_tables" => self.nl_system_tables.to_string(),
            _ => return None,
        })
    }

    /// The options of a running query: the session's, or the process
    /// defaults where the session carries none.
    pub fn from_config(config: &ConfigOptions) -> LlmOptions {
        config.extensions.get::<LlmOptions>().cloned().unwrap_or_else(|| process_defaults().clone())
    }

    /// Rows per request for functions that allow several.
    pub fn rows_per_request(&self) -> usize {
        match (self.batch_size, self.backend) {
            (0, Backend::Local) => 1,
            (0, Backend::OpenAi) => 8,
            (n, _) => n,
        }
    }

    /// The GGUF file of the generative model (local backend).
    pub fn model_path(&self) -> PathBuf {
        let name = if self.model.is_empty() { DEFAULT_MODEL_FILE } else { &self.model };
        resolve(&self.models_dir, name)
    }

    /// The folder of the embedding model (local backend).
    pub fn embedder_path(&self) -> PathBuf {
        let name = if self.embedding_model.is_empty() { DEFAULT_EMBEDDER_DIR } else { &self.embedding_model };
        resolve(&self.models_dir, name)
    }

    /// Applies a TOML `[llm]` table and then `LAKELINK_LLM_<KEY>` variables.
    fn apply_sources(
        &mut self,
        file: Option<(&Path, &str)>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<()> {
        if let Some((path, text)) = file {
            let doc: toml::Table = toml::from_str(text).map_err(|e| {
                DataFusionError::Configuration(format!("config file {} is not valid TOML: {e}", path.display()))
            })?;
            if let Some(llm) = doc.get("llm") {
                let table = llm.as_table().ok_or_else(|| {
                    DataFusionError::Configuration(format!("config file {}: [llm] must be a table", path.display()))
                })?;
                for (key, value) in table {
                    let text = match value {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    self.set_key(key, &text).map_err(|e| {
                        DataFusionError::Configuration(format!("config file {}: {}", path.display(), strip(e)))
                    })?;
                }
            }
        }
        for (name, value) in env {
            if let Some(key) = name.strip_prefix("LAKELINK_LLM_") {
                let key = key.to_ascii_lowercase();
                self.set_key(&key, &value).map_err(|e| {
                    DataFusionError::Configuration(format!("environment variable {name}: {}", strip(e)))
                })?;
            }
        }
        Ok(())
    }
}

fn strip(e: DataFusionError) -> String {
    match e {
        DataFusionError::Configuration(m) => m,
        other => other.to_string(),
    }
}

fn resolve(dir: &str, name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() { path.to_path_buf() } else { Path::new(dir).join(path) }
}

/// The config file of this process: `$LAKELINK_CONFIG`, else
/// `~/.config/lakelink/lakelink.toml` when it exists.
pub fn config_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAKELINK_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".config/lakelink/lakelink.toml");
    p.exists().then_some(p)
}

/// Reads the process defaults from the config file and the environment.
pub fn load_process_defaults() -> Result<LlmOptions> {
    let mut options = LlmOptions::default();
    let file = config_file();
    let text =
        match &file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                DataFusionError::Configuration(format!("cannot read config file {}: {e}", path.display()))
            })?),
            None => None,
        };
    let source = file.as_deref().zip(text.as_deref());
    options.apply_sources(source, std::env::vars())?;
    Ok(options)
}

/// The process configuration, read once.
fn loaded() -> &'static std::result::Result<LlmOptions, String> {
    static DEFAULTS: OnceLock<std::result::Result<LlmOptions, String>> = OnceLock::new();
    DEFAULTS.get_or_init(|| load_process_defaults().map_err(strip))
}

/// Checks the process configuration once; binaries call this at start so a
/// bad config file or variable stops them with the reason.
pub fn check_process_defaults() -> Result<()> {
    loaded().as_ref().map(|_| ()).map_err(|e| DataFusionError::Configuration(e.clone()))
}

/// The process defaults; the built-in defaults if the configuration is
/// invalid (the binaries refuse to start in that case, see
/// [`check_process_defaults`]).
pub fn process_defaults() -> &'static LlmOptions {
    static FALLBACK: OnceLock<LlmOptions> = OnceLock::new();
    match loaded() {
        Ok(options) => options,
        Err(e) => FALLBACK.get_or_init(|| {
            tracing::error!("invalid model configuration, using built-in defaults: {e}");
            LlmOptions::default()
        }),
    }
}

impl ExtensionOptions for LlmOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key.strip_prefix("llm.") {
            Some(k) => self.set_key(k, value),
            None => Err(DataFusionError::Configuration(format!(
                "unknown setting lakelink.{key}; model settings are lakelink.llm.<key>"
            ))),
        }
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        KEYS.iter()
            .map(|(key, description)| ConfigEntry {
                // Extension entries carry their full key: Ballista sends
                // these pairs to executors, which `set` them back.
                key: format!("{}.llm.{key}", Self::PREFIX),
                value: self.get_key(key),
                description,
            })
            .collect()
    }
}

impl ConfigExtension for LlmOptions {
    const PREFIX: &'static str = "lakelink";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_round_trip() {
        let mut o = LlmOptions::default();
        for (key, _) in KEYS {
            let value = o.get_key(key).unwrap();
            o.set_key(key, if value.is_empty() { "x" } else { &value }).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        o.set_key("backend", "OpenAI").unwrap();
        assert_eq!(o.backend, Backend::OpenAi);
        let err = o.set_key("on_error", "ignore").unwrap_err().to_string();
        assert!(err.contains("lakelink.llm.on_error = 'ignore'") && err.contains("'fail' or 'null'"), "{err}");
        let err = o.set_key("modle", "x").unwrap_err().to_string();
        assert!(err.contains("unknown setting lakelink.llm.modle"), "{err}");
        assert!(o.set_key("max_calls", "0").is_err());
    }

    #[test]
    fn file_then_environment() {
        let mut o = LlmOptions::default();
        let file = "[llm]\nbackend = \"openai\"\nconcurrency = 3\ncache = false\n";
        let env = vec![("LAKELINK_LLM_CONCURRENCY".to_string(), "5".to_string()), ("OTHER".into(), "x".into())];
        o.apply_sources(Some((Path::new("/etc/l.toml"), file)), env.into_iter()).unwrap();
        assert_eq!((o.backend, o.concurrency, o.cache), (Backend::OpenAi, 5, false));
        let err = LlmOptions::default()
            .apply_sources(Some((Path::new("/etc/l.toml"), "[llm]\ntimeout_ms = -1\n")), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/l.toml") && err.contains("timeout_ms"), "{err}");
    }

    #[test]
    fn options_travel_as_key_values() {
        let mut config = ConfigOptions::new();
        config.extensions.insert(LlmOptions::default());
        config.set("lakelink.llm.model", "gpt-x").unwrap();
        let sent: Vec<(String, Option<String>)> =
            config.entries().into_iter().map(|e| (e.key, e.value)).filter(|(k, _)| k.starts_with("lakelink")).collect();
        let mut other = ConfigOptions::new();
        other.extensions.insert(LlmOptions::default());
        for (k, v) in sent {
            if let Some(v) = v {
                other.set(&k, &v).unwrap();
            }
        }
        assert_eq!(LlmOptions::from_config(&other).model, "gpt-x");
    }
}
