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

/// Who may set a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// A client session (`SET lakelink.llm.<key>`), and the operator.
    Session,
    /// Only the operator: the config file's `[llm]` table or a
    /// `LAKELINK_LLM_<KEY>` variable of the process.
    Operator,
    /// The scheduler, for each query.
    Scheduler,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Who::Session => "session",
            Who::Operator => "operator",
            Who::Scheduler => "scheduler",
        })
    }
}

/// One setting as documented: key, meaning, default and who may set it.
#[derive(Debug, Clone, Copy)]
pub struct SettingDoc {
    /// The key without the `lakelink.llm.` prefix.
    pub key: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// Who may set it.
    pub who: Who,
    /// The default as documented, where it depends on the machine.
    pub default_doc: Option<&'static str>,
}

/// A value a setting can hold, read from and written as text.
pub trait SettingValue: Sized {
    /// Reads `text` for `key`, or says what was expected.
    fn parse_setting(key: &str, text: &str) -> Result<Self>;
    /// The value as text.
    fn show(&self) -> String;
}

impl SettingValue for String {
    fn parse_setting(_: &str, text: &str) -> Result<Self> {
        Ok(text.trim().to_string())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl SettingValue for bool {
    fn parse_setting(key: &str, text: &str) -> Result<Self> {
        parse(key, &text.trim().to_ascii_lowercase(), "true or false")
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for f64 {
    fn parse_setting(key: &str, text: &str) -> Result<Self> {
        parse::<f64>(key, text, "a number")
            .and_then(|v| if v.is_finite() { Ok(v) } else { Err(invalid(key, text, "a number")) })
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A fraction: 0 (off), or above 0.5 and below 1.
fn target(key: &str, text: &str, v: f64) -> Checked<f64> {
    if v == 0.0 || (v > 0.5 && v < 1.0) {
        Ok(v)
    } else {
        Err(invalid(key, text, "0 (off) or a fraction above 0.5 and below 1, such as 0.95"))
    }
}

macro_rules! whole_numbers {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse_setting(key: &str, text: &str) -> Result<Self> {
                parse(key, text, "a whole number")
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
whole_numbers!(u32, u64, usize);

impl SettingValue for Backend {
    fn parse_setting(key: &str, text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Backend::Local),
            "openai" => Ok(Backend::OpenAi),
            _ => Err(invalid(key, text, "'local' or 'openai'")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for OnError {
    fn parse_setting(key: &str, text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fail" => Ok(OnError::Fail),
            "null" => Ok(OnError::Null),
            _ => Err(invalid(key, text, "'fail' or 'null'")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Declares every model setting once: its field and doc, its default, who
/// may set it, and an optional check of a new value (it may also change the
/// value, such as capping it). Everything else (the struct, `Default`,
/// `set_key`, `get_key`, [`SETTINGS`], the session keys and the generated
/// reference `docs/config.md`) is derived from the declaration.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident: $ty:ty = $default:expr, $who:ident
        $(, default_doc = $default_doc:literal)?
        $(, check = $check:expr)?;
    )*) => {
        /// The model settings of a session: `lakelink.llm.<key>`.
        #[derive(Debug, Clone, PartialEq)]
        pub struct LlmOptions {
            $( $(#[doc = $doc])+ pub $key: $ty, )*
        }

        impl Default for LlmOptions {
            fn default() -> Self {
                Self { $( $key: $default, )* }
            }
        }

        /// Every setting, as documented.
        pub const SETTINGS: &[SettingDoc] = &[
            $( SettingDoc {
                key: stringify!($key),
                doc: concat!($($doc, "\n"),+),
                who: Who::$who,
                default_doc: settings!(@default_doc $($default_doc)?),
            }, )*
        ];

        impl LlmOptions {
            /// Sets one key (without the `lakelink.llm.` prefix), checking the value.
            pub fn set_key(&mut self, key: &str, value: &str) -> Result<()> {
                match key {
                    $( stringify!($key) => {
                        let parsed = <$ty as SettingValue>::parse_setting(key, value)?;
                        $( let parsed = ($check)(key, value, parsed)?; )?
                        self.$key = parsed;
                    } )*
                    _ => {
                        let known: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
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
                match key {
                    $( stringify!($key) => Some(SettingValue::show(&self.$key)), )*
                    _ => None,
                }
            }
        }
    };
    (@default_doc $d:literal) => { Some($d) };
    (@default_doc) => { None };
}

/// The keys a client session may set.
pub fn session_keys() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().filter(|s| s.who == Who::Session).map(|s| s.key)
}

/// The documentation of one key.
pub fn setting(key: &str) -> Option<&'static SettingDoc> {
    SETTINGS.iter().find(|s| s.key == key)
}

type Checked<T> = Result<T>;

fn positive<T: Copy + PartialOrd + Default>(key: &str, text: &str, v: T) -> Checked<T> {
    if v > T::default() { Ok(v) } else { Err(invalid(key, text, "a positive whole number")) }
}

fn at_most<T: Copy + PartialOrd + Default>(cap: T) -> impl Fn(&str, &str, T) -> Checked<T> {
    move |key, text, v| Ok(if positive(key, text, v)? > cap { cap } else { v })
}

fn one_of(allowed: &'static [&'static str]) -> impl Fn(&str, &str, String) -> Checked<String> {
    move |key, text, v| {
        let v = v.to_ascii_lowercase();
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
            Err(invalid(key, text, &quoted.join(" or ")))
        }
    }
}

fn http_url(key: &str, text: &str, v: String) -> Checked<String> {
    if v.starts_with("http://") || v.starts_with("https://") {
        Ok(v.trim_end_matches('/').to_string())
    } else {
        Err(invalid(key, text, "an http:// or https:// URL"))
    }
}

fn list(lower: bool) -> impl Fn(&str, &str, String) -> Checked<String> {
    move |_, _, v| {
        let items: Vec<String> = v
            .split(',')
            .map(|t| if lower { t.trim().to_ascii_lowercase() } else { t.trim().to_string() })
            .filter(|t| !t.is_empty())
            .collect();
        Ok(items.join(","))
    }
}

settings! {
    /// Where the model runs: `local` (a GGUF model on this machine's CPU, in
    /// the host's model process) or `openai` (an OpenAI-compatible endpoint).
    backend: Backend = Backend::Local, Session;
    /// Generative model: a GGUF file in `models_dir` for `local`, a model name
    /// for `openai`. Empty: the default model.
    model: String = String::new(), Session;
    /// Embedding model: a folder in `models_dir` with `model.safetensors`,
    /// `config.json` and `tokenizer.json` for `local`, a model name for
    /// `openai`. Empty: the default.
    embedding_model: String = String::new(), Session;
    /// The OpenAI-compatible base URL, such as `http://127.0.0.1:8080/v1`.
    /// Sessions may change it only where `allow_session_endpoints` is on.
    base_url: String = "http://127.0.0.1:8080/v1".into(), Session, check = http_url;
    /// The environment variable holding the API key, read by each process
    /// for itself; the key never travels with a query.
    api_key_env: String = "OPENAI_API_KEY".into(), Operator;
    /// Where the default local models live (filled by `scripts/fetch-models.sh`).
    models_dir: String = home_cache().join("models").display().to_string(), Operator,
        default_doc = "~/.cache/lakelink/models";
    /// Time limit of one model request, in milliseconds.
    timeout_ms: u64 = 60_000, Session, check = positive;
    /// Retries of a request that failed with 429, 5xx or a connection error.
    retries: u32 = 3, Session;
    /// Model requests in flight at once, per process.
    concurrency: usize = 8, Session, check = positive;
    /// Rows sent in one request, for functions that allow several; 0 (the
    /// default): one row for closed answers (filter, classify: their answer
    /// probabilities need it) and for the local backend, 8 for `openai`.
    batch_size: usize = 0, Session, check = |_: &str, _: &str, v: usize| Ok::<_, DataFusionError>(v.min(64));
    /// The largest answer of one request, in tokens.
    max_output_tokens: u32 = 256, Session, check = at_most(32_768u32);
    /// What an unusable model answer does: `fail` (the query fails with the
    /// reason) or `null` (those rows get NULL).
    on_error: OnError = OnError::Fail, Session;
    /// Budget: model requests one query may make over the whole cluster.
    max_calls: u64 = 10_000, Session, check = positive;
    /// Budget: prompt plus completion tokens one query may spend over the whole cluster.
    max_tokens: u64 = 5_000_000, Session, check = positive;
    /// Whether `llm_classify`'s labels and `llm_filter`'s two statements are
    /// calibrated: each one's probability is divided by the model's
    /// probability of it for a row that says nothing (asked once per prompt
    /// in each process), so that a small model's lean to one answer does not
    /// decide the rows. Yes/no answers (`llm_match`, `llm_rank`) are never
    /// calibrated (with the local model it turned yes/no filters into coin flips).
    calibrate: bool = true, Session;
    /// Cascades of `llm_filter` and `llm_classify`: the agreement with the model-only answer to
    /// aim for (such as `0.95`); a proxy (embedding similarity to the condition
    /// or labels, or the model's answers on a sample: their mean embeddings or
    /// the nearest sampled values) answers the values it is sure about,
    /// thresholds chosen on a sample of 50 values the model answers first,
    /// one sample for the whole query (0: off, every value to the model).
    cascade_target: f64 = 0.0, Session, check = target;
    /// Semantic join: for each left value of `JOIN ... ON llm_match(left,
    /// right, condition)`, the right values most similar to it by embedding
    /// among which the model picks the match, in one request (at most 100;
    /// 0: the model answers yes or no for every pair, a nested loop).
    match_candidates: usize = 5, Session, check = |_: &str, _: &str, v: usize| Ok::<_, DataFusionError>(v.min(100));
    /// Semantic top-k: `ORDER BY llm_rank(text, criterion) LIMIT k` lets
    /// the model score only the `k * rank_pool` rows most similar to the
    /// criterion by embedding (0: every row).
    rank_pool: usize = 5, Session, check = |_: &str, _: &str, v: usize| Ok::<_, DataFusionError>(v.min(1_000));
    /// Whether answers are cached on disk across queries (and recent answers
    /// of the model process reused).
    cache: bool = true, Session;
    /// The answer cache folder.
    cache_dir: String = home_cache().join("llm-cache").display().to_string(), Operator,
        default_doc = "~/.cache/lakelink/llm-cache";
    /// The most bytes the answer cache keeps: past it, the answers used
    /// least recently are removed (0: no cap).
    cache_max_bytes: u64 = 1 << 30, Operator, default_doc = "1073741824 (1 GiB)";
    /// The folder where every process appends its model-call trail
    /// (`system.model_calls`, `system.nl_tasks`).
    trail_dir: String = home_cache().join("trail").display().to_string(), Operator,
        default_doc = "~/.cache/lakelink/trail";
    /// The most bytes the trail folder keeps: each process starts a new file
    /// every 16 MiB and the oldest files are removed past it (0: no cap).
    trail_max_bytes: u64 = 256 << 20, Operator, default_doc = "268435456 (256 MiB)";
    /// CPU threads of the local generative model (in the model process).
    threads: usize = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8), Operator,
        default_doc = "the machine's cores, at most 8", check = at_most(256usize);
    /// Whether the local models run in the host's model process (`true`) or
    /// inside each process (`false`: a native fault in a model then ends
    /// that process; for measurements and debugging only).
    model_process: bool = true, Operator;
    /// Dimensions of `llm_embed`'s vectors (384 for the default embedder).
    embedding_dim: usize = 384, Operator, check = at_most(65_536usize);
    /// Whether client sessions may point `base_url` at another endpoint (off:
    /// the executors would send requests, with row data, wherever a client says).
    allow_session_endpoints: bool = false, Operator;
    /// Names the query in the trail and scopes dedupe and budgets; set by the
    /// scheduler for each query.
    query_id: String = String::new(), Scheduler;
    /// NL compiler: attempts per question (the first plus repairs).
    nl_attempts: u32 = 3, Session, check = at_most(10u32);
    /// NL compiler: `pipeline` (retrieval, hints, repair) or `plain` (the
    /// whole schema, one attempt).
    nl_strategy: String = "pipeline".into(), Session, check = one_of(&["pipeline", "plain"]);
    /// NL compiler: models tried in order until one succeeds
    /// (comma-separated; empty: `model` alone).
    nl_models: String = String::new(), Session, check = list(false);
    /// NL compiler: candidates voted by their results (1: no vote).
    nl_vote: u32 = 1, Session, check = at_most(9u32);
    /// NL compiler: most tables put in one prompt.
    nl_max_tables: usize = 5, Session, check = at_most(64usize);
    /// NL compiler: tables generated SQL may read (comma-separated; empty:
    /// every lake table).
    nl_tables: String = String::new(), Operator, check = list(true);
    /// NL compiler: whether generated SQL may read the `system` and
    /// `information_schema` tables.
    nl_system_tables: bool = false, Operator;
}

fn home_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAKELINK_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("lakelink")
}

fn parse<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T> {
    value.trim().parse::<T>().map_err(|_| invalid(key, value, what))
}

fn invalid(key: &str, value: &str, what: &str) -> DataFusionError {
    DataFusionError::Configuration(format!("lakelink.llm.{key} = '{value}' is not valid: expected {what}"))
}

impl LlmOptions {
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

/// The settings that belong to a host rather than to a query: folders,
/// their caps, threads, the model process, the variable holding the API key.
/// An executor process keeps its own ([`keep_host_settings`]).
pub const HOST_SETTINGS: &[&str] = &[
    "models_dir",
    "cache_dir",
    "cache_max_bytes",
    "trail_dir",
    "trail_max_bytes",
    "threads",
    "model_process",
    "api_key_env",
];

static KEEP_HOST_SETTINGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on this process keeps its own values of the [`HOST_SETTINGS`]
/// when a query's settings arrive (an executor: a task carries the
/// scheduler's values, which name the scheduler's folders, not this host's).
pub fn keep_host_settings() {
    KEEP_HOST_SETTINGS.store(true, std::sync::atomic::Ordering::Relaxed);
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
            Some(k) if KEEP_HOST_SETTINGS.load(std::sync::atomic::Ordering::Relaxed) && HOST_SETTINGS.contains(&k) => {
                Ok(())
            }
            Some(k) => self.set_key(k, value),
            None => Err(DataFusionError::Configuration(format!(
                "unknown setting lakelink.{key}; model settings are lakelink.llm.<key>"
            ))),
        }
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        SETTINGS
            .iter()
            .map(|s| ConfigEntry {
                // Extension entries carry their full key: Ballista sends
                // these pairs to executors, which `set` them back.
                key: format!("{}.llm.{}", Self::PREFIX, s.key),
                value: self.get_key(s.key),
                description: s.doc,
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
        for setting in SETTINGS {
            let key = setting.key;
            let value = o.get_key(key).unwrap();
            let value = match key {
                "base_url" if value.is_empty() => "http://x".to_string(),
                _ if value.is_empty() => "pipeline".to_string(),
                _ => value,
            };
            o.set_key(key, &value).unwrap_or_else(|e| panic!("{key}: {e}"));
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
