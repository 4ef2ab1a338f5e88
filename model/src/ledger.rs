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
//!   budget (`lakelink.llm.max_calls`, `max_tokens`) over every process;
//! * `Request::Sample`: one sample per cascade for the whole query
//!   (`lakelink.llm.cascade_target`): a process adds the sample values it
//!   asked the model about and reserves the ones it will ask next, so the
//!   processes ask a cascade's sample once between them, not once each.
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
    /// Adds `entries` to the sample of `cascade` (values and the model's
    /// answers, as the cascade writes them) and reserves up to `want` more
    /// of its `size` values for `process`: its earlier reservation ends.
    Sample {
        /// The query's id.
        query: String,
        /// The process adding and reserving.
        process: String,
        /// Which cascade of the query (function and what it is of).
        cascade: String,
        /// How many values the sample holds when it is complete.
        size: usize,
        /// Values this process would ask next.
        want: usize,
        /// Values this process asked since its last reservation.
        entries: Vec<String>,
        /// How long a reservation outlives the process's last request.
        lease_ms: u64,
    },
}

/// The ledger's answer to `Request::Sample`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleState {
    /// Values the process may ask now (reserved for it).
    pub granted: usize,
    /// Values the sample holds.
    pub have: usize,
    /// Values other live processes reserved and are asking now.
    pub others: usize,
    /// The whole sample, once it is complete.
    pub complete: Option<Vec<String>>,
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
    /// Where a cascade's sample stands.
    Sample(SampleState),
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

/// The most values a cascade's sample may hold.
pub const MAX_SAMPLE: usize = 1024;

#[derive(Default)]
struct QueryBook {
    keys: HashMap<String, Entry>,
    /// Each cascade's sample.
    samples: HashMap<String, Pool>,
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

/// A cascade's sample: the values added, and who reserved how many more.
#[derive(Default)]
struct Pool {
    entries: Vec<String>,
    reserved: HashMap<String, usize>,
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

    fn sample(
        &mut self,
        process: &str,
        cascade: String,
        size: usize,
        want: usize,
        entries: Vec<String>,
        now: Instant,
    ) -> SampleState {
        let size = size.min(MAX_SAMPLE);
        let live: Vec<String> = self.heard.keys().filter(|p| self.live(p, now)).cloned().collect();
        let pool = self.samples.entry(cascade).or_default();
        pool.reserved.remove(process);
        for entry in entries.into_iter().take(size.saturating_sub(pool.entries.len())) {
            self.bytes += entry.len();
            pool.entries.push(entry);
        }
        let others: usize = pool.reserved.iter().filter(|(p, _)| live.contains(p)).map(|(_, n)| n).sum();
        let granted = want.min(size.saturating_sub(pool.entries.len() + others));
        if granted > 0 {
            pool.reserved.insert(process.to_string(), granted);
        }
        let have = pool.entries.len();
        SampleState { granted, have, others, complete: (have >= size).then(|| pool.entries.clone()) }
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
            | Request::Spend { query, process, .. }
            | Request::Sample { query, process, .. } => (query.clone(), process.clone()),
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
            Request::Claim { lease_ms, .. } | Request::Sample { lease_ms, .. } => Duration::from_millis(*lease_ms),
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
            Request::Sample { cascade, size, want, entries, .. } => {
                Reply::Sample(book.sample(&process, cascade, size, want, entries, now))
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

    fn sample(book: &Book, process: &str, want: usize, entries: &[&str], lease_ms: u64) -> SampleState {
        let entries = entries.iter().map(|e| e.to_string()).collect();
        let request = Request::Sample {
            query: "q".into(),
            process: process.into(),
            cascade: "c".into(),
            size: 3,
            want,
            entries,
            lease_ms,
        };
        match book.answer(request) {
            Reply::Sample(state) => state,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cascade_sample_is_asked_once_over_the_processes() {
        let book = Book::default();
        // a reserves two of the three values; b may ask only the third.
        let a = sample(&book, "a", 2, &[], 60_000);
        assert_eq!((a.granted, a.have, a.others, a.complete), (2, 0, 0, None));
        let b = sample(&book, "b", 5, &[], 60_000);
        assert_eq!((b.granted, b.others), (1, 2));
        // b adds its value; the sample waits for a's two.
        let b = sample(&book, "b", 5, &["b1"], 60_000);
        assert_eq!((b.granted, b.have, b.others, b.complete), (0, 1, 2, None));
        // a adds them: the sample is complete, for a and for b.
        let a = sample(&book, "a", 0, &["a1", "a2", "a3"], 60_000);
        let all = Some(vec!["b1".to_string(), "a1".into(), "a2".into()]);
        assert_eq!((a.granted, a.have, a.others, a.complete.clone()), (0, 3, 0, all.clone()));
        assert_eq!(sample(&book, "b", 0, &[], 60_000).complete, all, "values past the size are not kept");
    }

    #[test]
    fn a_silent_process_loses_its_reservation_after_its_lease() {
        let book = Book::default();
        assert_eq!(sample(&book, "a", 3, &[], 0).granted, 3);
        std::thread::sleep(Duration::from_millis(5));
        let b = sample(&book, "b", 3, &[], 60_000);
        assert_eq!((b.granted, b.others), (3, 0));
        // A hostile size is held to the ledger's bound.
        let request = Request::Sample {
            query: "q".into(),
            process: "c".into(),
            cascade: "big".into(),
            size: usize::MAX,
            want: usize::MAX,
            entries: Vec::new(),
            lease_ms: 1,
        };
        assert!(matches!(book.answer(request), Reply::Sample(SampleState { granted: MAX_SAMPLE, .. })));
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
