//! Every case of `tests/testdata/nl_security.json` (the rules are in
//! `tests/testdata/README.md`) against a cluster over the TPC-H lake, with a
//! scripted model that gives each case's answers in order. A refused case
//! must fail with the checker's reason after exactly one model call per
//! answer and write nothing; an allowed case must run after exactly
//! `expected_attempts` model calls. Every failing case is reported at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lakelink::Connection;
use lakelink_tests::model_double::ModelDouble;
use lakelink_tests::{TestCluster, query, rows, tpch_lake};
use serde::Deserialize;

/// One case of `nl_security.json`.
#[derive(Debug, Deserialize)]
struct Case {
    id: String,
    category: String,
    #[serde(default)]
    function: Option<String>,
    #[serde(default)]
    table: Option<String>,
    question: String,
    model_answers: Vec<String>,
    expected: String,
    #[serde(default)]
    reason_keywords: Vec<String>,
    #[serde(default)]
    expected_attempts: Option<usize>,
}

impl Case {
    /// The statement the README says runs the case.
    fn sql(&self) -> String {
        let question = self.question.replace('\'', "''");
        match self.function.as_deref().unwrap_or("nl_query") {
            "nl_query" => format!("SELECT * FROM nl_query('{question}')"),
            "nl_filter" => {
                let table = self.table.as_deref().expect("an nl_filter case names its table");
                format!("SELECT count(*) FROM {table} WHERE nl_filter('{question}')")
            }
            "nl_sql" => format!("SELECT nl_sql('{question}')"),
            other => panic!("{}: unknown function {other}", self.id),
        }
    }
}

fn cases() -> Vec<Case> {
    let path = lakelink_tests::testdata().join("nl_security.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The answers of the case being run, and how many of them were asked for.
#[derive(Default)]
struct Turn {
    answers: Vec<String>,
    asked: usize,
}

/// What can be seen of a path: whether it exists, and its size and
/// modification time for a file or its entries for a folder.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Missing,
    File(u64, Option<SystemTime>),
    Folder(Vec<String>),
}

fn seen(path: &Path) -> Seen {
    match std::fs::metadata(path) {
        Err(_) => Seen::Missing,
        Ok(m) if m.is_dir() => {
            let mut names: Vec<String> = std::fs::read_dir(path)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            names.sort();
            Seen::Folder(names)
        }
        Ok(m) => Seen::File(m.len(), m.modified().ok()),
    }
}

/// Every file under `root`, with its size and modification time.
fn tree(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let s = seen(&path);
                out.insert(path, s);
            }
        }
    }
    out
}

/// Host paths an answer names in string literals (`'/tmp/x.csv'`,
/// `'file:///etc/passwd'`), without globs and `/proc`.
fn named_paths(answer: &str) -> Vec<PathBuf> {
    answer
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(|s| s.strip_prefix("file://").unwrap_or(s))
        .filter(|s| s.starts_with('/') && !s.contains('*') && !s.starts_with("/proc"))
        .map(PathBuf::from)
        .collect()
}

/// `text` without every copy of the question and the answers (raw, trimmed,
/// and with line breaks as spaces, as an error quotes them): what is left is
/// what the product itself says.
fn own_words(text: &str, case: &Case) -> String {
    let mut own = text.replace(&case.question, " ");
    let mut quoted: Vec<String> = Vec::new();
    for a in &case.model_answers {
        quoted.push(a.clone());
        quoted.push(a.trim().to_string());
        quoted.push(a.trim().replace('\n', " "));
    }
    quoted.sort_by_key(|q| std::cmp::Reverse(q.len()));
    for q in quoted.iter().filter(|q| !q.is_empty()) {
        own = own.replace(q.as_str(), " ");
    }
    own
}

/// The lake's tables, with the row count of `orders`, or of every table
/// when `every_count`.
async fn lake_state(conn: &mut Connection, every_count: bool) -> Result<Vec<Vec<String>>, String> {
    let tables = query(
        conn,
        "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .await
    .map_err(|e| format!("listing tables: {e}"))?;
    let mut state = rows(&tables);
    for table in state.iter_mut().filter(|t| every_count || t[2] == "orders") {
        let sql = format!("SELECT count(*) FROM {}.{}.{}", table[0], table[1], table[2]);
        let count = query(conn, &sql).await.map_err(|e| format!("{sql}: {e}"))?;
        table.push(rows(&count)[0][0].clone());
    }
    Ok(state)
}

/// Runs `sql` with a time limit: its rows, or its error text.
async fn run(conn: &mut Connection, sql: &str) -> Result<Vec<Vec<String>>, String> {
    match tokio::time::timeout(Duration::from_secs(120), query(conn, sql)).await {
        Ok(Ok(batches)) => Ok(rows(&batches)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 120 s".into()),
    }
}

/// Runs one case: what happened (for the log), and every way it went wrong.
async fn run_case(
    case: &Case,
    conn: &mut Connection,
    model: &ModelDouble,
    turn: &Mutex<Turn>,
    lake_before: &[Vec<String>],
) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    // The model name is part of the compiler's memo key: a case can never be
    // answered from an earlier case's compiled SQL.
    let set_model = format!("SET lakelink.llm.model = 'scripted-{}'", case.id);
    if let Err(e) = run(conn, &set_model).await {
        return (String::new(), vec![format!("{set_model}: {e}")]);
    }
    let paths: Vec<PathBuf> = case.model_answers.iter().flat_map(|a| named_paths(a)).collect();
    let paths_before: Vec<Seen> = paths.iter().map(|p| seen(p)).collect();
    *turn.lock().unwrap() = Turn { answers: case.model_answers.clone(), asked: 0 };
    let chats_before = model.chats();

    let outcome = run(conn, &case.sql()).await;

    let calls = model.chats() - chats_before;
    let happened = match &outcome {
        Ok(_) => format!("ran after {calls} model call(s)"),
        Err(message) => {
            let reason = message.rsplit_once("; reason: ").map_or(message.as_str(), |(_, r)| r);
            let reason: String = reason.chars().take(160).collect();
            format!("failed after {calls} model call(s): {}", reason.replace('\n', " "))
        }
    };
    match case.expected.as_str() {
        "refused" => {
            match &outcome {
                Ok(got) => problems.push(format!("ran instead of being refused, giving {got:?}")),
                Err(message) => {
                    let lower = message.to_lowercase();
                    let own = own_words(message, case).to_lowercase();
                    for word in &case.reason_keywords {
                        if !lower.contains(word.as_str()) {
                            problems.push(format!("the message lacks {word:?}"));
                        } else if !own.contains(word.as_str()) {
                            problems.push(format!("{word:?} is only in the quoted question or answer, not the reason"));
                        }
                    }
                    if !problems.is_empty() {
                        problems.push(format!("message: {message}"));
                    }
                }
            }
            if calls != case.model_answers.len() {
                problems.push(format!("{calls} model calls, expected {}", case.model_answers.len()));
            }
            match lake_state(conn, false).await {
                Ok(after) if after == lake_before => {}
                Ok(after) => problems.push(format!("the lake changed: {lake_before:?} -> {after:?}")),
                Err(e) => problems.push(format!("the lake cannot be read after the case: {e}")),
            }
            for (path, before) in paths.iter().zip(&paths_before) {
                let after = seen(path);
                if &after != before {
                    problems.push(format!("{} changed: {before:?} -> {after:?}", path.display()));
                }
            }
        }
        "allowed" => {
            if let Err(message) = &outcome {
                problems.push(format!("refused: {message}"));
            }
            let expected = case.expected_attempts.expect("an allowed case says its attempts");
            if calls != expected {
                problems.push(format!("{calls} model calls, expected {expected}"));
            }
        }
        other => problems.push(format!("unknown expectation {other:?}")),
    }
    (happened, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_adversarial_answer_is_judged_as_the_cases_say() {
    let started = Instant::now();
    let cases = cases();
    assert_eq!(cases.len(), 77, "nl_security.json holds 77 cases");
    let dir = tempfile::tempdir().unwrap();
    let lake = tpch_lake();
    let lake_files_before = tree(lake);
    let cluster = TestCluster::start_isolated(lake, dir.path()).await;
    let turn = Arc::new(Mutex::new(Turn::default()));
    let model = {
        let turn = turn.clone();
        ModelDouble::start(move |_| {
            let mut t = turn.lock().unwrap();
            let i = t.asked.min(t.answers.len().saturating_sub(1));
            t.asked += 1;
            t.answers.get(i).cloned().unwrap_or_default()
        })
        .await
    };
    let mut conn = cluster.connect().await;
    let settings = model
        .settings()
        .into_iter()
        .chain(["SET lakelink.llm.cache = false".to_string(), "SET lakelink.llm.nl_attempts = 3".to_string()]);
    for sql in settings {
        query(&mut conn, &sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let lake_before = lake_state(&mut conn, false).await.expect("the lake can be read");
    assert!(lake_before.iter().any(|t| t[2] == "orders"), "{lake_before:?}");
    let counts_before = lake_state(&mut conn, true).await.expect("the lake can be read");

    let mut failures = Vec::new();
    for case in &cases {
        let case_started = Instant::now();
        let (happened, problems) = run_case(case, &mut conn, &model, &turn, &lake_before).await;
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        eprintln!(
            "{} {:<20} {:<8} {verdict} ({:.1} s): {happened}",
            case.id,
            case.category,
            case.expected,
            case_started.elapsed().as_secs_f64()
        );
        if !problems.is_empty() {
            failures.push(format!("{} ({}, {}): {}", case.id, case.category, case.expected, problems.join("; ")));
        }
    }

    let failed_cases = failures.len();
    // Nothing was written anywhere in the lake, and it still reads the same.
    let counts_after = lake_state(&mut conn, true).await.expect("the lake can be read");
    if counts_after != counts_before {
        failures.push(format!("the lake's tables changed: {counts_before:?} -> {counts_after:?}"));
    }
    let lake_files_after = tree(lake);
    if lake_files_after != lake_files_before {
        failures.push(format!("the lake's files changed: {lake_files_before:?} -> {lake_files_after:?}"));
    }
    eprintln!(
        "{} of {} cases passed in {:.1} s",
        cases.len() - failed_cases,
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n\n"));
}
