//! One query's model calls across the whole cluster.
//!
//! Every process answers each distinct input of a query once (the engine's
//! per-query memo). The ledger goes further: the scheduler keeps a
//! [`Book`](crate::ledger::Book) of each query, and every process running the
//! query's tasks asks it through its [`Ledger`](crate::ledger::Ledger)
//! ([`crate::engine::use_ledger`]) before it asks the model:
//!
//! * `Request::Claim`: which of these inputs (their cache keys) should this
//!   process ask? Each key is `Claim::Yours` (nobody else is asking: ask, then
//!   settle the answer with `Request::Settle`), `Claim::Asked` (another
//!   process is asking: claim again shortly) or `Claim::Settled` (the answer);
//! * `Request::Spend`: count model calls and tokens against the query's
//!   budget (`lakelink.llm.max_calls`, `max_tokens`) over every process.
//!
//! A process that claimed a key and stops being heard from for its lease
//! (two model time limits and five seconds) loses it to the next process that
//! claims it: at worst a key is asked twice, never left unanswered. A process
//! that cannot reach the ledger falls back to its own memo and budget.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cache::Answer;

/// An answer as the ledger keeps it: the engine's outcome of one key.
pub type Settled = std::result::Result<Option<Answer>, String>;

/// What a process is told to do with one key it claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Claim {
    /// Nobody else is asking: this process asks the model, then settles it.
    Yours,
    /// Another process is asking now.
    Asked,
    /// Answered (or failed) by a process of this query.
    Settled(Settled),
}

/// A question to the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Claims `keys` of `query` for `process`, for `lease_ms` after it was
    /// last heard from.
    Claim {
        /// The query's id.
        query: String,
        /// The claiming process ([`process_id`]).
        process: String,
        /// Cache keys of the inputs.
        keys: Vec<String>,
        /// How long a claim outlives the process's last request.
        lease_ms: u64,
    },
    /// The answers of keys `process` claimed.
    Settle {
        /// The query's id.
        query: String,
        /// The process that asked.
        process: String,
        /// Each key with its answer.
        answers: Vec<(String, Settled)>,
    },
    /// Adds `calls` model calls (negative: a call given back) and `tokens`.
    Spend {
        /// The query's id.
        query: String,
        /// The spending process.
        process: String,
        /// Calls to add.
        calls: i64,
        /// Tokens to add.
        tokens: u64,
    },
}

/// The ledger's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// One claim per key, in order.
    Claims(Vec<Claim>),
    /// The answers were kept.
    Kept,
    /// What the query has spent over the cluster, this request included.
    Spent {
        /// Model calls.
        calls: u64,
        /// Tokens.
        tokens: u64,
    },
}

/// Where a process takes its requests to the ledger.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Answers `request`; an error says why the ledger could not be asked.
    async fn ask(&self, request: Request) -> Result<Reply, String>;
}

/// This process's name in the ledger: its trail name (`host:pid`) and a
/// random part (two hosts may share a name).
pub fn process_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}:{}", crate::trail::process_name(), &uuid::Uuid::new_v4().simple().to_string()[..8]))
}

/// The book of this process (the scheduler's): served to the executors and
/// asked by the scheduler's own model calls.
pub fn process_book() -> std::sync::Arc<Book> {
    static BOOK: std::sync::OnceLock<std::sync::Arc<Book>> = std::sync::OnceLock::new();
    BOOK.get_or_init(Default::default).clone()
}

/// Queries the book remembers; the oldest is forgotten first.
const REMEMBERED_QUERIES: usize = 64;

/// The bytes of answers the book keeps over all its queries: past them,
/// the oldest queries are forgotten (their keys are then asked again by
/// whoever claims them).
pub const BOOK_BYTES: usize = 256 << 20;

/// Claims and answers of the queries that ran lately: the ledger as the
/// scheduler keeps it.
#[derive(Default)]
pub struct Book {
    queries: Mutex<VecDeque<(String, QueryBook)>>,
}

#[derive(Default)]
struct QueryBook {
    keys: HashMap<String, Entry>,
    /// When each process was last heard from, and its lease.
    heard: HashMap<String, (Instant, Duration)>,
    calls: u64,
    tokens: u64,
    bytes: usize,
}

enum Entry {
    Asking(String),
    Settled(Settled),
}

impl QueryBook {
    fn live(&self, process: &str, now: Instant) -> bool {
        self.heard.get(process).is_some_and(|(at, lease)| now.duration_since(*at) <= *lease)
    }

    fn claim(&mut self, process: &str, key: String, now: Instant) -> Claim {
        match self.keys.get(&key) {
            Some(Entry::Settled(answer)) => Claim::Settled(answer.clone()),
            Some(Entry::Asking(other)) if other != process && self.live(other, now) => Claim::Asked,
            _ => {
                self.bytes += key.len() + process.len();
                self.keys.insert(key, Entry::Asking(process.to_string()));
                Claim::Yours
            }
        }
    }
}

fn answer_bytes(answer: &Settled) -> usize {
    match answer {
        Ok(Some(Answer::Text(t))) => t.as_ref().map_or(0, String::len),
        Ok(Some(Answer::Vector(v))) => v.len() * 4,
        Ok(None) => 0,
        Err(e) => e.len(),
    }
}

impl Book {
    /// Answers one request.
    pub fn answer(&self, request: Request) -> Reply {
        let now = Instant::now();
        let mut queries = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        let (query, process) = match &request {
            Request::Claim { query, process, .. }
            | Request::Settle { query, process, .. }
            | Request::Spend { query, process, .. } => (query.clone(), process.clone()),
        };
        let at = match queries.iter().position(|(id, _)| *id == query) {
            Some(at) => at,
            None => {
                if queries.len() >= REMEMBERED_QUERIES {
                    queries.pop_front();
                }
                queries.push_back((query, QueryBook::default()));
                queries.len() - 1
            }
        };
        let book = &mut queries[at].1;
        let lease = match &request {
            Request::Claim { lease_ms, .. } => Duration::from_millis(*lease_ms),
            _ => book.heard.get(&process).map_or(Duration::ZERO, |(_, lease)| *lease),
        };
        book.heard.insert(process.clone(), (now, lease));
        let reply = match request {
            Request::Claim { keys, .. } => {
                Reply::Claims(keys.into_iter().map(|k| book.claim(&process, k, now)).collect())
            }
            Request::Settle { answers, .. } => {
                for (key, answer) in answers {
                    book.bytes += key.len() + answer_bytes(&answer);
                    book.keys.insert(key, Entry::Settled(answer));
                }
                Reply::Kept
            }
            Request::Spend { calls, tokens, .. } => {
                book.calls = book.calls.saturating_add_signed(calls);
                book.tokens = book.tokens.saturating_add(tokens);
                Reply::Spent { calls: book.calls, tokens: book.tokens }
            }
        };
        // Over the byte bound, the oldest queries go (never the one asking).
        let current = queries[at].0.clone();
        while queries.iter().map(|(_, b)| b.bytes).sum::<usize>() > BOOK_BYTES
            && queries.front().is_some_and(|(id, _)| *id != current)
        {
            queries.pop_front();
        }
        reply
    }
}

#[async_trait]
impl Ledger for Book {
    async fn ask(&self, request: Request) -> Result<Reply, String> {
        Ok(self.answer(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(book: &Book, process: &str, keys: &[&str], lease_ms: u64) -> Vec<Claim> {
        let keys = keys.iter().map(|k| k.to_string()).collect();
        match book.answer(Request::Claim { query: "q".into(), process: process.into(), keys, lease_ms }) {
            Reply::Claims(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn settle(book: &Book, process: &str, key: &str, answer: &str) {
        let answers = vec![(key.to_string(), Ok(Some(Answer::Text(Some(answer.into())))))];
        assert_eq!(book.answer(Request::Settle { query: "q".into(), process: process.into(), answers }), Reply::Kept);
    }

    #[test]
    fn a_key_is_asked_by_one_process_and_its_answer_shared() {
        let book = Book::default();
        assert_eq!(claim(&book, "a", &["k1", "k2"], 60_000), vec![Claim::Yours, Claim::Yours]);
        assert_eq!(claim(&book, "b", &["k2", "k3"], 60_000), vec![Claim::Asked, Claim::Yours]);
        // The claimant asking again (another batch of it) keeps its claim.
        assert_eq!(claim(&book, "a", &["k2"], 60_000), vec![Claim::Yours]);
        settle(&book, "a", "k2", "yes");
        let yes = Claim::Settled(Ok(Some(Answer::Text(Some("yes".into())))));
        assert_eq!(claim(&book, "b", &["k2"], 60_000), vec![yes.clone()]);
        // Another query knows nothing of it.
        let other = Request::Claim { query: "r".into(), process: "b".into(), keys: vec!["k2".into()], lease_ms: 1 };
        assert_eq!(book.answer(other), Reply::Claims(vec![Claim::Yours]));
    }

    #[test]
    fn a_silent_claimant_loses_its_keys_after_its_lease() {
        let book = Book::default();
        assert_eq!(claim(&book, "a", &["k"], 0), vec![Claim::Yours]);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(claim(&book, "b", &["k"], 60_000), vec![Claim::Yours]);
        assert_eq!(claim(&book, "a", &["k"], 0), vec![Claim::Asked]);
    }

    #[test]
    fn spending_adds_up_over_processes() {
        let book = Book::default();
        let spend = |process: &str, calls, tokens| {
            book.answer(Request::Spend { query: "q".into(), process: process.into(), calls, tokens })
        };
        spend("a", 1, 0);
        spend("b", 1, 0);
        spend("a", 0, 40);
        assert_eq!(spend("b", -1, 2), Reply::Spent { calls: 1, tokens: 42 });
    }

    #[test]
    fn the_book_forgets_the_oldest_queries() {
        let book = Book::default();
        for q in 0..REMEMBERED_QUERIES + 1 {
            let keys = vec!["k".to_string()];
            book.answer(Request::Claim { query: q.to_string(), process: "a".into(), keys, lease_ms: 60_000 });
        }
        let keys = vec!["k".to_string()];
        // Query 0 was forgotten: the key is claimable again by anyone.
        let again = Request::Claim { query: "0".into(), process: "b".into(), keys, lease_ms: 60_000 };
        assert_eq!(book.answer(again), Reply::Claims(vec![Claim::Yours]));
        let big = vec![("x".to_string(), Ok(Some(Answer::Text(Some("y".repeat(BOOK_BYTES))))))];
        book.answer(Request::Settle { query: "new".into(), process: "a".into(), answers: big });
        assert_eq!(book.queries.lock().unwrap().len(), 1, "only the query over the bound itself is kept");
    }
}
