//! The `llm_*` functions on a cluster of one scheduler and two executors,
//! against a scripted OpenAI-compatible server on a loopback port. The
//! server counts requests, which proves the dedupe, the cache, the batching
//! and the budget; its failure modes prove the error policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use lakelink::Connection;
use lakelink_tests::model_double::{Chat, Mode, ModelDouble, answer_filter, answer_rows};
use lakelink_tests::{TestCluster, fails, query, run};

/// Distinct reviews; review `i` is "good" when `i % 3 == 0`.
const DISTINCT: usize = 20;

fn review(i: usize) -> String {
    let mood = if i.is_multiple_of(3) { "good" } else { "poor" };
    format!("review {i}: a {mood} product, size {}", i * 7)
}

/// A lake with `reviews` (200 rows, 20 distinct texts, two files, each text
/// in one file only) and `notes` (2,000 distinct texts).
fn lake(dir: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("review", DataType::Utf8, false),
        Field::new("stars", DataType::Int32, false),
    ]));
    std::fs::create_dir_all(dir.join("reviews")).unwrap();
    for part in 0..2 {
        let ids: Vec<i32> = (0..100).map(|k| (part * 100 + k) as i32).collect();
        let texts: Vec<String> = ids.iter().map(|id| review(part * 10 + (*id as usize % 10))).collect();
        let stars: Vec<i32> =
            ids.iter().map(|id| if (part * 10 + *id as usize % 10).is_multiple_of(2) { 5 } else { 1 }).collect();
        write(&dir.join(format!("reviews/part-{part}.parquet")), schema.clone(), ids, texts, stars);
    }
    let ids: Vec<i32> = (0..2000).collect();
    let texts: Vec<String> = ids.iter().map(|i| format!("good note number {i}")).collect();
    let stars = vec![3; 2000];
    write(&dir.join("notes.parquet"), schema, ids, texts, stars);

    // A semantic join's two sides: request `i` is about the part with the
    // same key words; an item is green when `i % 50 == 0`.
    let keys = |i: usize| format!("x{i} y{i} z{i}");
    write_texts(&dir.join("requests.parquet"), (0..1000).map(|i| format!("order {}", keys(i))));
    write_texts(&dir.join("parts.parquet"), (0..1000).map(|i| format!("part {}", keys(i))));
    let colour = |i: usize| if i.is_multiple_of(50) { "green" } else { "grey" };
    write_texts(&dir.join("items.parquet"), (0..1000).map(|i| format!("item {i} colour {}", colour(i))));
}

/// A table of `id` (from 0) and `text`.
fn write_texts(path: &Path, texts: impl Iterator<Item = String>) {
    let texts: Vec<String> = texts.collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let ids = Int32Array::from_iter_values(0..texts.len() as i32);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(StringArray::from(texts))]).unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// The number after the key word `x` in a text of [`lake`]'s join tables.
fn key_of(text: &str) -> Option<&str> {
    text.split_whitespace().find_map(|w| w.strip_prefix('x'))
}

fn write(path: &Path, schema: Arc<Schema>, ids: Vec<i32>, texts: Vec<String>, stars: Vec<i32>) {
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int32Array::from(ids)), Arc::new(StringArray::from(texts)), Arc::new(Int32Array::from(stars))],
    )
    .unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Answers the way a model following LakeLink's prompts would.
fn script(chat: &Chat) -> String {
    let system = &chat.system;
    let even =
        |row: &str| row.split_whitespace().nth(1).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n % 2 == 0);
    let filtered = answer_filter(system, &chat.user, |condition, row| match condition {
        "the number is even" | "..." => even(row),
        "green" => row.contains("green"),
        _ => row.contains("good"),
    });
    if let Some(answer) = filtered {
        answer
    } else if let Some(labels) = system.split("labels: ").nth(1) {
        let labels: Vec<&str> = labels.split('.').next().unwrap().split(", ").collect();
        answer_rows(&chat.user, |row| labels.iter().find(|l| row.contains(*l)).map_or("none".into(), |l| l.to_string()))
    } else if system.contains("Extract from the row") {
        answer_rows(&chat.user, |row| row.rsplit(' ').next().unwrap().to_string())
    } else if let Some(list) = system.split("The candidates are:\n").nth(1) {
        let candidates: Vec<&str> = list.lines().map_while(|l| l.strip_prefix("- ")).collect();
        answer_rows(&chat.user, |row| {
            let fits = candidates.iter().find(|c| key_of(row).is_some() && key_of(c) == key_of(row));
            fits.map_or("none".into(), |c| c.to_string())
        })
    } else if system.contains("statement about the two texts") {
        answer_rows(&chat.user, |row| {
            let (first, second) = row.split_once('\n').unwrap_or((row, ""));
            if key_of(first).is_some() && key_of(first) == key_of(second) { "yes" } else { "no" }.to_string()
        })
    } else if chat.user.ends_with("Does the text say that green? Answer yes or no.") {
        answer_rows(&chat.user, |row| if row.contains("green") { "yes" } else { "no" }.to_string())
    } else if system.contains("Summarise") {
        format!("{} texts", chat.user.lines().filter(|l| l.starts_with("- ")).count())
    } else {
        format!("echo: {}", chat.user)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cluster: TestCluster,
    model: ModelDouble,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        lake(&root.join("lake"));
        let cluster = TestCluster::start_isolated(&root.join("lake"), &root).await;
        let model = ModelDouble::start(script).await;
        Self { _dir: dir, root, cluster, model }
    }

    /// A connection whose session points at the scripted model.
    async fn connect(&self, extra: &[&str]) -> Connection {
        self.cluster.connect_with(self.model.settings().iter().map(String::as_str).chain(extra.iter().copied())).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_distinct_value_is_asked_once_then_cached() {
    let s = Setup::new().await;
    let mut conn = s.connect(&["SET lakelink.llm.batch_size = 1"]).await;
    let sql = "SELECT id, llm_filter(review, 'the review is positive') AS ok FROM reviews ORDER BY id";
    let got = run(&mut conn, sql).await;
    assert_eq!(got.len(), 200);
    for row in &got {
        let id: usize = row[0].parse().unwrap();
        let expected = review((id / 100) * 10 + id % 10).contains("good");
        assert_eq!(row[1], expected.to_string(), "row {row:?}");
    }
    // 200 rows, 20 distinct texts, one row per request: 20 requests (and
    // each process's calibration request, not counted).
    assert_eq!(s.model.row_chats(), DISTINCT);

    // The same question again: every answer comes from the disk cache.
    run(&mut conn, sql).await;
    assert_eq!(s.model.row_chats(), DISTINCT);

    // Without the cache, the query asks again, still once per distinct value.
    query(&mut conn, "SET lakelink.llm.cache = false").await.unwrap();
    run(&mut conn, sql).await;
    assert_eq!(s.model.row_chats(), 2 * DISTINCT);

    // The trail holds every request and the cached rows (and the
    // calibration requests, apart).
    let calibration = "outcome LIKE 'ok (calibration: %'";
    let trail = run(
        &mut conn,
        &format!(
            "SELECT cache_hit, count(*), sum(rows) FROM system.model_calls \
             WHERE function = 'llm_filter' AND NOT {calibration} GROUP BY cache_hit ORDER BY cache_hit"
        ),
    )
    .await;
    assert_eq!(trail[0][0], "false");
    assert_eq!(trail[0][1], (2 * DISTINCT).to_string(), "{trail:?}");
    assert_eq!(trail[1][0], "true");
    assert_eq!(trail[1][2], DISTINCT.to_string(), "{trail:?}");
    let models = run(
        &mut conn,
        &format!("SELECT DISTINCT model, backend, outcome FROM system.model_calls WHERE NOT {calibration}"),
    )
    .await;
    assert_eq!(models, vec![vec![format!("openai:scripted@{}", s.model.base_url()), "openai".into(), "ok".into()]]);
    assert!(s.root.join("trail").read_dir().unwrap().count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn functions_give_their_answers() {
    let s = Setup::new().await;
    let mut conn = s.connect(&[]).await;

    let got = run(
        &mut conn,
        "SELECT id, llm_classify(review, 'good', 'poor', 'great') AS label, llm_extract(review, 'the size') AS size \
         FROM reviews WHERE id < 10 ORDER BY id",
    )
    .await;
    for row in &got {
        let id: usize = row[0].parse().unwrap();
        let text = review(id % 10);
        assert_eq!(row[1], if text.contains("good") { "good" } else { "poor" });
        assert_eq!(row[2], (id % 10 * 7).to_string());
    }
    // llm_classify has a closed answer: one row per request, read from the
    // answer's probabilities (10 texts, 10 requests), calibrated by one more
    // request for a content-free row (`N/A`). llm_extract batches 8
    // rows per request (the default): 10 texts in two requests, however the
    // rows were split between the executors (at most 2 partitions x 2 requests).
    let log = s.model.log();
    let (classify, extract): (Vec<_>, Vec<_>) = log.iter().partition(|c| c.system.contains("Classify"));
    let (calibration, classify): (Vec<_>, Vec<_>) = classify.into_iter().partition(|c| c.is_calibration());
    assert_eq!(classify.len(), 10, "{} classify requests", classify.len());
    assert_eq!(calibration.len(), 1, "{} calibration requests", calibration.len());
    assert!(classify.iter().all(|c| !c.user.contains("<item ")), "a classify request held several rows");
    assert!(extract.len() <= 4, "{} extract requests", extract.len());
    assert!(extract.iter().any(|c| c.user.contains("<item 2>")), "no extract request held several rows");
    // Each classification came from the answer probabilities (the trail's confidence).
    let scored = run(
        &mut conn,
        "SELECT count(*), min(confidence) FROM system.model_calls \
         WHERE function = 'llm_classify' AND NOT cache_hit AND outcome = 'ok'",
    )
    .await;
    assert_eq!(scored, vec![vec!["10".to_string(), "1.000000e0".to_string()]]);

    let got = run(&mut conn, "SELECT llm_complete('say hi') AS a").await;
    assert_eq!(got, vec![vec!["echo: say hi".to_string()]]);

    let got = run(
        &mut conn,
        "SELECT stars, llm_summarize(review, 'the main points') FROM reviews GROUP BY stars ORDER BY stars",
    )
    .await;
    assert_eq!(got, vec![vec!["1".to_string(), "100 texts".into()], vec!["5".into(), "100 texts".into()]]);

    let got = run(
        &mut conn,
        "SELECT llm_similarity('red apple pie', 'apple pie recipe') > llm_similarity('red apple pie', 'quantum physics'), \
                arrow_typeof(llm_embed('x'))",
    )
    .await;
    assert_eq!(got[0][0], "true");
    assert_eq!(got[0][1], "FixedSizeList(384 x Float32)");
    // Embeddings are deduped too: 200 rows of 20 distinct texts.
    let before = s.model.embedded_texts();
    run(&mut conn, "SELECT count(llm_embed(review)) FROM reviews").await;
    assert!(s.model.embedded_texts() - before <= DISTINCT, "{}", s.model.embedded_texts() - before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cheap_predicates_run_first_and_limits_stop_calls() {
    let s = Setup::new().await;
    let mut conn = s.connect(&["SET lakelink.llm.batch_size = 1"]).await;
    let got = run(
        &mut conn,
        "SELECT id FROM reviews WHERE llm_filter(review, 'the review is positive') AND stars = 5 ORDER BY id",
    )
    .await;
    // Only five-star texts reach the model: 10 of the 20 distinct texts.
    assert_eq!(s.model.row_chats(), 10);
    assert!(s.model.log().iter().filter(|c| !c.is_calibration()).all(|c| {
        let n: usize = c.user.split("review ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
        n.is_multiple_of(2)
    }));
    assert!(!got.is_empty());

    let before = s.model.row_chats();
    let got = run(&mut conn, "SELECT id FROM notes WHERE llm_filter(review, 'is about a note') LIMIT 3").await;
    // Every note passes the scripted filter, so the limit is what stops the query.
    assert_eq!(got.len(), 3);
    let asked = s.model.row_chats() - before;
    // Batches of 16 rows: one per partition at most before the limit is met.
    assert!(asked <= 64, "a LIMIT 3 query over 2,000 distinct texts asked {asked} times");

    let explain = run(&mut conn, "EXPLAIN SELECT id FROM reviews WHERE llm_filter(review, 'x') AND stars = 5").await;
    let physical = explain.iter().find(|r| r[0] == "physical_plan").map(|r| r[1].clone()).unwrap();
    let llm_at = physical.find("AsyncFuncExec").expect(&physical);
    let cheap_at = physical.rfind("FilterExec: stars").expect(&physical);
    assert!(cheap_at > llm_at, "the cheap filter must run below (before) the model:\n{physical}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_stops_a_runaway_query() {
    let s = Setup::new().await;
    let mut conn = s
        .connect(&[
            "SET lakelink.llm.batch_size = 1",
            "SET lakelink.llm.cache = false",
            "SET lakelink.llm.max_calls = 5",
        ])
        .await;
    let err = fails(&mut conn, "SELECT llm_filter(review, 'x') FROM notes").await;
    assert!(err.contains("budget of 5 model calls") && err.contains("lakelink.llm.max_calls"), "{err}");
    // Each executor stops at the budget (2 executors).
    assert!(s.model.chats() <= 10, "{} requests", s.model.chats());
    // The next query works.
    assert_eq!(run(&mut conn, "SELECT count(*) FROM reviews").await, vec![vec!["200".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_faults_follow_the_error_policy() {
    let s = Setup::new().await;
    let mut conn = s
        .connect(&[
            "SET lakelink.llm.cache = false",
            "SET lakelink.llm.retries = 1",
            "SET lakelink.llm.timeout_ms = 1500",
        ])
        .await;
    let sql = "SELECT llm_filter(review, 'x') AS f FROM reviews WHERE id < 3";

    s.model.set_mode(Mode::Fail);
    let err = fails(&mut conn, sql).await;
    assert!(err.contains("HTTP 500") && err.contains("on_error"), "{err}");
    query(&mut conn, "SET lakelink.llm.on_error = 'null'").await.unwrap();
    assert!(run(&mut conn, sql).await.iter().all(|r| r[0] == "NULL"));

    s.model.set_mode(Mode::Garbage);
    assert!(run(&mut conn, sql).await.iter().all(|r| r[0] == "NULL"));
    query(&mut conn, "RESET lakelink.llm.on_error").await.unwrap();
    let err = fails(&mut conn, sql).await;
    assert!(err.contains("could not be used, even after a retry") && err.contains("weather"), "{err}");

    s.model.set_mode(Mode::Stall);
    let started = std::time::Instant::now();
    let err = fails(&mut conn, sql).await;
    assert!(err.contains("no answer within 1500 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // The endpoint vanishes while requests are in flight.
    s.model.set_mode(Mode::Script);
    s.model.set_delay(Duration::from_millis(800));
    let killer = {
        let model_addr = s.model.addr;
        // Bare on purpose: the test waits for it.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            model_addr
        })
    };
    let query_task = {
        let sql = "SELECT llm_filter(review, 'y') AS f FROM reviews".to_string();
        let mut conn2 = s.connect(&["SET lakelink.llm.cache = false", "SET lakelink.llm.timeout_ms = 5000"]).await;
        // Bare on purpose: the test waits for it.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move { query(&mut conn2, &sql).await.map(|_| ()) })
    };
    killer.await.unwrap();
    s.model.kill();
    let outcome = tokio::time::timeout(Duration::from_secs(60), query_task).await.expect("no hang").unwrap();
    let err = outcome.expect_err("the query cannot succeed without its model").to_string();
    assert!(err.contains("llm_filter"), "{err}");

    // Everything else keeps working.
    assert_eq!(run(&mut conn, "SELECT count(*) FROM reviews").await, vec![vec!["200".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_are_checked_and_scoped_to_the_connection() {
    let s = Setup::new().await;
    let mut conn = s.connect(&[]).await;
    let err = fails(&mut conn, "SET lakelink.llm.on_error = 'ignore'").await;
    assert!(err.contains("'fail' or 'null'"), "{err}");
    let err = fails(&mut conn, "SET lakelink.llm.api_key_env = 'HOME'").await;
    assert!(err.contains("operator"), "{err}");
    let err = fails(&mut conn, "SET lakelink.llm.model = '/etc/passwd'").await;
    assert!(err.contains("not a path elsewhere"), "{err}");
    let err = fails(&mut conn, "SET datafusion.execution.batch_size = 1").await;
    assert!(err.contains("only model settings"), "{err}");
    let err = fails(&mut conn, "SELECT llm_classify(review, 'a', 'a') FROM reviews").await;
    assert!(err.contains("given twice"), "{err}");
    let err = fails(&mut conn, "SELECT llm_filter(review, review) FROM reviews").await;
    assert!(err.contains("must be a constant"), "{err}");

    // Another connection has its own (default: local) settings.
    let mut other = s.cluster.connect().await;
    let shown = run(&mut other, "SHOW lakelink.llm.backend").await;
    assert_eq!(shown[0][1], "local");
    let shown = run(&mut conn, "SHOW lakelink.llm.backend").await;
    assert_eq!(shown[0][1], "openai");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_query_stops_its_model_calls() {
    let s = Setup::new().await;
    s.model.set_delay(Duration::from_millis(300));
    let mut conn = s
        .connect(&[
            "SET lakelink.llm.batch_size = 1",
            "SET lakelink.llm.cache = false",
            "SET lakelink.llm.concurrency = 2",
        ])
        .await;
    // 2,000 distinct texts, two at a time, 300 ms each: about five minutes of calls.
    // Bare on purpose: the test waits for it.
    #[allow(clippy::disallowed_methods)]
    let running = tokio::spawn(async move {
        let _ = query(&mut conn, "SELECT llm_filter(review, 'is about a note') FROM notes").await;
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.model.chats() > 0, "the query should be calling the model");
    running.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_cancel = s.model.chats();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.model.chats(), after_cancel, "model calls went on after the client left");
    assert!(after_cancel < 100, "{after_cancel} calls");
    let cancelled =
        run(&mut s.cluster.connect().await, "SELECT count(*) FROM system.model_calls WHERE outcome = 'cancelled'")
            .await;
    assert_ne!(cancelled[0][0], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_rows_arrive_while_the_query_still_runs() {
    use futures::StreamExt;
    let s = Setup::new().await;
    // The answers for the second file's reviews (10-19) wait until released,
    // so the query cannot end before the client has read the first file's rows.
    s.model.hold(|chat| (10..20).any(|i| chat.user.contains(&format!("review {i}:"))));
    // Both executors run in this process and share its requests in flight:
    // room for all 20 texts, so the held ones cannot keep the others waiting.
    let mut conn = s.connect(&["SET lakelink.llm.concurrency = 32"]).await;
    let result = conn.query("SELECT id, llm_complete('Describe: ' || review) AS d FROM reviews").await.unwrap();
    let mut batches = result.batches;
    let mut early = vec![];
    while early.iter().map(RecordBatch::num_rows).sum::<usize>() < 100 {
        let batch = tokio::time::timeout(Duration::from_secs(120), batches.next())
            .await
            .expect("the first file's rows reach the client while the query runs")
            .expect("a batch")
            .unwrap();
        early.push(batch);
    }
    let ids = |batches: &[RecordBatch]| -> Vec<i32> {
        batches
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec())
            .collect()
    };
    assert!(ids(&early).iter().all(|id| *id < 100), "{:?}", ids(&early));
    assert!(s.model.held() > 0, "the second file's answers are held back");
    s.model.release();
    let mut rest = vec![];
    while let Some(batch) = batches.next().await {
        rest.push(batch.unwrap());
    }
    let mut all = [ids(&early), ids(&rest)].concat();
    all.sort();
    assert_eq!(all, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_cannot_choose_an_endpoint_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    lake(&dir.path().join("lake"));
    let ext = lakelink_udf::Extensions::lakelink_with(lakelink_tests::isolated_llm_defaults(dir.path()));
    let cluster = TestCluster::start_with(&dir.path().join("lake"), ext.clone(), ext, 1).await;
    let mut conn = cluster.connect().await;
    let err = fails(&mut conn, "SET lakelink.llm.base_url = 'http://169.254.169.254/v1'").await;
    assert!(err.contains("fixed by the operator") && err.contains("allow_session_endpoints"), "{err}");
    // Other settings still work.
    run(&mut conn, "SET lakelink.llm.on_error = 'null'").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semantic_join_asks_about_candidates_not_every_pair() {
    let s = Setup::new().await;
    let mut conn = s.connect(&["SET lakelink.llm.match_candidates = 3"]).await;
    let join = "SELECT r.id, p.id FROM requests r JOIN parts p \
                ON llm_match(r.text, p.text, 'the order is for this part') ORDER BY r.id";
    let plan = run(&mut conn, &format!("EXPLAIN {join}")).await;
    let plan = plan.iter().map(|r| r.join(" ")).collect::<Vec<_>>().join("\n");
    assert!(plan.contains("__llm_candidate <= UInt64(3)"), "{plan}");
    assert!(plan.contains("llm_similarity(r.text, p.text)"), "{plan}");

    assert!(plan.contains("llm_pick(r.text, __llm_candidates"), "{plan}");

    // 1,000 x 1,000 rows: every request finds its part, and the model is
    // asked once per request to pick among its three candidates (a nested
    // loop would ask 1,000,000 times). The scripted model reports no usable
    // probabilities for the candidates, so a few requests are asked twice
    // before LakeLink stops asking it for them.
    let got = run(&mut conn, join).await;
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|r| r[0] == r[1]), "{:?}", got.iter().find(|r| r[0] != r[1]));
    let chats = s.model.chats();
    assert!((1000..=1050).contains(&chats), "{chats} model calls for 1,000 requests");
    let candidates: Vec<usize> = s
        .model
        .log()
        .iter()
        .filter_map(|c| c.system.split("The candidates are:\n").nth(1))
        .map(|list| list.lines().take_while(|l| l.starts_with("- ")).count())
        .collect();
    assert!(candidates.iter().all(|n| *n == 3), "{:?}", candidates.iter().find(|n| **n != 3));
    // Every text embedded at most once per process (two executors and the
    // scheduler's process), not once per pair.
    assert!(s.model.embedded_texts() <= 3 * 2000, "{} texts embedded", s.model.embedded_texts());

    // The same join written in WHERE is planned the same way.
    let before = s.model.chats();
    query(&mut conn, "SET lakelink.llm.cache = false").await.unwrap();
    let where_form = "SELECT r.id, p.id FROM requests r, parts p \
                      WHERE r.id < 100 AND llm_match(r.text, p.text, 'the order is for this part') ORDER BY r.id";
    let got = run(&mut conn, where_form).await;
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|r| r[0] == r[1]));
    assert_eq!(s.model.chats() - before, 100);

    // match_candidates = 0: the nested loop, every pair asked.
    query(&mut conn, "SET lakelink.llm.match_candidates = 0").await.unwrap();
    let before = s.model.chats();
    let nested = "SELECT r.id, p.id FROM requests r JOIN parts p \
                  ON llm_match(r.text, p.text, 'the order is for this part') AND r.id < 20 AND p.id < 20 ORDER BY r.id";
    let got = run(&mut conn, nested).await;
    assert_eq!(got.len(), 20);
    assert_eq!(s.model.chats() - before, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semantic_top_k_scores_a_pool_not_every_row() {
    let s = Setup::new().await;
    let mut conn = s.connect(&["SET lakelink.llm.cache = false"]).await;
    let green = |rows: &[Vec<String>]| rows.iter().all(|r| r[0].parse::<usize>().unwrap().is_multiple_of(50));

    // 1,000 rows, 20 green: the model scores the 5 x 5 rows most similar to
    // the criterion, and the top five are green.
    let top = "SELECT id FROM items ORDER BY llm_rank(text, 'green') DESC LIMIT 5";
    let got = run(&mut conn, top).await;
    assert_eq!(got.len(), 5);
    assert!(green(&got), "{got:?}");
    assert!(s.model.chats() <= 25, "{} calls", s.model.chats());

    // Ordered by an alias of the score: the same pool.
    let before = s.model.chats();
    let aliased = "SELECT id, llm_rank(text, 'green') AS score FROM items ORDER BY score DESC LIMIT 3";
    let got = run(&mut conn, aliased).await;
    assert_eq!(got.len(), 3);
    assert!(green(&got), "{got:?}");
    assert!(got.iter().all(|r| r[1].parse::<f64>().unwrap() > 0.5), "{got:?}");
    assert!(s.model.chats() - before <= 15, "{} calls", s.model.chats() - before);
    let plan = run(&mut conn, &format!("EXPLAIN {aliased}")).await;
    let plan = plan.iter().map(|r| r.join(" ")).collect::<Vec<_>>().join("\n");
    assert_eq!(plan.matches("llm_similarity(items.text, Utf8(\"green\"))").count(), 1, "{plan}");

    // rank_pool = 0: every row is scored.
    query(&mut conn, "SET lakelink.llm.rank_pool = 0").await.unwrap();
    let before = s.model.chats();
    let got = run(&mut conn, "SELECT id FROM items WHERE id < 200 ORDER BY llm_rank(text, 'green') DESC LIMIT 4").await;
    assert!(green(&got), "{got:?}");
    assert_eq!(s.model.chats() - before, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cascade_lets_the_proxy_answer_what_it_is_sure_of() {
    let s = Setup::new().await;
    let mut conn = s.connect(&["SET lakelink.llm.cache = false", "SET lakelink.llm.cascade_target = 0.95"]).await;
    let sample = lakelink_udf::functions::cascade::SAMPLE;

    // The words of the condition tell green items from grey ones: after its
    // sample the proxy answers nearly every item, and every green one is found.
    let got = run(&mut conn, "SELECT id FROM items WHERE llm_filter(text, 'green') ORDER BY id").await;
    let ids: Vec<usize> = got.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!((0..1000).step_by(50).all(|g| ids.contains(&g)), "{ids:?}");
    assert!(ids.len() <= 30, "{} items said green", ids.len());
    let calls = s.model.chats();
    assert!(calls < 3 * sample, "{calls} model calls for 1,000 items");
    let proxy = run(
        &mut conn,
        "SELECT sum(rows), min(outcome) FROM system.model_calls WHERE backend = 'proxy' AND function = 'llm_filter'",
    )
    .await;
    let decided: usize = proxy[0][0].parse().unwrap();
    assert!(decided + calls >= 1000, "the proxy decided {decided}, the model {calls}");
    assert!(proxy[0][1].starts_with("cascade: the proxy decided"), "{}", proxy[0][1]);

    // EXPLAIN ANALYZE says what the proxy and the model answered.
    let before = s.model.chats();
    let plan = run(&mut conn, "EXPLAIN ANALYZE SELECT count(*) FROM items WHERE llm_filter(text, 'green')").await;
    let spent = plan.iter().find(|r| r[0] == "Model calls").unwrap_or_else(|| panic!("{plan:?}"));
    let figures: Vec<usize> =
        spent[1].split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).take(4).collect();
    let (values, proxy) = (figures[1], figures[3]);
    assert!(spent[1].starts_with("llm_filter: ") && spent[1].contains("decided by the cascade's proxy"), "{spent:?}");
    assert!(values >= s.model.chats() - before && proxy > 500 && proxy + values >= 1000, "{spent:?}");

    // Whether an item's number is even has next to nothing to do with the
    // words: the proxy answers only the few values it is sure of, and the
    // answers still agree with the model's on the target's share.
    let before = s.model.chats();
    let got = run(&mut conn, "SELECT count(*) FROM items WHERE llm_filter(text, 'the number is even')").await;
    let even: i64 = got[0][0].parse().unwrap();
    assert!((450..=550).contains(&even), "{even} items said even");
    assert!(s.model.chats() - before >= 900, "{} model calls", s.model.chats() - before);

    // A condition whose embedding says nothing (no words): the cascade
    // refuses, says so in the trail, and the model answers every item.
    let before = s.model.row_chats();
    let got = run(&mut conn, "SELECT count(*) FROM items WHERE llm_filter(text, '...')").await;
    assert_eq!(got[0][0], "500");
    assert_eq!(s.model.row_chats() - before, 1000);
    let refused = run(&mut conn, "SELECT count(*) FROM system.model_calls WHERE outcome LIKE 'cascade refused%'").await;
    assert_ne!(refused[0][0], "0");

    // llm_classify: the label most similar to the text, where it leads the
    // other clearly, is taken after the sample; every answer is right.
    let before = s.model.chats();
    let sql = "SELECT llm_classify(text, 'green', 'grey') AS colour, count(*) FROM items GROUP BY 1 ORDER BY 1";
    let got = run(&mut conn, sql).await;
    assert_eq!(got, vec![vec!["green".to_string(), "20".into()], vec!["grey".into(), "980".into()]]);
    // The sample in each process (two executors and the scheduler's), and
    // each process's calibration prior.
    let calls = s.model.chats() - before;
    assert!(calls <= 3 * (sample + 1), "{calls} model calls for 1,000 items");
    let proxy = run(
        &mut conn,
        "SELECT sum(rows), min(outcome) FROM system.model_calls WHERE backend = 'proxy' AND function = 'llm_classify'",
    )
    .await;
    assert!(proxy[0][0].parse::<usize>().unwrap() + calls >= 1000, "{proxy:?}");
    assert!(proxy[0][1].contains("the most similar label"), "{}", proxy[0][1]);
    // Labels the words say nothing of, and the model finds no label fits
    // any sampled item: the sampled answers (none fits) decide the rest
    // alike.
    let before = s.model.chats();
    let got = run(&mut conn, "SELECT count(llm_classify(text, 'even', 'odd')) FROM items").await;
    assert_eq!(got[0][0], "0", "the model finds no label fits");
    let calls = s.model.chats() - before;
    assert!(calls <= 3 * sample, "{calls} model calls for 1,000 items");
    let proxy = run(
        &mut conn,
        "SELECT sum(rows), min(outcome) FROM system.model_calls WHERE backend = 'proxy' \
         AND function = 'llm_classify' AND model <> 'proxy: embedding similarity'",
    )
    .await;
    assert!(proxy[0][0].parse::<usize>().unwrap() + calls >= 1000, "{proxy:?}");
    assert!(proxy[0][1].contains("sampled values"), "{}", proxy[0][1]);

    // A target out of range is refused with the reason.
    let error = fails(&mut conn, "SET lakelink.llm.cascade_target = 1.5").await;
    assert!(error.contains("cascade_target") && error.contains("fraction"), "{error}");
}
