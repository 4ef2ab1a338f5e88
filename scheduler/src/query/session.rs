//! Client sessions: the model settings each Flight SQL connection changed
//! with `SET` / `RESET lakelink.llm.<key>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};
use lakelink_model::LlmOptions;
use lakelink_model::config::{self, Who};

/// Sessions idle for longer are forgotten.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a client's `SET` or `RESET` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettingChange {
    /// The full key, `lakelink.llm.<key>`.
    pub key: String,
    /// The new value; `None` after RESET (the process default applies again).
    pub value: Option<String>,
}

/// The settings one client connection changed.
struct Session {
    settings: BTreeMap<String, String>,
    last_used: Instant,
}

/// Every client connection's settings.
#[derive(Default)]
pub struct Sessions {
    by_connection: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Applies `SET variable = value` (`None`: `RESET`) to `session` when a
    /// session may make it, with `defaults` the process's model settings.
    pub fn apply(
        &self,
        session: &str,
        variable: &str,
        value: Option<String>,
        defaults: &LlmOptions,
    ) -> Result<SettingChange> {
        let variable = variable.to_ascii_lowercase();
        if let Some(value) = &value {
            check(&variable, value, defaults)?;
        } else {
            key_of(&variable)?;
        }
        let mut sessions = self.by_connection.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.last_used.elapsed() < SESSION_TTL);
        let entry = sessions
            .entry(session.to_string())
            .or_insert_with(|| Session { settings: BTreeMap::new(), last_used: Instant::now() });
        entry.last_used = Instant::now();
        match &value {
            Some(v) => entry.settings.insert(variable.clone(), v.clone()),
            None => entry.settings.remove(&variable),
        };
        Ok(SettingChange { key: variable, value })
    }

    /// The settings a client session changed, in key order.
    pub fn settings(&self, session: &str) -> Vec<(String, String)> {
        let mut sessions = self.by_connection.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(session) {
            Some(s) => {
                s.last_used = Instant::now();
                s.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            None => Vec::new(),
        }
    }
}

/// The model setting a session variable names, if a session may set it.
fn key_of(variable: &str) -> Result<&str> {
    let Some(key) = variable.strip_prefix("lakelink.llm.") else {
        return Err(DataFusionError::Plan(format!(
            "only model settings (lakelink.llm.<key>) can be set over Flight SQL, not {variable}"
        )));
    };
    let allowed = || config::session_keys().collect::<Vec<_>>().join(", ");
    match config::setting(key) {
        Some(s) if s.who == Who::Session => {}
        Some(s) => {
            let by = if s.who == Who::Scheduler { "the scheduler for each query" } else { "the operator" };
            return Err(DataFusionError::Plan(format!(
                "lakelink.llm.{key} is set by {by} in the process configuration, not by a session; \
                 sessions may set: {}",
                allowed()
            )));
        }
        None => {
            return Err(DataFusionError::Plan(format!(
                "unknown setting lakelink.llm.{key}; sessions may set: {}",
                allowed()
            )));
        }
    }
    Ok(key)
}

/// Checks that a session may set `variable` to `value`: a key sessions may
/// set, a model named inside the models folder, an endpoint only where the
/// operator allows sessions to choose one, and a valid value.
pub fn check(variable: &str, value: &str, defaults: &LlmOptions) -> Result<()> {
    let key = key_of(variable)?;
    if matches!(key, "model" | "embedding_model" | "nl_models")
        && value.split(',').any(|v| v.trim().starts_with('/') || v.split(['/', '\\']).any(|part| part == ".."))
    {
        return Err(DataFusionError::Plan(format!(
            "lakelink.llm.{key} = '{value}': a session may name a model inside the models folder \
             (or an endpoint's model name), not a path elsewhere"
        )));
    }
    if key == "base_url" && !defaults.allow_session_endpoints {
        return Err(DataFusionError::Plan(
            "lakelink.llm.base_url is fixed by the operator; sessions may choose an endpoint only when the \
             process configuration sets allow_session_endpoints = true"
                .into(),
        ));
    }
    // Checked now, so a bad SET fails, not the next query.
    let mut probe = defaults.clone();
    probe.set_key(key, value)
}
