//! The NL compiler (`nl_query`, `nl_filter`, `nl_sql`, `nl_accept`) on a
//! cluster of one scheduler and two executors over the TPC-H demo lake,
//! against a scripted OpenAI-compatible model server: retrieval, repair,
//! the clear final error, ensembles, the cache, EXPLAIN, predicate pushdown
//! and the trail.

use std::path::Path;

use lakelink::Connection;
use lakelink_tests::model_double::{Chat, ModelDouble};
use lakelink_tests::{TestCluster, fails, run, tpch_lake};

const BUILDING: &str = "SELECT count(*) AS n FROM customer WHERE c_mktsegment = 'BUILDING'";

fn fenced(sql: &str) -> String {
    format!("Here is the query:\n```sql\n{sql}\n```\n")
}

/// The question of a prompt (the line after `Question: ` or the filter request).
fn question(chat: &Chat) -> String {
    chat.user.lines().next().unwrap_or_default().to_lowercase()
}

/// Answers like a model that knows TPC-H, wrong where a test needs it.
fn script(chat: &Chat) -> String {
    let q = question(chat);
    let repairing = chat.user.contains("This answer was wrong");
    if q.contains("building market segment") {
        fenced(BUILDING)
    } else if q.contains("orders placed in 1995") {
        // First an invented column no fix can map; repaired once the error names it.
        if repairing && chat.user.contains("There is no column o_orderyear") {
            fenced(
                "SELECT count(*) AS n FROM orders WHERE o_orderdate >= DATE '1995-01-01' AND o_orderdate < DATE '1996-01-01'",
            )
        } else {
            fenced("SELECT count(*) AS n FROM orders WHERE o_orderyear = 1995")
        }
    } else if q.contains("second quarter of 1996") {
        // The first quarter instead of the second.
        fenced(
            "SELECT count(*) AS n FROM orders WHERE o_orderdate >= DATE '1996-01-01' AND o_orderdate < DATE '1996-04-01'",
        )
    } else if q.contains("ordered by priority") {
        // Grouped, but not in the order asked.
        fenced("SELECT o_orderpriority, count(*) AS n FROM orders GROUP BY o_orderpriority")
    } else if q.contains("per month in 1995") {
        // Another dialect's date-part functions (MySQL's), twice.
        fenced(
            "SELECT MONTH(o_orderdate) AS month, count(*) AS n FROM orders WHERE YEAR(o_orderdate) = 1995 \
             GROUP BY MONTH(o_orderdate)",
        )
    } else if q.contains("balance above 4,700") {
        // Grouped, without the comparison the question asks of each group.
        fenced(
            "SELECT n_name, avg(s_acctbal) AS avg_balance FROM supplier JOIN nation ON s_nationkey = n_nationkey \
             GROUP BY n_name ORDER BY n_name",
        )
    } else if q.contains("urgent household orders") {
        // A column of a table the query does not join.
        fenced("SELECT count(*) AS n FROM orders WHERE o_orderpriority = '1-URGENT' AND c_mktsegment = 'HOUSEHOLD'")
    } else if q.contains("never works") {
        fenced("SELECT no_such_column FROM customer")
    } else if q.contains("suppliers in germany") {
        fenced(
            "SELECT s_name, s_acctbal FROM supplier JOIN nation ON s_nationkey = n_nationkey \
             WHERE n_name = 'GERMANY' ORDER BY s_acctbal DESC, s_name LIMIT 3",
        )
    } else if q.contains("reverse alphabetical") {
        fenced("SELECT n_name FROM nation ORDER BY n_name DESC")
    } else if q.contains("urgent orders over 300k") {
        fenced("SELECT * FROM orders WHERE o_orderpriority = '1-URGENT' AND o_totalprice > 300000")
    } else if q.contains("segment size") {
        // Ensembles: each model answers its own way.
        match chat.model.as_str() {
            "broken" => fenced("SELECT nothing FROM nowhere"),
            "machinery" => fenced("SELECT count(*) AS n FROM customer WHERE c_mktsegment = 'MACHINERY'"),
            "building-count-key" => {
                fenced("SELECT count(c_custkey) AS customers FROM customer WHERE c_mktsegment = 'BUILDING'")
            }
            _ => fenced(BUILDING),
        }
    } else {
        "I cannot answer that.".into()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cluster: TestCluster,
    model: ModelDouble,
}

impl Setup {
    async fn new(lake: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = TestCluster::start_isolated(lake, dir.path()).await;
        let model = ModelDouble::start(script).await;
        Self { _dir: dir, cluster, model }
    }

    async fn connect(&self, extra: &[&str]) -> Connection {
        self.cluster.connect_with(self.model.settings().iter().map(String::as_str).chain(extra.iter().copied())).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nl_query_retrieves_compiles_runs_and_explains() {
    let s = Setup::new(tpch_lake()).await;
    let mut conn = s.connect(&[]).await;
    let question = "How many customers are in the building market segment?";
    let got = run(&mut conn, &format!("SELECT * FROM nl_query('{question}')")).await;
    assert_eq!(got, run(&mut conn, BUILDING).await);
    assert_eq!(s.model.chats(), 1, "one model call for one question");

    // Retrieval: the prompt shows the customer table with its segment values, not the others.
    let prompt = &s.model.log()[0];
    assert!(prompt.system.contains("CREATE TABLE customer"), "{}", prompt.system);
    assert!(prompt.system.contains("'BUILDING'"), "sample values are shown: {}", prompt.system);
    assert!(!prompt.system.contains("CREATE TABLE lineitem"), "{}", prompt.system);
    assert!(!prompt.system.contains("CREATE TABLE partsupp"), "{}", prompt.system);

    // A value named in the question pulls in its table and the join path.
    let top = run(&mut conn, "SELECT * FROM nl_query('The 3 richest suppliers in Germany')").await;
    let gold = run(
        &mut conn,
        "SELECT s_name, s_acctbal FROM supplier JOIN nation ON s_nationkey = n_nationkey \
         WHERE n_name = 'GERMANY' ORDER BY s_acctbal DESC, s_name LIMIT 3",
    )
    .await;
    assert_eq!(top, gold);
    let prompt = s.model.log().last().unwrap().clone();
    assert!(prompt.system.contains("CREATE TABLE nation") && prompt.system.contains("CREATE TABLE supplier"));
    assert!(prompt.system.contains("supplier.s_nationkey = nation.n_nationkey"), "join keys: {}", prompt.system);
    assert!(prompt.user.contains("nation.n_name = 'GERMANY'"), "value hint: {}", prompt.user);

    // The generated ORDER BY holds (a derived table's order would not).
    let names = run(&mut conn, "SELECT * FROM nl_query('Nations in reverse alphabetical order')").await;
    assert_eq!(names, run(&mut conn, "SELECT n_name FROM nation ORDER BY n_name DESC").await);
    assert_eq!(names[0], ["VIETNAM"]);

    // nl_sql shows the SQL without running it; EXPLAIN shows it too.
    let sql = run(&mut conn, &format!("SELECT nl_sql('{question}')")).await;
    assert!(sql[0][0].contains("c_mktsegment = 'BUILDING'"), "{sql:?}");
    let explain = run(&mut conn, &format!("EXPLAIN SELECT * FROM nl_query('{question}')")).await;
    assert_eq!(explain[0][0], "nl_query");
    assert!(explain[0][1].contains(&format!("question: {question}")), "{explain:?}");
    assert!(explain[0][1].contains("sql: SELECT count(*) AS n FROM customer"), "{explain:?}");
    assert!(explain.iter().any(|r| r[0] == "physical_plan"), "{explain:?}");

    // The cache: the same question (any case and spacing) makes no new model call.
    let before = s.model.chats();
    let again =
        run(&mut conn, "SELECT * FROM nl_query('how many customers are in   the BUILDING market segment?')").await;
    assert_eq!(again, got);
    assert_eq!(s.model.chats(), before, "a cached question calls no model");

    // The trail.
    let tasks = run(
        &mut conn,
        "SELECT function, outcome, cache_hit, model_calls, retrieved_tables FROM system.nl_tasks \
         WHERE question LIKE '%building market%' ORDER BY time",
    )
    .await;
    assert_eq!(tasks[0][..4], ["nl_query", "ok", "false", "1"]);
    assert!(tasks[0][4].contains("customer"), "{tasks:?}");
    assert!(tasks.iter().skip(1).all(|t| t[2] == "true" && t[3] == "0"), "{tasks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_column_is_repaired_and_a_hopeless_question_fails_clearly() {
    let s = Setup::new(tpch_lake()).await;
    let mut conn = s.connect(&[]).await;
    let got = run(&mut conn, "SELECT * FROM nl_query('How many orders placed in 1995?')").await;
    let gold = run(
        &mut conn,
        "SELECT count(*) FROM orders WHERE o_orderdate >= DATE '1995-01-01' AND o_orderdate < DATE '1996-01-01'",
    )
    .await;
    assert_eq!(got, gold);
    assert_eq!(s.model.chats(), 2, "repaired on the second attempt");
    let repair = &s.model.log()[1].user;
    assert!(repair.contains("SELECT count(*) AS n FROM orders WHERE o_orderyear = 1995"), "{repair}");
    assert!(repair.contains("No field named o_orderyear"), "{repair}");
    let attempts = run(&mut conn, "SELECT attempts FROM system.nl_tasks WHERE question LIKE '%placed in 1995%'").await;
    assert!(attempts[0][0].contains("o_orderyear"), "{attempts:?}");

    // A missing join is fixed without asking the model again.
    let before = s.model.chats();
    let got = run(&mut conn, "SELECT * FROM nl_query('How many urgent household orders are there?')").await;
    let gold = run(
        &mut conn,
        "SELECT count(*) FROM orders JOIN customer ON o_custkey = c_custkey \
         WHERE o_orderpriority = '1-URGENT' AND c_mktsegment = 'HOUSEHOLD'",
    )
    .await;
    assert_eq!(got, gold);
    assert_eq!(s.model.chats() - before, 1, "fixed without a second model call");
    let task = run(&mut conn, "SELECT sql, attempts FROM system.nl_tasks WHERE question LIKE '%household%'").await;
    assert!(task[0][0].contains("JOIN customer ON orders.o_custkey = customer.c_custkey"), "{task:?}");
    assert!(task[0][1].contains("fixed without the model"), "{task:?}");

    // Another span of the named period's year becomes the period, without
    // the model, and the attempts say so.
    let before = s.model.chats();
    let got =
        run(&mut conn, "SELECT * FROM nl_query('How many orders were placed in the second quarter of 1996?')").await;
    let gold = run(
        &mut conn,
        "SELECT count(*) FROM orders WHERE o_orderdate >= DATE '1996-04-01' AND o_orderdate < DATE '1996-07-01'",
    )
    .await;
    assert_eq!(got, gold);
    assert_eq!(s.model.chats() - before, 1, "fixed without a second model call");
    let task = run(&mut conn, "SELECT attempts FROM system.nl_tasks WHERE question LIKE '%second quarter%'").await;
    assert!(
        task[0][0].contains("its date range is not the period the question names (fixed without the model)"),
        "{task:?}"
    );

    // Rows the question asks in an order the query does not give are
    // ordered so, without the model.
    let before = s.model.chats();
    let got = run(
        &mut conn,
        "SELECT * FROM nl_query('How many orders are there per priority? Show the priority and the count, ordered by priority.')",
    )
    .await;
    let gold = run(&mut conn, "SELECT o_orderpriority, count(*) FROM orders GROUP BY 1 ORDER BY 1").await;
    assert_eq!(got, gold);
    assert_eq!(s.model.chats() - before, 1, "fixed without a second model call");
    let task =
        run(&mut conn, "SELECT sql, attempts FROM system.nl_tasks WHERE question LIKE '%ordered by priority%'").await;
    assert!(task[0][0].ends_with("ORDER BY o_orderpriority ASC"), "{task:?}");
    assert!(
        task[0][1].contains("it does not order the rows as the question asks (fixed without the model)"),
        "{task:?}"
    );

    // Another dialect's date-part functions become EXTRACT, without the
    // model; the period and the order are then repaired as above.
    let before = s.model.chats();
    let got = run(
        &mut conn,
        "SELECT * FROM nl_query('How many orders were placed per month in 1995? Show the month and the count, in month order.')",
    )
    .await;
    let gold = run(
        &mut conn,
        "SELECT EXTRACT(MONTH FROM o_orderdate), count(*) FROM orders \
         WHERE o_orderdate >= DATE '1995-01-01' AND o_orderdate < DATE '1996-01-01' GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(got.len(), 12);
    assert_eq!(got, gold);
    assert_eq!(s.model.chats() - before, 1, "fixed without a second model call");
    let task =
        run(&mut conn, "SELECT sql, attempts FROM system.nl_tasks WHERE question LIKE '%per month in 1995%'").await;
    assert!(task[0][0].contains("EXTRACT(MONTH FROM o_orderdate)"), "{task:?}");
    assert!(!task[0][0].to_uppercase().contains("MONTH(O_ORDERDATE)"), "{task:?}");
    assert!(task[0][1].contains("Invalid function"), "{task:?}");

    // A comparison of each group's figure with a number becomes HAVING.
    let before = s.model.chats();
    let got = run(
        &mut conn,
        "SELECT * FROM nl_query('Which nations'' suppliers have an average account balance above 4,700? Show the nation and the average.')",
    )
    .await;
    let all = "SELECT n_name, avg(s_acctbal) FROM supplier JOIN nation ON s_nationkey = n_nationkey GROUP BY n_name";
    let gold = run(&mut conn, &format!("{all} HAVING avg(s_acctbal) > 4700 ORDER BY n_name")).await;
    assert!(!gold.is_empty() && gold.len() < run(&mut conn, all).await.len(), "{gold:?}");
    assert_eq!(got, gold);
    assert_eq!(s.model.chats() - before, 1, "fixed without a second model call");
    let task =
        run(&mut conn, "SELECT sql, attempts FROM system.nl_tasks WHERE question LIKE '%balance above 4,700%'").await;
    assert!(task[0][0].contains("HAVING avg(s_acctbal) > 4700"), "{task:?}");
    assert!(task[0][1].contains("it does not compare the groups' figure with the number"), "{task:?}");

    let before = s.model.chats();
    let error = fails(&mut conn, "SELECT * FROM nl_query('A question that never works')").await;
    assert_eq!(s.model.chats() - before, 3, "three attempts by default");
    assert!(error.contains("nl_query('A question that never works')"), "{error}");
    assert!(error.contains("after 3 attempt(s)"), "{error}");
    assert!(error.contains("last SQL: SELECT no_such_column FROM customer"), "{error}");
    assert!(error.contains("no_such_column"), "{error}");

    // The attempts are a setting; the cluster keeps working.
    let mut one = s.connect(&["SET lakelink.llm.nl_attempts = 1"]).await;
    let before = s.model.chats();
    fails(&mut one, "SELECT * FROM nl_query('This one never works either')").await;
    assert_eq!(s.model.chats() - before, 1);
    assert_eq!(run(&mut conn, "SELECT count(*) FROM region").await, vec![vec!["5".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ensembles_take_the_first_success_or_vote_by_result() {
    let s = Setup::new(tpch_lake()).await;
    let gold = {
        let mut conn = s.connect(&[]).await;
        run(&mut conn, BUILDING).await
    };

    // First success: the broken model uses its attempts, the next one answers.
    let mut first = s.connect(&["SET lakelink.llm.nl_models = 'broken, building'"]).await;
    let got = run(&mut first, "SELECT * FROM nl_query('What is the building segment size?')").await;
    assert_eq!(got, gold);
    let models: Vec<String> = s.model.log().iter().map(|c| c.model.clone()).collect();
    assert_eq!(models, ["broken", "broken", "broken", "building"]);

    // Vote: the first candidate disagrees; the other two give the same
    // result with different SQL, and win.
    let mut vote = s
        .connect(&[
            "SET lakelink.llm.nl_models = 'machinery,building,building-count-key'",
            "SET lakelink.llm.nl_vote = 3",
        ])
        .await;
    let got = run(&mut vote, "SELECT * FROM nl_query('How large is the building segment size?')").await;
    assert_eq!(got, gold);
    let sql =
        run(&mut vote, "SELECT sql, model FROM system.nl_tasks WHERE question LIKE 'How large%' AND NOT cache_hit")
            .await;
    assert!(sql[0][0].contains("'BUILDING'"), "{sql:?}");
    assert!(sql[0][1].contains("building"), "the first of the majority: {sql:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nl_filter_compiles_into_a_pushed_down_predicate() {
    let s = Setup::new(tpch_lake()).await;
    let mut conn = s.connect(&[]).await;
    let sql = "SELECT count(*) FROM orders WHERE nl_filter('urgent orders over 300k')";
    let gold =
        run(&mut conn, "SELECT count(*) FROM orders WHERE o_orderpriority = '1-URGENT' AND o_totalprice > 300000")
            .await;
    assert_eq!(run(&mut conn, sql).await, gold);

    let prompt = &s.model.log()[0];
    assert!(prompt.system.contains("o_orderpriority VARCHAR"), "the columns in scope: {}", prompt.system);
    assert!(prompt.system.contains("'1-URGENT'"), "{}", prompt.system);
    assert!(!prompt.system.contains("l_shipdate"), "only columns in scope: {}", prompt.system);

    let explain = run(&mut conn, &format!("EXPLAIN {sql}")).await;
    assert_eq!(explain[0][0], "nl_filter");
    assert!(explain[0][1].contains("o_orderpriority = '1-URGENT'"), "{explain:?}");
    let physical = explain.iter().find(|r| r[0] == "physical_plan").expect("physical plan");
    let scan = physical[1].lines().find(|l| l.contains("DataSourceExec")).expect("scan");
    assert!(scan.contains("pruning_predicate=") && scan.contains("o_totalprice_max"), "pushed into the scan: {scan}");

    // Misuse is explained.
    let e = fails(&mut conn, "SELECT nl_filter('urgent orders over 300k') FROM orders").await;
    assert!(e.contains("nl_filter belongs in a WHERE clause"), "{e}");
    let e = fails(&mut conn, "SELECT * FROM orders WHERE nl_filter(o_comment)").await;
    assert!(e.contains("nl_filter takes one string literal"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_examples_guide_later_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    lakelink::datagen::tpch(0.01, &lake).unwrap();
    let s = Setup::new(&lake).await;
    let mut conn = s.connect(&[]).await;
    let e = fails(&mut conn, "SELECT nl_accept('drop it', 'DROP TABLE orders')").await;
    assert!(e.contains("read-only"), "{e}");
    let accepted = run(
        &mut conn,
        "SELECT nl_accept('How many customers are in the household segment?', \
         'SELECT count(*) FROM customer WHERE c_mktsegment = ''HOUSEHOLD''')",
    )
    .await;
    assert!(accepted[0][0].starts_with("accepted into"), "{accepted:?}");
    let stored = std::fs::read_to_string(lake.join("_lakelink/nl_examples.jsonl")).unwrap();
    assert!(stored.contains("household segment"), "{stored}");

    run(&mut conn, "SELECT * FROM nl_query('How many customers are in the building market segment?')").await;
    let prompt = s.model.log().last().unwrap().clone();
    assert!(prompt.system.contains("Question: How many customers are in the household segment?"), "{}", prompt.system);
    assert!(prompt.system.contains("c_mktsegment = 'HOUSEHOLD'"), "{}", prompt.system);
}
