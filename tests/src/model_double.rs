//! A scripted OpenAI-compatible model server on a loopback port: the one
//! test double LakeLink's tests use, at the model boundary. It answers
//! `/v1/chat/completions` (with log-probabilities when asked) and
//! `/v1/embeddings` with a script, counts the requests, and can fail, stall,
//! hold some answers back or vanish on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How the server answers chat requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers with the script.
    Script,
    /// HTTP 500 every time.
    Fail,
    /// HTTP 200 with text no parser accepts.
    Garbage,
    /// Never answers (the request hangs).
    Stall,
}

/// What a chat request asked: the system and user messages.
#[derive(Debug, Clone)]
pub struct Chat {
    pub system: String,
    pub user: String,
    /// The model the request named.
    pub model: String,
}

impl Chat {
    /// Whether this is a calibration request: the content-free row `N/A`,
    /// asked once per prompt in each process by calibrated functions.
    pub fn is_calibration(&self) -> bool {
        self.user.contains("\nN/A\n")
    }
}

type Script = dyn Fn(&Chat) -> String + Send + Sync;

/// Which chat requests are held back until released.
type Hold = dyn Fn(&Chat) -> bool + Send + Sync;

struct Shared {
    script: Box<Script>,
    mode: Mutex<Mode>,
    chats: AtomicUsize,
    embeddings: AtomicUsize,
    embedded_texts: AtomicUsize,
    delay_ms: AtomicU64,
    log: Mutex<Vec<Chat>>,
    hold: Mutex<Option<Box<Hold>>>,
    held: AtomicUsize,
    released: tokio::sync::watch::Sender<bool>,
}

/// A running scripted server.
pub struct ModelDouble {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl ModelDouble {
    /// Starts a server answering chats with `script`.
    pub async fn start(script: impl Fn(&Chat) -> String + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            script: Box::new(script),
            mode: Mutex::new(Mode::Script),
            chats: AtomicUsize::new(0),
            embeddings: AtomicUsize::new(0),
            embedded_texts: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            log: Mutex::default(),
            hold: Mutex::default(),
            held: AtomicUsize::new(0),
            released: tokio::sync::watch::Sender::new(false),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept_tasks = tasks.clone();
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let service = TowerToHyperService::new(app.clone());
                accept_tasks.lock().unwrap().spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, shared, tasks }
    }

    /// The base URL to give `lakelink.llm.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `SET` statements pointing a session at this server.
    pub fn settings(&self) -> Vec<String> {
        vec![
            "SET lakelink.llm.backend = 'openai'".into(),
            format!("SET lakelink.llm.base_url = '{}'", self.base_url()),
            "SET lakelink.llm.model = 'scripted'".into(),
            "SET lakelink.llm.embedding_model = 'scripted-embed'".into(),
        ]
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Holds back the answers to the chat requests `hold` picks until
    /// [`ModelDouble::release`].
    pub fn hold(&self, hold: impl Fn(&Chat) -> bool + Send + Sync + 'static) {
        *self.shared.hold.lock().unwrap() = Some(Box::new(hold));
    }

    /// Chat requests being held back now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// Answers the held requests, and holds no more.
    pub fn release(&self) {
        self.shared.hold.lock().unwrap().take();
        self.shared.released.send_replace(true);
    }

    /// Chat requests received.
    pub fn chats(&self) -> usize {
        self.shared.chats.load(Ordering::Relaxed)
    }

    /// Chat requests received for rows: all but the calibration requests.
    pub fn row_chats(&self) -> usize {
        self.shared.log.lock().unwrap().iter().filter(|c| !c.is_calibration()).count()
    }

    /// Embedding requests received.
    pub fn embedding_requests(&self) -> usize {
        self.shared.embeddings.load(Ordering::Relaxed)
    }

    /// Texts embedded in all.
    pub fn embedded_texts(&self) -> usize {
        self.shared.embedded_texts.load(Ordering::Relaxed)
    }

    /// Every chat received, in order.
    pub fn log(&self) -> Vec<Chat> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Vanishes: open connections are cut and new ones refused.
    pub fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for ModelDouble {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    shared.chats.fetch_add(1, Ordering::Relaxed);
    let message = |role: &str| -> String {
        body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == role))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let request = Chat {
        system: message("system"),
        user: message("user"),
        model: body["model"].as_str().unwrap_or_default().to_string(),
    };
    shared.log.lock().unwrap().push(request.clone());
    let held = shared.hold.lock().unwrap().as_ref().is_some_and(|hold| hold(&request));
    if held {
        shared.held.fetch_add(1, Ordering::Relaxed);
        let _ = shared.released.subscribe().wait_for(|released| *released).await;
        shared.held.fetch_sub(1, Ordering::Relaxed);
    }
    let delay = shared.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mode = *shared.mode.lock().unwrap();
    let content = match mode {
        Mode::Fail => return (StatusCode::INTERNAL_SERVER_ERROR, "scripted failure").into_response(),
        Mode::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            String::new()
        }
        Mode::Garbage => "¯\\_(ツ)_/¯ I would rather talk about the weather".to_string(),
        Mode::Script => (shared.script)(&request),
    };
    let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"});
    // Asked for log-probabilities (a closed answer): the first word of the
    // scripted answer is the one candidate, at probability 0.9.
    if body["logprobs"] == json!(true) {
        let first = content.split_whitespace().next().unwrap_or_default();
        let top = json!([{"token": first, "logprob": 0.9f64.ln()}]);
        choice["logprobs"] = json!({"content": [{"token": first, "logprob": 0.9f64.ln(), "top_logprobs": top}]});
    }
    Json(json!({
        "id": "scripted",
        "object": "chat.completion",
        "choices": [choice],
        "usage": {"prompt_tokens": (request.system.len() + request.user.len()) / 4, "completion_tokens": content.len() / 4 + 1},
    }))
    .into_response()
}

async fn embeddings(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    shared.embeddings.fetch_add(1, Ordering::Relaxed);
    if *shared.mode.lock().unwrap() == Mode::Fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "scripted failure").into_response();
    }
    let inputs: Vec<String> = body["input"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    shared.embedded_texts.fetch_add(inputs.len(), Ordering::Relaxed);
    let data: Vec<Value> =
        inputs.iter().enumerate().map(|(i, t)| json!({"index": i, "embedding": bag_of_words(t, 384)})).collect();
    Json(json!({"data": data, "usage": {"prompt_tokens": inputs.len() * 4}})).into_response()
}

/// A deterministic embedding: words hashed into `dim` buckets, so texts
/// sharing words are close and texts sharing none are orthogonal.
pub fn bag_of_words(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let h = word.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
        v[(h % dim as u64) as usize] += 1.0;
    }
    v
}

/// The rows of a prompt: the text of each `<data>` or `<item N>` fence.
pub fn rows_of(user: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut rest = user;
    while let Some(start) = rest.find('<') {
        let after = &rest[start..];
        let Some(close) = after.find(">\n") else { break };
        let tag = &after[1..close];
        if tag != "data" && !tag.starts_with("item ") {
            rest = &after[1..];
            continue;
        }
        let body = &after[close + 2..];
        let end_tag = format!("\n</{tag}>");
        let Some(end) = body.find(&end_tag) else { break };
        rows.push(body[..end].to_string());
        rest = &body[end + end_tag.len()..];
    }
    rows
}

/// Formats one answer per row the way LakeLink's prompts ask for.
pub fn answer_rows(user: &str, answer: impl Fn(&str) -> String) -> String {
    let rows = rows_of(user);
    if rows.len() == 1 && user.starts_with("<data>") {
        return answer(&rows[0]);
    }
    rows.iter().enumerate().map(|(i, r)| format!("{}: {}", i + 1, answer(r))).collect::<Vec<_>>().join("\n")
}

/// `llm_filter`'s condition and its negation, when `system` is its prompt
/// (the two as labels).
pub fn filter_statements(system: &str) -> Option<(&str, &str)> {
    let labels = system.split("labels: ").nth(1)?.split(".\nAnswer").next()?;
    ["it is not the case that ", "not the case that "].iter().find_map(|lead| {
        let (condition, negated) = labels.split_once(&format!(", {lead}"))?;
        (negated == condition).then(|| (condition, &labels[condition.len() + 2..]))
    })
}

/// Answers `llm_filter`'s prompt for each row: the condition when `holds`
/// says it does, its negation when not.
pub fn answer_filter(system: &str, user: &str, holds: impl Fn(&str, &str) -> bool) -> Option<String> {
    let (condition, negation) = filter_statements(system)?;
    Some(answer_rows(user, |row| if holds(condition, row) { condition } else { negation }.to_string()))
}
